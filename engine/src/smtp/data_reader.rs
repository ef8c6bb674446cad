//! The DATA reader: turns the bytes after `354` into the message, undoing dot-stuffing.
//!
//! Only `<CRLF>.<CRLF>` ends a message (the opening CRLF may be the end of the DATA command
//! itself, so `.` right after 354 is an empty message). A bare LF or a bare CR never ends it and
//! never counts as a line end: such a message is flagged and refused after its real end, so no
//! second transaction can be smuggled out of one DATA (the SMTP smuggling family: `\n.\n`,
//! `\r.\r`, `\n.\r\n`, `\r\n.\n` ...). Past `max_size` the reader keeps consuming to the end but
//! stores nothing more, so the client gets its 552 in sync. Free of I/O: feed it byte slices.
//! Security: every byte here is untrusted.

/// Where the reader is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// At the start of a line.
    Start,
    /// Saw `.` at the start of a line.
    Dot,
    /// Saw `.` then CR at the start of a line.
    DotCr,
    /// Inside a line.
    Middle,
    /// Saw CR inside a line (or on an empty line).
    Cr,
}

/// What the reader found once the terminating `<CRLF>.<CRLF>` arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOutcome {
    /// The message with dot-stuffing undone (after what [`DataReader::take_pending`] took);
    /// empty when `oversize`.
    pub body: Vec<u8>,
    /// Total size of the (unstuffed) message, counted even past the limit.
    pub size: usize,
    pub oversize: bool,
    /// The message held a bare CR or bare LF: refused (RFC 5321 §2.3.8).
    pub bare_line_ending: bool,
}

/// Incremental DATA reader.
#[derive(Debug)]
pub struct DataReader {
    state: LineState,
    body: Vec<u8>,
    size: usize,
    max_size: usize,
    bare: bool,
}

impl DataReader {
    pub fn new(max_size: usize) -> DataReader {
        DataReader {
            state: LineState::Start,
            // Most mail is a few KB: a larger head start is memory held by every session in
            // DATA (50 sessions × 64 KB showed in the daemon's peak); bigger messages double.
            body: Vec::with_capacity(max_size.min(16 * 1024)),
            size: 0,
            max_size,
            bare: false,
        }
    }

    /// Consumes bytes from `input`. Returns `Some((outcome, used))` once the message ended,
    /// `used` being how many bytes of `input` belonged to it (the rest is pipelined commands);
    /// `None` when all of `input` was consumed and more is needed.
    pub fn feed(&mut self, input: &[u8]) -> Option<(DataOutcome, usize)> {
        let mut i = 0;
        while i < input.len() {
            if self.state == LineState::Middle || (self.state == LineState::Start && input[i] != b'.') {
                // Ordinary lines are copied in one run, up to the first byte that needs the
                // machine below: a dot at a line start, a bare CR or LF (the byte-by-byte
                // machine was a third of the CPU spent per message, one run per line still 8 %).
                let (run, at_line_start) = ordinary_run(&input[i..]);
                if run > 0 {
                    self.push_run(&input[i..i + run]);
                    i += run;
                    self.state = if at_line_start { LineState::Start } else { LineState::Middle };
                    continue;
                }
            }
            let byte = input[i];
            i += 1;
            if self.step(byte) {
                return Some((self.outcome(), i));
            }
        }
        None
    }

    /// What was read, once `<CRLF>.<CRLF>` arrived.
    fn outcome(&mut self) -> DataOutcome {
        DataOutcome {
            body: std::mem::take(&mut self.body),
            size: self.size,
            oversize: self.size > self.max_size,
            bare_line_ending: self.bare,
        }
    }

    /// One byte; true when it completed `<CRLF>.<CRLF>`.
    fn step(&mut self, byte: u8) -> bool {
        match self.state {
            LineState::Start => match byte {
                b'.' => self.state = LineState::Dot,
                _ => self.middle(byte),
            },
            LineState::Dot => match byte {
                b'\r' => self.state = LineState::DotCr,
                // A stuffed dot: drop it, the byte is ordinary line content.
                _ => self.middle(byte),
            },
            LineState::DotCr => {
                if byte == b'\n' {
                    return true;
                }
                // ".\r<x>": a bare CR after a lone dot. Keep the bytes, flag the message.
                self.bare = true;
                self.push(b'.');
                self.push(b'\r');
                self.middle(byte);
            }
            LineState::Middle => self.middle(byte),
            LineState::Cr => match byte {
                b'\n' => {
                    self.push(b'\r');
                    self.push(b'\n');
                    self.state = LineState::Start;
                }
                b'\r' => {
                    self.bare = true;
                    self.push(b'\r');
                }
                _ => {
                    self.bare = true;
                    self.push(b'\r');
                    self.middle(byte);
                }
            },
        }
        false
    }

