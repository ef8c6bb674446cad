//! SMTP replies: a code, an enhanced status code (RFC 3463) and text, written as one or more
//! lines. A protocol refusal is a `Reply`, never an `Err`.

use std::borrow::Cow;

/// Reply text: most replies are fixed strings and cost no allocation.
pub type Text = Cow<'static, str>;

/// One SMTP reply. `lines` holds at least one line; a multi-line reply (EHLO, HELP) has more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// Enhanced status code such as `"2.1.0"`; empty for replies that carry none (220, 221,
    /// 354, EHLO lines).
    pub status: Text,
    pub lines: Vec<Text>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, status: impl Into<Text>, text: impl Into<Text>) -> Reply {
        Reply { code, status: status.into(), lines: vec![text.into()] }
    }

    /// A one-line reply without an enhanced status code.
    pub fn plain(code: u16, text: impl Into<Text>) -> Reply {
        Reply { code, status: Text::Borrowed(""), lines: vec![text.into()] }
    }

    /// A reply from a script's verdict: `text` may start with its own enhanced status code
    /// (`"5.7.1 go away"`); otherwise `default_status` is put in front.
    pub fn from_script(code: u16, default_status: &str, text: &str) -> Reply {
        let text = sanitize(text);
        match split_status(&text) {
            Some((status, rest)) => Reply::new(code, status.to_string(), rest.to_string()),
            None => Reply::new(code, default_status.to_string(), text),
        }
    }

    /// Appends the wire form to `out`: CRLF-terminated lines, `-` continuation on all but the
    /// last.
    ///
    /// Straight into the session's output buffer, not a `write!` per line nor a string of its
    /// own: a message gets seven replies, and the formatting machinery was a visible part of
    /// the receiver's work (bench/results/findings.md).
    pub fn write_wire(&self, out: &mut Vec<u8>) {
        let code = self.code.min(999);
        let digits = [b'0' + (code / 100) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8];
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            out.extend_from_slice(&digits);
            out.push(if i == last { b' ' } else { b'-' });
            if !self.status.is_empty() {
                out.extend_from_slice(self.status.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a string (see [`Self::write_wire`]).
    pub fn to_wire(&self) -> String {
        let mut out = Vec::new();
        self.write_wire(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status.is_empty() {
            write!(f, "{} {}", self.code, self.lines.join(" / "))
        } else {
            write!(f, "{} {} {}", self.code, self.status, self.lines.join(" / "))
        }
    }
}

/// Splits a leading `"x.y.z "` enhanced status code off `text`.
fn split_status(text: &str) -> Option<(&str, &str)> {
    let (head, rest) = text.split_once(' ')?;
    let parts: Vec<&str> = head.split('.').collect();
    let ok = parts.len() == 3
        && matches!(parts[0], "2" | "4" | "5")
        && parts[1..].iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some((head, rest))
}

/// Script-supplied text goes on the wire: no CR, LF or other controls may reach it.
fn sanitize(text: &str) -> String {
    let cleaned: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() {
        "Rejected".to_string()
    } else {
        trimmed.chars().take(400).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_forms() {
        assert_eq!(Reply::new(250, "2.1.0", "OK").to_wire(), "250 2.1.0 OK\r\n");
        assert_eq!(Reply::plain(354, "go").to_wire(), "354 go\r\n");
        let multi = Reply { code: 250, status: "".into(), lines: vec!["a".into(), "b".into()] };
        assert_eq!(multi.to_wire(), "250-a\r\n250 b\r\n");
        assert_eq!(Reply::new(421, "4.3.2", "bye").to_wire(), "421 4.3.2 bye\r\n");
    }

    #[test]
    fn script_text_with_and_without_status() {
        assert_eq!(Reply::from_script(550, "5.7.1", "5.1.1 no such user").to_wire(), "550 5.1.1 no such user\r\n");
        assert_eq!(Reply::from_script(550, "5.7.1", "go away").to_wire(), "550 5.7.1 go away\r\n");
        assert_eq!(Reply::from_script(550, "5.7.1", "a\r\nb").to_wire(), "550 5.7.1 a  b\r\n");
    }
}
