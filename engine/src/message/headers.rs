//! Editing the header section of a raw message without touching anything else: the body and
//! every field a script did not name stay byte-identical.
//!
//! Security: names and values from scripts are checked here ([`check_name`], [`check_value`])
//! so no script can inject a header line, a recipient or a second message.

use std::borrow::Cow;

/// Longest header value a script may set; keeps the field under RFC 5322's 998-octet line.
pub const MAX_VALUE_LEN: usize = 900;

/// Why a script-supplied header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("invalid header name {0:?}: use printable ASCII without ':' or spaces (RFC 5322 ftext)")]
    Name(String),
    #[error("header value may not contain CR, LF or NUL")]
    Value,
    #[error("header value longer than {MAX_VALUE_LEN} characters")]
    TooLong,
}

/// RFC 5322 §3.6.8 field name: printable US-ASCII except `:`.
pub fn check_name(name: &str) -> Result<(), HeaderError> {
    let ok = !name.is_empty() && name.len() <= 76 && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if ok {
        Ok(())
    } else {
        Err(HeaderError::Name(name.to_string()))
    }
}

pub fn check_value(value: &str) -> Result<(), HeaderError> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(HeaderError::Value);
    }
    if value.chars().count() > MAX_VALUE_LEN {
        return Err(HeaderError::TooLong);
    }
    Ok(())
}

/// Offset where the body starts: just past the empty line ending the header section, or the
/// end of the message when there is none.
pub fn body_offset(raw: &[u8]) -> usize {
    let mut line_start = 0;
    while line_start < raw.len() {
        let rest = &raw[line_start..];
        if rest.starts_with(b"\r\n") {
            return line_start + 2;
        }
        if rest.starts_with(b"\n") {
            return line_start + 1;
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => line_start += nl + 1,
            None => return raw.len(),
        }
    }
    raw.len()
}

/// Like [`body_offset`], but `None` when `raw` holds no empty line (the header section may go
/// on past it).
pub fn block_end(raw: &[u8]) -> Option<usize> {
    let end = body_offset(raw);
    (end < raw.len() || raw.ends_with(b"\n\n") || raw.ends_with(b"\n\r\n") || raw.starts_with(b"\r\n") || raw == b"\n")
        .then_some(end)
}

/// Each header field of the header section: (name, start, end), `end` past its last line
/// (continuation lines included).
pub fn fields(raw: &[u8]) -> Vec<(String, usize, usize)> {
    // A typical header section has a dozen fields: one allocation.
    let mut out = Vec::with_capacity(16);
    out.extend(raw_fields(raw).map(|(name, start, end)| (field_name(name).into_owned(), start, end)));
    out
}

/// How many fields named `name` (any case) the header section holds, without building the
/// list (the SMTP session counts the Received fields of every message).
pub fn count(raw: &[u8], name: &str) -> usize {
    raw_fields(raw).filter(|(field, _, _)| field_name(field).eq_ignore_ascii_case(name)).count()
}

/// The fields of the header section in one pass, a line at a time, up to the empty line that
/// ends it: (raw name, start, end). A line without a colon has the name "".
fn raw_fields(raw: &[u8]) -> impl Iterator<Item = (&[u8], usize, usize)> {
    // The end of the header line at `pos`; `None` at the end of the section.
    let line_end = move |pos: usize| {
        let end = memchr::memchr(b'\n', raw.get(pos..)?).map_or(raw.len(), |nl| pos + nl + 1);
        (pos < raw.len() && !matches!(&raw[pos..end], b"\r\n" | b"\n")).then_some(end)
    };
    let mut pos = 0;
    std::iter::from_fn(move || {
        let start = pos;
        let mut end = line_end(start)?;
        let line = &raw[start..end];
        let name = memchr::memchr(b':', line).map_or(&b""[..], |colon| &line[..colon]);
        while matches!(raw.get(end), Some(b' ' | b'\t')) {
            end = line_end(end).unwrap_or(raw.len());
        }
        pos = end;
        Some((name, start, end))
    })
}

/// A field name as scripts compare it: trimmed, invalid UTF-8 replaced.
fn field_name(raw: &[u8]) -> Cow<'_, str> {
    match String::from_utf8_lossy(raw) {
        Cow::Borrowed(name) => Cow::Borrowed(name.trim()),
        Cow::Owned(name) => Cow::Owned(name.trim().to_string()),
    }
}

/// The message without any field named `name`.
pub fn remove(raw: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut pos = 0;
    for (field, start, end) in fields(raw) {
        if field.eq_ignore_ascii_case(name) {
            out.extend_from_slice(&raw[pos..start]);
            pos = end;
        }
    }
    out.extend_from_slice(&raw[pos..]);
    out
}

/// The message with `name: value` put in front (values with non-ASCII text are RFC 2047
/// encoded).
pub fn prepend(raw: &[u8], name: &str, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + name.len() + value.len() + 4);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(encode_value(value).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(raw);
    out
}

