//! Line ends for the wire: every bare CR or bare LF becomes CRLF, and the message ends with
//! CRLF, so the SMTP client's dot-stuffing sees every line start and no `\n.\r\n`-style
//! sequence can end the DATA early on the receiving side.

/// Whether `raw` is as [`crlf`] would leave it: every CR starts a CRLF, every LF ends one,
/// and it ends with CRLF.
pub fn is_crlf(raw: &[u8]) -> bool {
    let mut from = 0;
    while let Some(found) = memchr::memchr2(b'\r', b'\n', &raw[from..]) {
        let at = from + found;
        if raw[at] == b'\n' || raw.get(at + 1) != Some(&b'\n') {
            return false;
        }
        from = at + 2;
    }
    raw.ends_with(b"\r\n")
}

/// The message with CRLF line ends only.
pub fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 50 + 2);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if raw.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{crlf, is_crlf};

    #[test]
    fn bare_line_ends_become_crlf() {
        assert_eq!(crlf(b"a\nb\rc\r\nd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(crlf(b"x\n.\r\ny"), b"x\r\n.\r\ny\r\n");
        assert_eq!(crlf(b"x\r\r\n"), b"x\r\n\r\n");
        assert_eq!(crlf(b""), b"");
    }

    #[test]
    fn is_crlf_agrees_with_crlf() {
        for raw in [&b"a\r\nb\r\n"[..], b"a\nb\r\n", b"a\rb\r\n", b"a\r\nb", b"a\r\r\n", b"\r\n", b"x\r"] {
            assert_eq!(is_crlf(raw), crlf(raw) == raw, "{raw:?}");
        }
    }
}
