//! SpamAssassin's spamd protocol (SPAMC/1.5), the parts `spamd::check` uses: a `SYMBOLS`
//! request head, and the answer `SPAMD/1.1 0 EX_OK`, `Spam: True ; 15.0 / 5.0`, a blank line,
//! then the names of the rules that hit, comma-separated.
//!
//! Input: the whole answer, read by the caller up to [`MAX_REPLY`] bytes. Pure parsing, no
//! I/O. An answer that does not follow the protocol is an error, never a panic.

/// An answer longer than this is not spamd's (a symbols list is a few hundred bytes).
pub const MAX_REPLY: usize = 64 * 1024;

/// What spamd said about a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub is_spam: bool,
    pub score: f64,
    pub required_score: f64,
    pub symbols: Vec<String>,
}

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("empty answer (spamd closed the connection)")]
    Empty,
    #[error("not a spamd answer: {0:?}")]
    BadStatusLine(String),
    #[error("spamd refused the request: {code} {message}")]
    Refused { code: u32, message: String },
    #[error("answer without its end of headers")]
    Truncated,
    #[error("answer without a Spam header")]
    NoSpamHeader,
    #[error("bad Spam header: {0:?}")]
    BadSpamHeader(String),
}

/// The request head for `command` on a message of `len` bytes (`user`: spamd's per-user
/// preferences, left out when empty).
pub fn request_head(command: &str, len: u64, user: &str) -> Vec<u8> {
    let mut head = format!("{command} SPAMC/1.5\r\nContent-length: {len}\r\n");
    if !user.is_empty() {
        head.push_str(&format!("User: {user}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// Reads a `SYMBOLS` (or `CHECK`: no symbols) answer.
pub fn parse_reply(answer: &[u8]) -> Result<Verdict, ProtocolError> {
    if answer.is_empty() {
        return Err(ProtocolError::Empty);
    }
    let text = String::from_utf8_lossy(answer);
    let (status, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let status = status.trim_end_matches('\r');
    let mut words = status.splitn(3, ' ');
    let (proto, code, message) = (words.next(), words.next(), words.next().unwrap_or(""));
    let code: u32 = match (proto, code) {
        (Some(p), Some(c)) if p.starts_with("SPAMD/") => {
            c.parse().map_err(|_| ProtocolError::BadStatusLine(short(status)))?
        }
        _ => return Err(ProtocolError::BadStatusLine(short(status))),
    };
    if code != 0 {
        return Err(ProtocolError::Refused { code, message: short(message) });
    }
    let Some((head, body)) = rest.split_once("\r\n\r\n").or_else(|| rest.split_once("\n\n")).or_else(|| {
        // A head ending the answer: its blank line directly after the status line.
        rest.strip_prefix("\r\n").map(|b| ("", b))
    }) else {
        return Err(ProtocolError::Truncated);
    };
    let mut spam = None;
    for line in head.lines() {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("spam") {
                spam = Some(spam_header(value.trim())?);
            }
        }
    }
    let (is_spam, score, required_score) = spam.ok_or(ProtocolError::NoSpamHeader)?;
    let symbols = body.trim().split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    Ok(Verdict { is_spam, score, required_score, symbols })
}

/// `True ; 15.0 / 5.0` (also `Yes`/`No`, as old spamds say).
fn spam_header(value: &str) -> Result<(bool, f64, f64), ProtocolError> {
    let bad = || ProtocolError::BadSpamHeader(short(value));
    let (flag, scores) = value.split_once(';').ok_or_else(bad)?;
    let is_spam = match flag.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" => true,
        "false" | "no" => false,
        _ => return Err(bad()),
    };
    let (score, required) = scores.split_once('/').ok_or_else(bad)?;
    let score: f64 = score.trim().parse().map_err(|_| bad())?;
    let required: f64 = required.trim().parse().map_err(|_| bad())?;
    if !score.is_finite() || !required.is_finite() {
        return Err(bad());
    }
    Ok((is_spam, score, required))
}

fn short(s: &str) -> String {
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head() {
        assert_eq!(request_head("SYMBOLS", 12, ""), b"SYMBOLS SPAMC/1.5\r\nContent-length: 12\r\n\r\n");
        assert_eq!(request_head("CHECK", 1, "me"), b"CHECK SPAMC/1.5\r\nContent-length: 1\r\nUser: me\r\n\r\n");
    }

    #[test]
    fn symbols_answer_with_each_line_ending() {
        for eol in ["\r\n", "\n"] {
            let answer = format!(
                "SPAMD/1.1 0 EX_OK{eol}Content-length: 32{eol}Spam: True ; 1000.0 / 5.0{eol}{eol}GTUBE,NO_RECEIVED,NO_RELAYS{eol}"
            );
            let v = parse_reply(answer.as_bytes()).unwrap();
            assert!(v.is_spam);
            assert_eq!((v.score, v.required_score), (1000.0, 5.0));
            assert_eq!(v.symbols, ["GTUBE", "NO_RECEIVED", "NO_RELAYS"]);
        }
    }

    #[test]
    fn ham_and_check_answers() {
        let v = parse_reply(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -0.1 / 5.0\r\n\r\n").unwrap();
        assert_eq!(v, Verdict { is_spam: false, score: -0.1, required_score: 5.0, symbols: vec![] });
        assert!(parse_reply(b"SPAMD/1.0 0 EX_OK\r\nSpam: Yes ; 6.0 / 5.0\r\n\r\n").unwrap().is_spam);
    }

    #[test]
    fn bad_answers_are_errors() {
        let cases: [(&[u8], ProtocolError); 7] = [
            (b"", ProtocolError::Empty),
            (b"HTTP/1.1 200 OK\r\n\r\n", ProtocolError::BadStatusLine("HTTP/1.1 200 OK".into())),
            (b"SPAMD/1.1 x EX_OK\r\n\r\n", ProtocolError::BadStatusLine("SPAMD/1.1 x EX_OK".into())),
            (
                b"SPAMD/1.0 76 Bad header line: X\r\n",
                ProtocolError::Refused { code: 76, message: "Bad header line: X".into() },
            ),
            (b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1", ProtocolError::Truncated),
            (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n", ProtocolError::NoSpamHeader),
            (b"SPAMD/1.1 0 EX_OK\r\nSpam: maybe ; 1 / 2\r\n\r\n", ProtocolError::BadSpamHeader("maybe ; 1 / 2".into())),
        ];
        for (answer, expected) in cases {
            assert_eq!(parse_reply(answer), Err(expected), "{:?}", String::from_utf8_lossy(answer));
        }
        for header in ["True ; 1 / x", "True ; NaN / 5", "True 1 / 5", "True ; 1"] {
            let answer = format!("SPAMD/1.1 0 EX_OK\r\nSpam: {header}\r\n\r\n");
            assert!(matches!(parse_reply(answer.as_bytes()), Err(ProtocolError::BadSpamHeader(_))), "{header}");
        }
    }

    #[test]
    fn split_anywhere_never_panics() {
        let answer = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 6\r\nSpam: True ; 15.0 / 5.0\r\n\r\nGTUBE\r\n";
        for cut in 0..answer.len() {
            let _ = parse_reply(&answer[..cut]);
        }
        let noise: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let _ = parse_reply(&noise);
    }
}