    fn middle(&mut self, byte: u8) {
        match byte {
            b'\r' => self.state = LineState::Cr,
            b'\n' => {
                self.bare = true;
                self.push(b'\n');
                self.state = LineState::Middle;
            }
            _ => {
                self.push(byte);
                self.state = LineState::Middle;
            }
        }
    }

    /// [`Self::push`] for a run of ordinary line bytes.
    fn push_run(&mut self, run: &[u8]) {
        self.size += run.len();
        if self.size <= self.max_size {
            self.body.extend_from_slice(run);
        } else {
            self.drop_body();
        }
    }

    fn push(&mut self, byte: u8) {
        self.size += 1;
        if self.size <= self.max_size {
            self.body.push(byte);
        } else {
            self.drop_body();
        }
    }

    /// Past the size limit nothing read is kept: the message will be refused.
    fn drop_body(&mut self) {
        if self.body.capacity() > 0 {
            self.body = Vec::new();
        }
    }

    /// Bytes read and not yet taken with [`Self::take_pending`].
    pub fn pending(&self) -> usize {
        self.body.len()
    }

    /// Takes the bytes read so far (the caller writes them to a file; the outcome then holds
    /// only what came after). The buffer keeps its capacity.
    pub fn take_pending(&mut self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        out.write_all(&self.body)?;
        self.body.clear();
        Ok(())
    }

    /// Whether the message already went over the size limit (the rest is only counted).
    pub fn is_over(&self) -> bool {
        self.size > self.max_size
    }

    /// The memory the reader holds.
    pub fn capacity(&self) -> usize {
        self.body.capacity()
    }
}

