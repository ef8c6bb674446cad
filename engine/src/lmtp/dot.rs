//! The DATA body as LMTP/SMTP carries it (RFC 5321 §4.5.2): a `.` that starts a line is
//! doubled, every line ends in CRLF (a bare LF gets its CR), and the body ends with
//! `CRLF.CRLF`. Written as the bytes stream through, so a large message goes from its spool
//! file to the server in bounded chunks, never whole in memory.

use std::io::{self, Write};

/// A writer that dot-stuffs what passes through it into `inner`.
pub struct DotWriter<W: Write> {
    inner: W,
    /// The last byte written (`\n` at the start: the body starts at a line start).
    last: u8,
}

impl<W: Write> DotWriter<W> {
    pub fn new(inner: W) -> DotWriter<W> {
        DotWriter { inner, last: b'\n' }
    }

    /// Ends the body (`CRLF` first if the last line had none, then `.CRLF`) and returns the
    /// inner writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        if self.last != b'\n' {
            self.inner.write_all(b"\r\n")?;
        }
        self.inner.write_all(b".\r\n")?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for DotWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Copy runs of ordinary bytes in one call; insert a `.` or a `\r` where needed.
        let mut start = 0;
        for (i, &byte) in buf.iter().enumerate() {
            let previous = if i == 0 { self.last } else { buf[i - 1] };
            let insert: &[u8] = match byte {
                b'.' if previous == b'\n' => b".",
                b'\n' if previous != b'\r' => b"\r",
                _ => continue,
            };
            self.inner.write_all(&buf[start..i])?;
            self.inner.write_all(insert)?;
            start = i;
        }
        self.inner.write_all(&buf[start..])?;
        if let Some(&last) = buf.last() {
            self.last = last;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `input` written whole, and written one byte at a time: both must give `expected`.
    fn check(input: &[u8], expected: &[u8]) {
        let mut whole = DotWriter::new(Vec::new());
        whole.write_all(input).unwrap();
        assert_eq!(whole.finish().unwrap(), expected, "whole: {:?}", String::from_utf8_lossy(input));
        let mut bytes = DotWriter::new(Vec::new());
        for b in input {
            bytes.write_all(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(bytes.finish().unwrap(), expected, "bytewise: {:?}", String::from_utf8_lossy(input));
    }

    #[test]
    fn leading_dots_are_doubled() {
        check(b".hidden\r\nmid.dle\r\n..two\r\n.\r\n", b"..hidden\r\nmid.dle\r\n...two\r\n..\r\n.\r\n");
    }

    #[test]
    fn the_end_marker_follows_a_line_end() {
        check(b"no final line end", b"no final line end\r\n.\r\n");
        check(b"ends\r\n", b"ends\r\n.\r\n");
        check(b"", b".\r\n");
    }

    #[test]
    fn bare_line_feeds_get_a_carriage_return() {
        check(b"a\nb\r\n.c\n.\n", b"a\r\nb\r\n..c\r\n..\r\n.\r\n");
    }

    #[test]
    fn smuggling_sequences_cannot_end_the_body_early() {
        // `\n.\r\n` and `\r\n.\n` would end the data for a lenient server: stuffed here.
        check(b"x\n.\r\nMAIL FROM:<evil>\r\n", b"x\r\n..\r\nMAIL FROM:<evil>\r\n.\r\n");
        check(b"x\r\n.\nRCPT\r\n", b"x\r\n..\r\nRCPT\r\n.\r\n");
        // A lone CR is not a line end: no stuffing after it.
        check(b"x\r.\r\n", b"x\r.\r\n.\r\n");
    }
}
