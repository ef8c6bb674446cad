//! A filter between the socket and async-imap's parser that drops untagged responses the
//! parser does not know.
//!
//! async-imap turns any response imap-proto cannot parse into an I/O error that ends the
//! session: GNU Mailutils imap4d's `* 3 EXPUNGED` (not an RFC 3501 response) dropped the
//! connection at every expunge. Input: the server's bytes; output: the same bytes without the
//! untagged responses (`* …` lines, with their literals) whose keyword the parser does not
//! handle. A response the client does not understand carries nothing it needs (RFC 3501 §7:
//! clients must be prepared for unknown data), so skipping it is safe. Tagged lines,
//! continuations (`+ …`) and literal contents pass untouched; lines are never buffered
//! beyond their first `MAX_HEAD` bytes.
//!
//! Security: reads untrusted bytes; memory is bounded by `MAX_HEAD` and one read's worth.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes of a line's start kept to find its keyword; a longer head is passed on as is.
const MAX_HEAD: usize = 64;
/// Bytes of a line's end kept to find a literal announcement (`{123}` or `{123+}`).
const MAX_TAIL: usize = 24;
/// Bytes read from the socket at once.
const READ_CHUNK: usize = 16 * 1024;

/// Keywords of untagged responses without a number before them that imap-proto parses.
const KNOWN: &[&str] = &[
    "OK",
    "NO",
    "BAD",
    "BYE",
    "PREAUTH",
    "CAPABILITY",
    "FLAGS",
    "LIST",
    "LSUB",
    "STATUS",
    "SEARCH",
    "SORT",
    "ENABLED",
    "METADATA",
    "VANISHED",
    "QUOTA",
    "QUOTAROOT",
    "ID",
    "ACL",
    "LISTRIGHTS",
    "MYRIGHTS",
];
/// Keywords of untagged responses after a message number or count that imap-proto parses.
const KNOWN_NUMBERED: &[&str] = &["EXISTS", "RECENT", "EXPUNGE", "FETCH"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line: collecting its head until its keyword is known.
    Head,
    /// In the rest of a line, kept or dropped.
    Line { keep: bool },
    /// In a literal's bytes; the line it belongs to goes on afterwards.
    Literal { remaining: u64, keep: bool },
}

/// The sans-I/O part: bytes in, kept bytes out.
#[derive(Debug)]
pub struct UntaggedFilter {
    state: State,
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl Default for UntaggedFilter {
    fn default() -> Self {
        UntaggedFilter { state: State::Head, head: Vec::with_capacity(MAX_HEAD), tail: Vec::with_capacity(MAX_TAIL) }
    }
}

impl UntaggedFilter {
    /// Filters `input`, appending what is kept to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.state {
                State::Head => {
                    let (byte, rest) = (input[0], &input[1..]);
                    input = rest;
                    self.head.push(byte);
                    if let Some(keep) = classify(&self.head) {
                        let head = std::mem::take(&mut self.head);
                        if !keep {
                            tracing::debug!(line = %String::from_utf8_lossy(&head).trim_end(), "skipped an untagged response the client does not know");
                        }
                        self.state = State::Line { keep };
                        self.line(&head, out);
                    }
                }
                State::Line { .. } => input = self.line(input, out),
                State::Literal { remaining, keep } => {
                    let n = usize::try_from(remaining).map_or(input.len(), |r| r.min(input.len()));
                    if keep {
                        out.extend_from_slice(&input[..n]);
                    }
                    input = &input[n..];
                    let remaining = remaining - n as u64;
                    self.state = if remaining == 0 { State::Line { keep } } else { State::Literal { remaining, keep } };
                }
            }
        }
    }

    /// Passes (or drops) the rest of a line up to its end; returns what follows the line.
    fn line<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        let State::Line { keep } = self.state else { return input };
        let end = input.iter().position(|&b| b == b'\n');
        let (part, rest) = match end {
            Some(i) => input.split_at(i + 1),
            None => (input, &[][..]),
        };
        if keep {
            out.extend_from_slice(part);
        }
        self.tail.extend_from_slice(part);
        if self.tail.len() > MAX_TAIL {
            self.tail.drain(..self.tail.len() - MAX_TAIL);
        }
        if end.is_some() {
            self.state = match literal_size(&self.tail) {
                Some(remaining) if remaining > 0 => State::Literal { remaining, keep },
                Some(_) => State::Line { keep },
                None => State::Head,
            };
            self.tail.clear();
        }
        rest
    }
}