/// The longest prefix of `input` (which does not start with a dot at a line start) made of
/// line bytes and CRLF line ends after which no line starts with a dot; and whether it ends
/// right after such a CRLF. What stops it — a dot at a line start, a CR or LF not part of a
/// CRLF, or a CR at the end of `input` — is left to the byte machine.
fn ordinary_run(input: &[u8]) -> (usize, bool) {
    let mut from = 0;
    loop {
        let Some(found) = memchr::memchr2(b'\r', b'\n', &input[from..]) else {
            return (input.len(), false);
        };
        let at = from + found;
        if input[at] != b'\r' || input.get(at + 1) != Some(&b'\n') {
            return (at, false);
        }
        match input.get(at + 2) {
            Some(b'.') | None => return (at + 2, true),
            Some(_) => from = at + 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8]) -> Option<(DataOutcome, usize)> {
        DataReader::new(1 << 20).feed(input)
    }

    /// Feeding byte by byte gives the same result as one slice.
    fn read_bytewise(input: &[u8]) -> Option<(DataOutcome, usize)> {
        let mut reader = DataReader::new(1 << 20);
        for (i, b) in input.iter().enumerate() {
            if let Some((outcome, _)) = reader.feed(std::slice::from_ref(b)) {
                return Some((outcome, i + 1));
            }
        }
        None
    }

    #[test]
    fn simple_message_and_leftover() {
        let input = b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
        for result in [read_all(input), read_bytewise(input)] {
            let (outcome, used) = result.unwrap();
            assert_eq!(outcome.body, b"Subject: x\r\n\r\nhello\r\n");
            assert_eq!(&input[used..], b"QUIT\r\n");
            assert!(!outcome.bare_line_ending && !outcome.oversize);
        }
    }

    #[test]
    fn empty_message_ends_at_once() {
        let (outcome, used) = read_all(b".\r\n").unwrap();
        assert!(outcome.body.is_empty());
        assert_eq!(used, 3);
    }

    #[test]
    fn dot_stuffing_undone() {
        let (outcome, _) = read_all(b"..leading\r\n...\r\n. \r\n.\r\n").unwrap();
        assert_eq!(outcome.body, b".leading\r\n..\r\n \r\n");
    }

    #[test]
    fn smuggling_sequences_never_end_the_message() {
        let cases: &[&[u8]] = &[
            b"a\n.\nMAIL FROM:<x@y.z>\r\n",
            b"a\r.\rMAIL FROM:<x@y.z>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y.z>\r\n",
            b"a\r\n.\nMAIL FROM:<x@y.z>\r\n",
            b"a\r.\r\nMAIL FROM:<x@y.z>\r\n",
            b"a\r\n.\rMAIL FROM:<x@y.z>\r\n",
        ];
        for case in cases {
            assert!(read_all(case).is_none(), "{case:?} ended the message");
            assert!(read_bytewise(case).is_none(), "{case:?} ended the message bytewise");
            let mut full = case.to_vec();
            full.extend_from_slice(b"\r\n.\r\n");
            let (outcome, used) = read_all(&full).unwrap();
            assert_eq!(used, full.len(), "{case:?}");
            assert!(outcome.bare_line_ending, "{case:?} not flagged");
        }
    }

    #[test]
    fn any_split_of_the_input_reads_the_same() {
        let inputs: &[&[u8]] = &[
            b"Subject: x\r\n\r\nline one\r\n..dot\r\nbare\nlf\r\nbare\rcr\r\n.\r\nQUIT\r\n",
            b"a\r\n.\rb\r\n\r\r\n.\r\n",
            b"0123456789abcdef0123\r\n.\r\n",
        ];
        for input in inputs {
            for max in [8, 1 << 20] {
                let whole = DataReader::new(max).feed(input).unwrap();
                for split in 0..=input.len() {
                    let mut reader = DataReader::new(max);
                    let (outcome, used) = match reader.feed(&input[..split]) {
                        Some(done) => done,
                        None => reader.feed(&input[split..]).map(|(o, used)| (o, used + split)).unwrap(),
                    };
                    assert_eq!(outcome.body, whole.0.body, "split {split} of {input:?}");
                    assert_eq!(
                        (outcome.size, outcome.oversize, outcome.bare_line_ending, used),
                        (whole.0.size, whole.0.oversize, whole.0.bare_line_ending, whole.1)
                    );
                }
            }
        }
    }

    /// The byte machine alone, as the reference for the runs `feed` copies at once.
    fn read_by_machine(max: usize, input: &[u8]) -> Option<(DataOutcome, usize)> {
        let mut reader = DataReader::new(max);
        for (i, &b) in input.iter().enumerate() {
            if reader.step(b) {
                return Some((reader.outcome(), i + 1));
            }
        }
        None
    }

    #[test]
    fn runs_read_exactly_as_the_byte_machine_on_random_input() {
        // Inputs drawn mostly from the bytes that matter, fed in random pieces.
        let alphabet = b"\r\n.\r\n.ab";
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let mut input: Vec<u8> = (0..len).map(|_| alphabet[(next() % alphabet.len() as u64) as usize]).collect();
            if next() % 2 == 0 {
                input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
            }
            let max = if next() % 4 == 0 { (next() % 12) as usize } else { 1 << 20 };
            let expected = read_by_machine(max, &input);
            let mut reader = DataReader::new(max);
            let mut got = None;
            let mut at = 0;
            while at < input.len() {
                let piece = 1 + (next() % 9) as usize;
                let end = (at + piece).min(input.len());
                if let Some((outcome, used)) = reader.feed(&input[at..end]) {
                    got = Some((outcome, at + used));
                    break;
                }
                at = end;
            }
            assert_eq!(got, expected, "input {input:?} max {max}");
        }
    }

    #[test]
    fn oversize_reads_to_the_end() {
        let mut reader = DataReader::new(10);
        let (outcome, used) = reader.feed(b"0123456789abcdef\r\n.\r\nNOOP\r\n").unwrap();
        assert!(outcome.oversize);
        assert_eq!(outcome.size, 18);
        assert!(outcome.body.is_empty(), "nothing past the limit is kept");
        assert_eq!(used, 21);
    }

    #[test]
    fn taken_bytes_and_the_outcome_make_the_message() {
        let input = b"Subject: x\r\n\r\n..line one\r\nline two\r\n.\r\n";
        for split in 1..input.len() - 5 {
            let mut reader = DataReader::new(1 << 20);
            assert!(reader.feed(&input[..split]).is_none());
            let mut taken = Vec::new();
            reader.take_pending(&mut taken).unwrap();
            assert_eq!(reader.pending(), 0);
            let (outcome, _) = reader.feed(&input[split..]).unwrap();
            taken.extend_from_slice(&outcome.body);
            assert_eq!(taken, b"Subject: x\r\n\r\n.line one\r\nline two\r\n", "split {split}");
        }
    }
}
