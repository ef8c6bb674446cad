//! IMAP names: flags as scripts write them, folder names in the server's hierarchy delimiter
//! and modified UTF-7 (RFC 3501 §5.1.3), UID sets. Pure functions of their input.

use super::*;

pub(super) fn flag_name(flag: &Flag<'_>) -> String {
    match flag {
        Flag::Seen => "\\Seen".into(),
        Flag::Answered => "\\Answered".into(),
        Flag::Flagged => "\\Flagged".into(),
        Flag::Deleted => "\\Deleted".into(),
        Flag::Draft => "\\Draft".into(),
        Flag::Recent => "\\Recent".into(),
        Flag::MayCreate => "\\*".into(),
        Flag::Custom(name) => name.to_string(),
    }
}

/// A flag as it may be sent: a system flag (`\Seen`, any case) or a keyword atom (RFC 3501
/// `flag-keyword`: no space, parenthesis, brace, quote, backslash, `%`, `*`, `]` or control).
/// Anything else (a flag built from message text, say) is refused rather than sent raw.
pub fn valid_flag(flag: &str) -> Option<String> {
    const SYSTEM: [&str; 5] = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"];
    if let Some(system) = SYSTEM.iter().find(|s| s.eq_ignore_ascii_case(flag)) {
        return Some(system.to_string());
    }
    let atom = !flag.is_empty()
        && flag.len() <= 200
        && flag.bytes().all(|b| b > 0x20 && b < 0x7f && !b"(){%*\"\\]".contains(&b));
    atom.then(|| flag.to_string())
}

/// A folder name as the server spells it: `/` becomes the server's hierarchy delimiter, and
/// the result is in modified UTF-7. `INBOX` in any case is `INBOX`.
pub fn server_name(folder: &str, delimiter: Option<&str>) -> String {
    if folder.eq_ignore_ascii_case("INBOX") {
        return "INBOX".into();
    }
    let folder = match delimiter {
        Some(d) if d != "/" => folder.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(d),
        _ => folder.to_string(),
    };
    mutf7(&folder)
}

pub(crate) fn same_mailbox(a: &str, b: &str) -> bool {
    a == b || (a.eq_ignore_ascii_case("INBOX") && b.eq_ignore_ascii_case("INBOX"))
}

/// Modified UTF-7 (RFC 3501 §5.1.3): printable ASCII as is (`&` as `&-`), everything else as
/// `&` + base64 of UTF-16BE with `,` for `/` + `-`.
pub fn mutf7(name: &str) -> String {
    fn flush(units: &mut Vec<u16>, out: &mut String) {
        if units.is_empty() {
            return;
        }
        let bytes: Vec<u8> = units.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        out.push_str(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes).replace('/', ","));
        out.push('-');
        units.clear();
    }
    let mut out = String::with_capacity(name.len());
    let mut units = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut units, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            units.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut units, &mut out);
    out
}

/// `1:3,5,7:9` for sorted or unsorted UIDs.
pub fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end { start.to_string() } else { format!("{start}:{end}") });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets() {
        assert_eq!(uid_set(&[5, 1, 2, 3, 9, 7, 8]), "1:3,5,7:9");
        assert_eq!(uid_set(&[4]), "4");
        assert_eq!(uid_set(&[2, 2]), "2");
    }

    #[test]
    fn modified_utf7() {
        assert_eq!(mutf7("Archive"), "Archive");
        assert_eq!(mutf7("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(mutf7("R&D"), "R&-D");
        assert_eq!(mutf7("日本語"), "&ZeVnLIqe-");
        assert_eq!(mutf7("~peter/mail/台北/日本語"), "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
    }

    #[test]
    fn folder_names_follow_the_server_delimiter() {
        assert_eq!(server_name("Lists/rust", Some(".")), "Lists.rust");
        assert_eq!(server_name("Lists/rust", Some("/")), "Lists/rust");
        assert_eq!(server_name("Lists/rust", None), "Lists/rust");
        assert_eq!(server_name("inbox", Some(".")), "INBOX");
        assert_eq!(server_name("Büro/2026", Some(".")), "B&APw-ro.2026");
    }

    #[test]
    fn flags_are_validated() {
        assert_eq!(valid_flag("\\flagged").as_deref(), Some("\\Flagged"));
        assert_eq!(valid_flag("$Label1").as_deref(), Some("$Label1"));
        assert_eq!(valid_flag("Junk").as_deref(), Some("Junk"));
        assert_eq!(valid_flag("a b"), None);
        assert_eq!(valid_flag("x) A1 DELETE INBOX"), None);
        assert_eq!(valid_flag("\\Recent"), None);
        assert_eq!(valid_flag(""), None);
    }
}