/// Replaces every `name` field by one `name: value` at the position of the first (in front when
/// there was none).
pub fn set(raw: &[u8], name: &str, value: &str) -> Vec<u8> {
    let all = fields(raw);
    let Some(first_start) = all.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(name)).map(|(_, start, _)| *start)
    else {
        return prepend(raw, name, value);
    };
    let removed = remove(raw, name);
    // Fields before the first occurrence were untouched, so its offset is still valid.
    let mut out = Vec::with_capacity(removed.len() + value.len() + name.len() + 4);
    out.extend_from_slice(&removed[..first_start]);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(encode_value(value).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&removed[first_start..]);
    out
}

/// Joins folded lines and trims, as a script expects to compare a value.
pub fn unfold(value: &str) -> String {
    // Copied a run at a time between line-end characters (a Received field is a few hundred
    // bytes; this runs for every `msg.header(..)` a hook asks for).
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = memchr::memchr2(b'\r', b'\n', rest.as_bytes()) {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if rest.as_bytes()[at] == b'\n' && !after.starts_with([' ', '\t']) {
            out.push(' ');
        }
        rest = after;
    }
    out.push_str(rest);
    let trimmed = out.trim();
    if trimmed.len() == out.len() {
        out
    } else {
        trimmed.to_string()
    }
}

/// RFC 2047 `=?UTF-8?B?...?=` for values with non-ASCII text; ASCII passes unchanged.
pub fn encode_value(value: &str) -> String {
    if value.is_ascii() {
        return value.to_string();
    }
    // Encoded words are at most 75 characters: 45 bytes of UTF-8 per word, split on char
    // boundaries.
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in value.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(format!("=?UTF-8?B?{}?=", base64(chunk.as_bytes())));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() {
        words.push(format!("=?UTF-8?B?{}?=", base64(chunk.as_bytes())));
    }
    words.join("\r\n ")
}

fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"Received: a\r\n\tb\r\nSubject: hi\r\nX-Spam: yes\r\nx-spam: again\r\n\r\nbody\r\nX-Spam: not a header\r\n";

    #[test]
    fn unfold_joins_lines_and_trims() {
        let cases = [
            (" a\r\n\tb\r\n", "a\tb"),
            ("a\r\n b", "a b"),
            ("a\nb", "a b"),
            ("a\r\nb", "a b"),
            ("a\rb", "ab"),
            (" héllo  wörld \r\n", "héllo  wörld"),
            ("", ""),
            ("\r\n", ""),
            ("plain", "plain"),
        ];
        for (folded, unfolded) in cases {
            assert_eq!(unfold(folded), unfolded, "{folded:?}");
        }
    }

    #[test]
    fn fields_and_count() {
        let f = fields(MSG);
        assert_eq!(f.len(), 4);
        assert_eq!(f[0], ("Received".to_string(), 0, 17));
        assert_eq!(count(MSG, "x-spam"), 2);
        assert_eq!(body_offset(MSG), MSG.len() - b"body\r\nX-Spam: not a header\r\n".len());
    }

    #[test]
    fn fields_of_odd_sections() {
        // A leading continuation line is a field of its own; a later one extends its field.
        let folded = b" folded first\r\nReceived: a\r\n received: b\r\n";
        assert_eq!(fields(folded), [(String::new(), 0, 15), ("Received".to_string(), 15, folded.len())]);
        assert_eq!(count(folded, "received"), 1);
        // Spaces before the colon, no colon, invalid UTF-8, and nothing after the blank line.
        let odd = b"Received : a\r\nRECEIVED:b\r\nno colon\r\n\xffReceived: c\r\n\r\nReceived: body\r\n";
        let found: Vec<String> = fields(odd).into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(found, ["Received", "RECEIVED", "", "\u{fffd}Received"]);
        assert_eq!((count(odd, "Received"), count(odd, ""), count(odd, "x")), (2, 1, 0));
        // Bare LF line ends; a Unicode space is trimmed like any other.
        let lf = "\u{a0}Received: nbsp\nReceived: lf only\n\nReceived: body".as_bytes();
        assert_eq!(count(lf, "Received"), 2);
        assert_eq!(fields(b""), []);
    }

    #[test]
    fn remove_keeps_the_rest_identical() {
        let out = remove(MSG, "X-SPAM");
        assert_eq!(out, b"Received: a\r\n\tb\r\nSubject: hi\r\n\r\nbody\r\nX-Spam: not a header\r\n");
    }

    #[test]
    fn set_replaces_in_place() {
        let out = set(MSG, "subject", "new");
        assert!(out.starts_with(b"Received: a\r\n\tb\r\nsubject: new\r\nX-Spam"), "{}", String::from_utf8_lossy(&out));
        assert_eq!(count(&out, "Subject"), 1);
        let added = set(MSG, "X-New", "v");
        assert!(added.starts_with(b"X-New: v\r\nReceived"));
    }

    #[test]
    fn encodes_non_ascii() {
        assert_eq!(encode_value("plain"), "plain");
        assert_eq!(encode_value("héllo"), "=?UTF-8?B?aMOpbGxv?=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }

    #[test]
    fn injection_refused() {
        assert!(check_name("X-Ok").is_ok());
        assert!(check_name("Bad Name").is_err());
        assert!(check_name("Bad:Name").is_err());
        assert!(check_name("").is_err());
        assert!(check_value("a\r\nBcc: x@y").is_err());
        assert!(check_value("a\nb").is_err());
        assert!(check_value("a\0b").is_err());
        assert!(check_value(&"x".repeat(901)).is_err());
    }
}
