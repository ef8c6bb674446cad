//! LMTP/SMTP replies as a client reads them: `250-first line`, `250 last line`.
//!
//! Input: lines from the server, each capped at [`MAX_LINE_LEN`], at most [`MAX_LINES`] a
//! reply. Output: the code and the text (lines joined by a space).
//!
//! Security: the server is trusted to be a mail store, but a broken or hostile one can still
//! only make us read a bounded amount per reply.

use std::io::BufRead;

/// Longest reply line accepted (RFC 5321 allows 512; servers' texts stay far below this).
pub const MAX_LINE_LEN: usize = 4096;
/// Most lines of one multi-line reply (LHLO's capability list is the longest we read).
pub const MAX_LINES: usize = 100;

/// A server reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The text of every line, joined by a space (without the code).
    pub text: String,
}

/// The three outcomes a reply code means for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx (and 3xx where one is expected, see [`Reply::class`]).
    Positive,
    /// 4xx: try again later.
    Transient,
    /// 5xx (and anything malformed): give up.
    Permanent,
}

impl Reply {
    pub fn class(&self) -> Class {
        match self.code / 100 {
            2 | 3 => Class::Positive,
            4 => Class::Transient,
            _ => Class::Permanent,
        }
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.text.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {}", self.code, self.text)
        }
    }
}

/// What is wrong with a reply.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("connection closed by the server")]
    Closed,
    #[error("reply line longer than {MAX_LINE_LEN} bytes")]
    TooLong,
    #[error("reply of more than {MAX_LINES} lines")]
    TooManyLines,
    #[error("malformed reply line {0:?}")]
    Syntax(String),
    #[error("reply lines with different codes ({0} then {1})")]
    MixedCodes(u16, u16),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Whether a reply line is the last of its reply.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    More(u16, &'a str),
    Last(u16, &'a str),
}

/// One reply line without its line end: `DDD`, `DDD text`, `DDD-text`.
fn parse_line(line: &str) -> Result<Line<'_>, ReplyError> {
    let syntax = || ReplyError::Syntax(line.chars().take(80).collect());
    let digits = line.get(..3).filter(|d| d.bytes().all(|b| b.is_ascii_digit())).ok_or_else(syntax)?;
    let code: u16 = digits.parse().map_err(|_| syntax())?;
    if !(200..=599).contains(&code) {
        return Err(syntax());
    }
    match line.as_bytes().get(3) {
        None => Ok(Line::Last(code, "")),
        Some(b' ') => Ok(Line::Last(code, line[4..].trim_end())),
        Some(b'-') => Ok(Line::More(code, line[4..].trim_end())),
        Some(_) => Err(syntax()),
    }
}

/// Reads one whole reply.
pub fn read_reply(reader: &mut impl BufRead) -> Result<Reply, ReplyError> {
    let mut text = String::new();
    let mut first_code = None;
    for _ in 0..MAX_LINES {
        let line = read_line(reader)?;
        let (code, part, last) = match parse_line(&line)? {
            Line::More(code, part) => (code, part, false),
            Line::Last(code, part) => (code, part, true),
        };
        match first_code {
            Some(first) if first != code => return Err(ReplyError::MixedCodes(first, code)),
            _ => first_code = Some(code),
        }
        if !part.is_empty() {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(part);
        }
        if last {
            return Ok(Reply { code, text });
        }
    }
    Err(ReplyError::TooManyLines)
}

/// One line without its `\r\n` (or bare `\n`), at most [`MAX_LINE_LEN`] bytes.
fn read_line(reader: &mut impl BufRead) -> Result<String, ReplyError> {
    let mut line = Vec::new();
    let read = std::io::Read::take(&mut *reader, MAX_LINE_LEN as u64 + 1).read_until(b'\n', &mut line)?;
    if read == 0 {
        return Err(ReplyError::Closed);
    }
    if line.last() != Some(&b'\n') {
        return Err(if line.len() > MAX_LINE_LEN { ReplyError::TooLong } else { ReplyError::Closed });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads every reply in `input`, fed one byte at a time (a reader that returns short
    /// reads must not change the result).
    fn replies(input: &str) -> Vec<Result<Reply, String>> {
        let mut reader = std::io::BufReader::with_capacity(1, input.as_bytes());
        let mut out = Vec::new();
        loop {
            match read_reply(&mut reader) {
                Err(ReplyError::Closed) => return out,
                Ok(reply) => out.push(Ok(reply)),
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    fn reply(code: u16, text: &str) -> Result<Reply, String> {
        Ok(Reply { code, text: text.to_string() })
    }

    #[test]
    fn single_and_multi_line_replies_with_any_line_end() {
        for end in ["\r\n", "\n", " \r\n"] {
            let input = format!("220 store ready{end}250-store{end}250-PIPELINING{end}250 8BITMIME{end}250{end}");
            let got = replies(&input);
            assert_eq!(got[0], reply(220, "store ready"), "{end:?}");
            assert_eq!(got[1], reply(250, "store PIPELINING 8BITMIME"), "{end:?}");
            assert_eq!(got[2], reply(250, ""), "{end:?}");
            assert_eq!(got.len(), 3);
        }
    }

    #[test]
    fn per_recipient_replies_after_data_are_read_one_by_one() {
        let input = "250 2.0.0 <a@x> Saved\r\n550 5.1.1 <b@x> User doesn't exist\r\n452 4.2.2 <c@x> Quota exceeded\r\n";
        let got = replies(input);
        let classes: Vec<Class> = got.iter().map(|r| r.as_ref().unwrap().class()).collect();
        assert_eq!(classes, [Class::Positive, Class::Permanent, Class::Transient]);
        assert_eq!(got[1], reply(550, "5.1.1 <b@x> User doesn't exist"));
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in ["25 short\r\n", "abc text\r\n", "250xtext\r\n", "099 low\r\n", "600 high\r\n"] {
            let got = replies(bad);
            assert!(matches!(got.as_slice(), [Err(e)] if e.contains("malformed")), "{bad}: {got:?}");
        }
        let got = replies("250-a\r\n550 b\r\n");
        assert!(matches!(got.as_slice(), [Err(e)] if e.contains("different codes")), "{got:?}");
        let long = format!("250 {}\r\n", "x".repeat(MAX_LINE_LEN + 10));
        assert!(matches!(replies(&long).as_slice(), [Err(e)] if e.contains("longer")));
        let many = "250-x\r\n".repeat(MAX_LINES + 1);
        assert!(matches!(replies(&many).as_slice(), [Err(e)] if e.contains("lines")));
        // Cut off in the middle of a line or of a multi-line reply: the connection is gone.
        let mut cut = std::io::BufReader::new("250-a\r\n250 b".as_bytes());
        assert!(matches!(read_reply(&mut cut), Err(ReplyError::Closed)));
    }
}