/// Whether a line whose first bytes are `head` is kept: `None` while more bytes are needed.
fn classify(head: &[u8]) -> Option<bool> {
    if head[0] != b'*' {
        return Some(true);
    }
    if head.len() < 2 {
        return None;
    }
    if head[1] != b' ' {
        return Some(true);
    }
    let body = &head[2..];
    let digits = body.iter().take_while(|b| b.is_ascii_digit()).count();
    let (numbered, word) = if digits > 0 {
        match body.get(digits) {
            None => return (head.len() >= MAX_HEAD).then_some(true),
            Some(b' ') => (true, &body[digits + 1..]),
            Some(_) => return Some(true),
        }
    } else {
        (false, body)
    };
    let Some(len) = word.iter().position(|&b| matches!(b, b' ' | b'\r' | b'\n' | b'[')) else {
        return (head.len() >= MAX_HEAD).then_some(true);
    };
    let word = String::from_utf8_lossy(&word[..len]).to_ascii_uppercase();
    let known = if numbered { KNOWN_NUMBERED } else { KNOWN };
    Some(known.contains(&word.as_str()))
}

/// The size of the literal a line announces at its end (`{12}\r\n`, `{12+}\r\n`).
fn literal_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let inner = inner.strip_suffix(b"+").unwrap_or(inner);
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A stream whose reads go through an [`UntaggedFilter`]; writes pass through.
#[derive(Debug)]
pub struct Filtered<S> {
    inner: S,
    filter: UntaggedFilter,
    /// Kept bytes not yet handed to the reader, from `pos`.
    out: Vec<u8>,
    pos: usize,
    scratch: Vec<u8>,
}

impl<S> Filtered<S> {
    pub fn new(inner: S) -> Filtered<S> {
        Filtered { inner, filter: UntaggedFilter::default(), out: Vec::new(), pos: 0, scratch: vec![0; READ_CHUNK] }
    }

    /// The stream underneath; bytes read but not yet handed on are dropped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Filtered<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.pos);
                buf.put_slice(&this.out[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            this.out.clear();
            this.pos = 0;
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let filled = read.filled();
            if filled.is_empty() {
                return Poll::Ready(Ok(())); // end of stream
            }
            this.filter.push(filled, &mut this.out);
            // Everything read was dropped: read again rather than report an end of stream.
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Filtered<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The input filtered whole, and byte by byte: both must give the same.
    fn filtered(input: &str) -> String {
        let mut whole = Vec::new();
        UntaggedFilter::default().push(input.as_bytes(), &mut whole);
        let mut bytewise = Vec::new();
        let mut filter = UntaggedFilter::default();
        for b in input.as_bytes() {
            filter.push(std::slice::from_ref(b), &mut bytewise);
        }
        assert_eq!(whole, bytewise, "split input filtered differently");
        String::from_utf8(whole).unwrap()
    }

    #[test]
    fn mailutils_expunged_is_skipped() {
        let input = "* 1 EXPUNGED\r\n* 1 EXPUNGED\r\n* 1 EXISTS\r\n* 1 RECENT\r\nA8 OK EXPUNGE Completed\r\n";
        assert_eq!(filtered(input), "* 1 EXISTS\r\n* 1 RECENT\r\nA8 OK EXPUNGE Completed\r\n");
    }

    #[test]
    fn known_responses_pass_untouched() {
        let input = "* OK [UIDVALIDITY 3] ok\r\n* 2 EXISTS\r\n* SEARCH 1 2\r\n* CAPABILITY IMAP4rev1 IDLE\r\n\
                     * 3 EXPUNGE\r\n+ idling\r\nA1 OK done\r\n* BYE\r\n";
        assert_eq!(filtered(input), input);
    }

    #[test]
    fn literal_contents_are_never_taken_for_lines() {
        let body = "* 9 EXPUNGED\r\n* XYZZY\r\n";
        let input = format!("* 1 FETCH (UID 5 BODY[] {{{}}}\r\n{body})\r\nA2 OK done\r\n", body.len());
        assert_eq!(filtered(&input), input);
    }

    #[test]
    fn an_unknown_response_with_a_literal_is_dropped_whole() {
        let input = "* XAPPLEPUSH {5}\r\nab\r\nc more\r\n* 4 EXISTS\r\n";
        assert_eq!(filtered(input), "* 4 EXISTS\r\n");
    }

    #[test]
    fn unknown_keywords_are_dropped_numbered_or_not() {
        assert_eq!(filtered("* NAMESPACE ((\"\" \"/\")) NIL NIL\r\nA OK\r\n"), "A OK\r\n");
        assert_eq!(filtered("* 7 XFOO bar\r\nA OK\r\n"), "A OK\r\n");
        assert_eq!(filtered("* 7 FETCH (UID 9)\r\n"), "* 7 FETCH (UID 9)\r\n");
    }

    #[test]
    fn a_long_head_without_a_keyword_end_is_passed_on() {
        let long = format!("* {}\r\n", "X".repeat(200));
        assert_eq!(filtered(&long), long);
    }

    #[test]
    fn literal_sizes() {
        assert_eq!(literal_size(b"x {12}\r\n"), Some(12));
        assert_eq!(literal_size(b"x {12+}\r\n"), Some(12));
        assert_eq!(literal_size(b"x {}\r\n"), None);
        assert_eq!(literal_size(b"x 12}\r\n"), None);
        assert_eq!(literal_size(b"x {1a}\r\n"), None);
    }
}
