//! Envelope addresses (RFC 5321 §4.1.2 Mailbox), checked strictly before anything trusts them.
//!
//! smtp-proto parses the command line but silently strips source routes and unquotes quoted
//! local parts; for relay control both matter (`@a:b@c`, `"x@y"@local`, `x%y@local`, `a!b@local`
//! are classic ways to slip mail past a relay check). So the bracketed text from the raw line is
//! checked here as well. Security: input is untrusted client bytes.

/// A checked mailbox, `local@domain`, domain lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    pub local: String,
    pub domain: String,
}

impl Mailbox {
    pub fn as_string(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// Why an address was refused; each maps to a distinct SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("source routes are not accepted")]
    SourceRoute,
    #[error("quoted local parts are not accepted")]
    Quoted,
    #[error("'%' and '!' routing in addresses is not accepted")]
    RoutingHack,
    #[error("non-ASCII address without SMTPUTF8")]
    NeedsSmtpUtf8,
    #[error("malformed address")]
    Syntax,
}

/// Maximum lengths from RFC 5321 §4.5.3.1.
const MAX_LOCAL_LEN: usize = 64;
const MAX_DOMAIN_LEN: usize = 255;

/// Extracts the text between the first `<` and its `>` on a raw MAIL/RCPT line.
pub fn bracketed(line: &str) -> Option<&str> {
    let start = line.find('<')?;
    let end = line[start..].find('>')? + start;
    Some(&line[start + 1..end])
}

/// Checks `text` (the inside of `<...>`) as a mailbox. `utf8` says the client announced
/// SMTPUTF8 for this transaction.
pub fn parse_mailbox(text: &str, utf8: bool) -> Result<Mailbox, AddressError> {
    if text.starts_with('@') {
        return Err(AddressError::SourceRoute);
    }
    if text.contains('"') || text.contains('\\') {
        return Err(AddressError::Quoted);
    }
    if !text.is_ascii() && !utf8 {
        return Err(AddressError::NeedsSmtpUtf8);
    }
    let (local, domain) = text.rsplit_once('@').ok_or(AddressError::Syntax)?;
    if local.contains('%') || local.contains('!') || domain.contains('!') {
        return Err(AddressError::RoutingHack);
    }
    if local.contains('@') {
        return Err(AddressError::RoutingHack);
    }
    // The domain is checked as it is kept: lower-casing can change it (`İ` becomes `i` and a
    // combining dot, a label may grow past 63 octets), and the kept form must pass the check.
    let domain = domain.to_lowercase();
    if !valid_local(local) || !valid_domain(&domain) {
        return Err(AddressError::Syntax);
    }
    Ok(Mailbox { local: local.to_string(), domain })
}

/// Dot-atom local part (RFC 5322 atext, plus UTF-8 under SMTPUTF8).
fn valid_local(local: &str) -> bool {
    if local.is_empty()
        || local.len() > MAX_LOCAL_LEN
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return false;
    }
    local
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "!#$&'*+-/=?^_`{|}~.".contains(c) || (!c.is_ascii() && !c.is_control()))
}

/// A host name (labels of letters, digits, hyphens; UTF-8 labels under SMTPUTF8) or an
/// address literal `[1.2.3.4]` / `[IPv6:...]`.
fn valid_domain(domain: &str) -> bool {
    if domain.is_empty() || domain.len() > MAX_DOMAIN_LEN {
        return false;
    }
    if let Some(literal) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        // The tag is case-insensitive (RFC 5234 strings), and lower-cased with the domain.
        if let Some(v6) = literal.get(..5).filter(|tag| tag.eq_ignore_ascii_case("IPv6:")).map(|_| &literal[5..]) {
            return v6.parse::<std::net::Ipv6Addr>().is_ok();
        }
        return literal.parse::<std::net::Ipv4Addr>().is_ok();
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses() {
        let m = parse_mailbox("Alice.B+tag@Example.ORG", false).unwrap();
        assert_eq!(m.local, "Alice.B+tag");
        assert_eq!(m.domain, "example.org");
        assert!(parse_mailbox("a@[127.0.0.1]", false).is_ok());
        assert!(parse_mailbox("a@[IPv6:::1]", false).is_ok());
    }

    #[test]
    fn relay_tricks_refused() {
        assert_eq!(parse_mailbox("@a.org:b@c.org", false), Err(AddressError::SourceRoute));
        assert_eq!(parse_mailbox("@a.org,@b.org:b@c.org", false), Err(AddressError::SourceRoute));
        assert_eq!(parse_mailbox("\"x@y\"@local.org", false), Err(AddressError::Quoted));
        assert_eq!(parse_mailbox("x%y.org@local.org", false), Err(AddressError::RoutingHack));
        assert_eq!(parse_mailbox("y.org!x@local.org", false), Err(AddressError::RoutingHack));
        assert_eq!(parse_mailbox("x@y@local.org", false), Err(AddressError::RoutingHack));
    }

    #[test]
    fn issue_2_relay_forms_are_refused_as_relaying() {
        // The exact forms of issue #2, as they sit between the brackets of RCPT TO:<...>.
        for (text, want) in [
            ("@a:b@example.org", AddressError::SourceRoute),
            ("\"x@y\"@example.org", AddressError::Quoted),
            ("\"x\"@example.org", AddressError::Quoted),
            ("x\\@y@example.org", AddressError::Quoted),
            ("x%y@example.org", AddressError::RoutingHack),
            ("y!x@example.org", AddressError::RoutingHack),
            ("x@y!example.org", AddressError::RoutingHack),
        ] {
            assert_eq!(parse_mailbox(text, false), Err(want.clone()), "{text}");
            assert_eq!(parse_mailbox(text, true), Err(want), "{text} with SMTPUTF8");
        }
    }

    #[test]
    fn local_part_cannot_name_a_path() {
        for bad in ["../x@example.org", "./x@example.org", "x/..@example.org", "x\0y@example.org", "x\ty@example.org"] {
            assert!(parse_mailbox(bad, true).is_err(), "{bad:?} accepted");
        }
        // '/' is atext: allowed, and made harmless by the Maildir template later
        assert!(parse_mailbox("a/b@example.org", false).is_ok());
    }

    #[test]
    fn syntax_errors() {
        for bad in
            ["", "a", "a@", "@", "a@b..c", ".a@b.c", "a.@b.c", "a..b@c.d", "a b@c.d", "a@-b.c", "a@b_c.d", "a@[1.2.3]"]
        {
            assert!(parse_mailbox(bad, false).is_err(), "{bad:?} accepted");
        }
        let long_local = format!("{}@b.c", "a".repeat(65));
        assert!(parse_mailbox(&long_local, false).is_err());
    }

    #[test]
    fn the_kept_form_of_a_mailbox_parses_to_itself() {
        for (text, utf8) in
            [("a@[IPv6:::1]", false), ("a@[ipv6:::1]", false), ("x@Example.ORG", false), ("ü@exÄmple.org", true)]
        {
            let mailbox = parse_mailbox(text, utf8).unwrap();
            assert_eq!(parse_mailbox(&mailbox.as_string(), utf8), Ok(mailbox), "{text}");
        }
        // Lower-cased, `İ` is `i` and U+0307 (a combining mark): not a host name character.
        assert_eq!(parse_mailbox("a@İstanbul.example", true), Err(AddressError::Syntax));
    }

    #[test]
    fn utf8_needs_smtputf8() {
        assert_eq!(parse_mailbox("jöran@example.org", false), Err(AddressError::NeedsSmtpUtf8));
        assert!(parse_mailbox("jöran@exämple.org", true).is_ok());
    }

    #[test]
    fn bracketed_text() {
        assert_eq!(bracketed("MAIL FROM:<a@b.c> SIZE=10"), Some("a@b.c"));
        assert_eq!(bracketed("RCPT TO:<>"), Some(""));
        assert_eq!(bracketed("RCPT TO:a@b"), None);
    }
}
