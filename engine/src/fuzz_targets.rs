//! Fuzz harnesses: one function per parser that reads untrusted bytes.
//!
//! Each takes arbitrary bytes, runs them through the parser the daemon uses, and asserts what
//! must hold for any input: no panic, and the parser's own invariants (round trips where there
//! is an encoder, agreement with a simple reference where there is one). cargo-fuzz calls them
//! from `fuzz/fuzz_targets/`, and `engine/tests/fuzz_corpus.rs` replays every file of
//! `fuzz/corpus/<name>/` through them on every `cargo test`. See `fuzz/README.md`.

use std::sync::Arc;

use async_imap::imap_proto;
use base64::Engine as _;
use smtp_proto::{Request, MAIL_SMTPUTF8};

use crate::fetch::{imap, pop3};
use crate::message::{headers, MessageView};
use crate::proto::address::{bracketed, parse_mailbox, Mailbox};
use crate::proto::reply::Reply;
use crate::smtp::auth::{decode_text, plain_credentials, shown};
use crate::smtp::mail::{address_reply, declared_size};
use crate::smtp::received::Trace;
use crate::smtp::session::MAX_LINE_LEN;
use crate::smtp::syntax::syntax_reply;

/// A harness: panics when its input breaks an invariant.
pub type Harness = fn(&[u8]);

/// Every harness, by the name of its cargo-fuzz target and corpus directory.
pub const TARGETS: &[(&str, Harness)] = &[
    ("smtp_command", smtp_command),
    ("data_reader", data_reader),
    ("message_view", message_view),
    ("address", address),
    ("pop3_response", pop3_response),
    ("imap_response", imap_response),
    ("spool_record", spool_record),
    ("config", config),
    ("auth_results", auth_results),
];

/// Lines as a reader that stops at LF sees them (LF kept); a last line without LF too.
fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split_inclusive(|&b| b == b'\n')
}

/// A reply on the wire: CRLF-terminated lines of a 3-digit code and text without controls,
/// whatever the client sent (no input can inject a reply line or a terminal escape).
fn check_reply(reply: &Reply) {
    let wire = reply.to_wire();
    assert!(wire.ends_with("\r\n"), "{wire:?}");
    for line in wire.split_terminator("\r\n") {
        assert!(line.len() >= 4 && line.as_bytes()[..3].iter().all(u8::is_ascii_digit), "{wire:?}");
        assert!(!line.chars().any(char::is_control), "control character in reply {wire:?}");
    }
}

/// A mailbox that passed the checks: re-checking its text gives it back unchanged, and none of
/// the relay tricks the checks refuse survived into it.
fn check_mailbox(mailbox: &Mailbox, utf8: bool) {
    let text = mailbox.as_string();
    assert_eq!(parse_mailbox(&text, utf8).as_ref(), Ok(mailbox), "{text:?} does not re-parse to itself");
    assert!(!mailbox.local.contains(['@', '%', '!', '"', '\\']), "{text:?}");
    assert!(!mailbox.domain.contains(['@', '!']), "{text:?}");
    assert!(!text.chars().any(char::is_control), "{text:?}");
    assert!(utf8 || text.is_ascii(), "{text:?}");
}

/// The address text of a MAIL/RCPT line, as the handlers check it.
fn check_envelope_address(text: &str, utf8: bool, syntax_status: &'static str, role: &str) {
    match parse_mailbox(text, utf8) {
        Ok(mailbox) => check_mailbox(&mailbox, utf8),
        Err(e) => check_reply(&address_reply(&e, syntax_status, role)),
    }
}

/// A SASL response line: decoding never panics, and a user name is logged on one line.
fn check_sasl(text: &str) {
    if let Ok((user, password)) = plain_credentials(text) {
        assert!(!user.contains('\0') && !password.contains('\0'));
        let logged = shown(&user);
        assert!(!logged.chars().any(char::is_control), "{logged:?}");
    }
    if let Ok(user) = decode_text(text) {
        assert!(!shown(&user).chars().any(char::is_control));
    }
}

/// SMTP command lines, as the session reads them: each line through smtp-proto, then what the
/// handler does with it (the bracketed address and SIZE of MAIL/RCPT, the EHLO name in the
/// `Received:` header, AUTH's initial response), and the reply to a line that did not parse.
pub fn smtp_command(data: &[u8]) {
    for line in lines(data) {
        let text = String::from_utf8_lossy(line);
        let raw = text.trim_end_matches(['\r', '\n']);
        check_sasl(raw);
        if line.len() > MAX_LINE_LEN {
            // The session refuses an overlong line before parsing it; the parser must still
            // cope with it.
            let _ = Request::parse(&mut line.iter());
            continue;
        }
        let request = match Request::parse(&mut line.iter()).map(Request::into_owned) {
            Ok(request) => request,
            Err(e) => {
                check_reply(&syntax_reply(&e, raw));
                continue;
            }
        };
        match request {
            Request::Mail { from } => {
                let utf8 = from.flags & MAIL_SMTPUTF8 != 0;
                let _ = from.size.max(declared_size(raw));
                let address = bracketed(raw).unwrap_or(&from.address);
                if !address.is_empty() {
                    check_envelope_address(address, utf8, "5.1.7", "sender");
                }
            }
            Request::Rcpt { to } => {
                let address = bracketed(raw).unwrap_or(&to.address);
                for utf8 in [false, true] {
                    check_envelope_address(address, utf8, "5.1.3", "recipient");
                }
            }
            Request::Ehlo { host } | Request::Helo { host } => check_received(&host),
            Request::Auth { initial_response, .. } => check_sasl(&initial_response),
            _ => {}
        }
    }
}

/// The `Received:` header with a client's EHLO name in it: CRLF line ends, continuation lines
/// indented, no control character anywhere else (no header or line injection).
fn check_received(helo: &str) {
    let trace = Trace {
        helo,
        remote_ip: "192.0.2.1",
        hostname: "mx.example.org",
        protocol: "ESMTP",
        tls: None,
        id: "0123456789ABCDEF",
        single_recipient: Some("user@example.org"),
    };
    let header = trace.header();
    assert!(header.starts_with("Received: from ") && header.ends_with("\r\n"), "{header:?}");
    for (i, line) in header.split_terminator("\r\n").enumerate() {
        let line = if i == 0 { line } else { line.strip_prefix('\t').expect("continuation starts with a tab") };
        assert!(!line.chars().any(char::is_control), "control character in {header:?}");
    }
}

/// The DATA reader. Input: 2 bytes of size limit, 1 byte of split count, 2 bytes per split
/// point, then the bytes after `354`. Fed whole and fed in pieces it must read the same, and
/// agree with the plain reading of RFC 5321 §4.1.1.4 written below.
pub fn data_reader(data: &[u8]) {
    use crate::smtp::data_reader::DataReader;
    if data.len() < 3 {
        return;
    }
    let max = match u16::from_le_bytes([data[0], data[1]]) {
        m if m > 60_000 => 1 << 20,
        m => m as usize,
    };
    let splits = (data[2] % 8) as usize;
    let Some(input) = data.get(3 + 2 * splits..) else { return };
    let mut cuts: Vec<usize> = data[3..3 + 2 * splits]
        .chunks(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]) as usize % (input.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.push(input.len());

    let whole = DataReader::new(max).feed(input);

    let mut reader = DataReader::new(max);
    let mut pieces = None;
    let mut at = 0;
    for cut in cuts {
        if let Some((outcome, used)) = reader.feed(&input[at..cut]) {
            pieces = Some((outcome, at + used));
            break;
        }
        at = cut;
    }
    assert_eq!(whole, pieces, "fed in pieces, the reader read otherwise");

    let expected = reference_data(input);
    match (&whole, expected) {
        (None, None) => {}
        (Some((outcome, used)), Some((body, bare, end))) => {
            assert_eq!(*used, end, "message end");
            assert_eq!(outcome.size, body.len(), "size");
            assert_eq!(outcome.oversize, body.len() > max, "oversize");
            // Past the limit nothing is kept (the message is refused).
            let kept: &[u8] = if body.len() > max { &[] } else { &body };
            assert_eq!(outcome.body, kept, "body");
            assert_eq!(outcome.bare_line_ending, bare, "bare line ending");
        }
        (got, want) => panic!("reader ended at {:?}, reference at {:?}", got.as_ref().map(|g| g.1), want.map(|w| w.2)),
    }
}

/// The DATA rules, spelled out: the message ends at the first `.` line after a CRLF (or right
/// after the DATA command's CRLF); a `.` starting a line is removed unless a CR follows it;
/// a CR not followed by LF or an LF not preceded by CR is a bare line ending. Returns the
/// unstuffed message, whether it had a bare line ending, and how many bytes it used.
fn reference_data(input: &[u8]) -> Option<(Vec<u8>, bool, usize)> {
    let mut padded = b"\r\n".to_vec();
    padded.extend_from_slice(input);
    let pos = memchr::memmem::find(&padded, b"\r\n.\r\n")?;
    let content = &input[..pos];
    let mut body = Vec::with_capacity(content.len());
    let mut bare = false;
    for (i, &b) in content.iter().enumerate() {
        let line_start = i == 0 || content[..i].ends_with(b"\r\n");
        if line_start && b == b'.' && content.get(i + 1) != Some(&b'\r') {
            continue;
        }
        bare |= b == b'\r' && content.get(i + 1) != Some(&b'\n');
        bare |= b == b'\n' && (i == 0 || content[i - 1] != b'\r');
        body.push(b);
    }
    Some((body, bare, pos + 3))
}

/// Header names every message view is asked for, whatever the message holds.
const NAMES: &[&str] = &["Subject", "From", "To", "Cc", "Date", "Message-ID", "Received", "Comments", "X-Absent"];

/// The message view scripts read: every getter on any bytes, and the header editing scripts
/// ask for (remove, set) leaving the body and the other fields alone.
pub fn message_view(data: &[u8]) {
    let raw = Arc::new(data.to_vec());
    let view = MessageView::new(raw.clone());
    assert_eq!(view.size(), data.len());
    assert!(!view.is_headers_only() && view.flags().is_empty());
    let _ = (view.subject(), view.from(), view.to(), view.cc(), view.date(), view.message_id());
    let body = view.body();
    let _ = (&body.text, &body.html, body.attachments.len());

    let offset = headers::body_offset(data);
    assert!(offset <= data.len());
    let header_only = MessageView::headers_only(Arc::new(data[..offset].to_vec()), vec!["\\Seen".into()], data.len());
    assert_eq!(header_only.size(), data.len());

    let mut names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    names.extend(headers::fields(data).into_iter().map(|(name, _, _)| name).take(32));
    names.sort_unstable();
    names.dedup();
    for name in &names {
        let all = view.headers(name);
        let (count, _) = view.header_count(name);
        assert_eq!(all.len(), count, "{name:?}");
        assert_eq!(view.has_header(name), count > 0, "{name:?}");
        assert_eq!(view.header(name), all.first().cloned().unwrap_or_default(), "{name:?}");
        assert_eq!(header_only.headers(name), all, "{name:?} differs in the header-only view");
        if headers::check_name(name).is_err() {
            continue;
        }
        assert_eq!(headers::count(data, name), count, "{name:?}");
        let removed = headers::remove(data, name);
        assert_eq!(headers::count(&removed, name), 0, "{name:?} left after remove");
        assert_eq!(removed[headers::body_offset(&removed)..], data[offset..], "remove {name:?} changed the body");
    }
    let _ = (header_only.subject(), header_only.from(), header_only.to(), header_only.date());
}

/// Envelope addresses. Input: 1 byte of flags (bit 0: SMTPUTF8), then the text of a MAIL or
/// RCPT line or of what is between its brackets.
pub fn address(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let utf8 = flags & 1 != 0;
    let text = String::from_utf8_lossy(rest);
    if let Some(inner) = bracketed(&text) {
        assert!(text.contains(&format!("<{inner}>")), "{text:?}");
        if let Ok(mailbox) = parse_mailbox(inner, utf8) {
            check_mailbox(&mailbox, utf8);
        }
    }
    match parse_mailbox(&text, utf8) {
        Ok(mailbox) => check_mailbox(&mailbox, utf8),
        Err(e) => {
            check_reply(&address_reply(&e, "5.1.7", "sender"));
            check_reply(&address_reply(&e, "5.1.3", "recipient"));
        }
    }
}

/// POP3 server responses, as the client reads them: a status line (with the APOP timestamp of a
/// greeting, or STAT's counts), then a multi-line response up to its `.` line, read as a
/// message and as LIST and UIDL listings.
pub fn pop3_response(data: &[u8]) {
    /// A small limit, so inputs can cross it.
    const MAX: usize = 4096;
    let mut lines = lines(data);
    let Some(first) = lines.next() else { return };
    if first.len() <= pop3::MAX_LINE {
        if let Ok(text) = pop3::status(first) {
            assert!(text.starts_with("+OK"));
            if let Some(stamp) = pop3::apop_timestamp(&text) {
                assert!(stamp.starts_with('<') && stamp.ends_with('>') && text.contains(&stamp), "{stamp:?}");
            }
            let _ = pop3::stat_counts(&text);
        }
    }
    let mut out = Vec::new();
    let mut written = 0;
    let mut expected = Vec::new();
    for line in lines {
        match pop3::multiline_line(&mut out, &mut written, line, MAX) {
            Ok(true) => break,
            Ok(false) => {
                expected.extend_from_slice(line.strip_prefix(b".").filter(|l| l.starts_with(b".")).unwrap_or(line));
                assert_eq!(out, expected);
            }
            Err(_) => {
                assert!(out.len() <= MAX);
                break;
            }
        }
    }
    assert!(out.len() <= MAX);
    for line in pop3::multiline_text(&out) {
        let _ = pop3::list_entry(&line);
        if let Ok((_, uid)) = pop3::uidl_entry(&line) {
            assert!(!uid.is_empty() && uid.len() <= pop3::MAX_UIDL && uid.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        }
    }
}

/// IMAP server responses through imap-proto (what async-imap parses them with), response after
/// response as async-imap's stream does; a response cut short must read as incomplete or as
/// the same response. Then our own IMAP text handling on the same bytes: mailbox names in
/// modified UTF-7 (round trip), flags, UID sets.
pub fn imap_response(data: &[u8]) {
    // imap-proto 0.17 slices the text after a response code at byte 1, assuming a space there:
    // a non-ASCII character right after `]` panics (`A1 OK [ALERT]\u{e9}`). The pollers catch
    // that panic (see `fetch::run_imap`); here such inputs skip imap-proto so the fuzzer can go
    // on looking for other bugs.
    let known_panic = data.windows(2).any(|w| w[0] == b']' && w[1] >= 0x80);
    let mut rest = if known_panic { &[][..] } else { data };
    for _ in 0..32 {
        match imap_proto::Response::parse(rest) {
            Ok((remaining, response)) => {
                assert!(remaining.len() < rest.len(), "a response consumed nothing");
                let consumed = rest.len() - remaining.len();
                // A read that stopped early: async-imap parses what it has, and waits for more
                // only when the parser says the input is incomplete. Anything else (another
                // response, an error) would depend on where the server's bytes were split.
                for cut in [consumed - 1, consumed / 2] {
                    let early = imap_proto::Response::parse(&rest[..cut]);
                    assert!(
                        matches!(&early, Err(e) if e.is_incomplete()),
                        "the first {cut} of {consumed} bytes of a response parse as {early:?}"
                    );
                }
                let _ = response.into_owned();
                rest = remaining;
                if rest.is_empty() {
                    break;
                }
            }
            Err(_) => break,
        }
    }

    let text = String::from_utf8_lossy(data);
    let encoded = imap::mutf7(&text);
    assert!(encoded.chars().all(|c| (' '..='~').contains(&c)), "{encoded:?}");
    assert_eq!(mutf7_decode(&encoded).as_deref(), Some(&*text), "modified UTF-7 round trip of {text:?}");
    let delimiter = text.chars().next().map(String::from);
    let name = imap::server_name(&text, delimiter.as_deref());
    assert!(name.chars().all(|c| (' '..='~').contains(&c)), "{name:?}");
    for word in text.split(' ') {
        if let Some(flag) = imap::valid_flag(word) {
            let atom = flag.bytes().all(|b| b > 0x20 && b < 0x7f && !b"(){%*\"]".contains(&b));
            assert!(atom && !flag.is_empty() && flag.len() <= 200, "{flag:?}");
            assert!(
                !flag.contains('\\') || flag.starts_with('\\') && flag[1..].bytes().all(|b| b.is_ascii_alphabetic())
            );
        }
    }
    let uids: Vec<u32> =
        data.chunks_exact(4).take(64).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % 4096).collect();
    let set = imap::uid_set(&uids);
    let mut want = uids.clone();
    want.sort_unstable();
    want.dedup();
    assert_eq!(expand_uid_set(&set), want, "{set:?}");
}

/// Decodes modified UTF-7 (RFC 3501 §5.1.3); `None` when malformed.
fn mutf7_decode(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after.find('-')?;
        if end == 0 {
            out.push('&');
        } else {
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD.decode(after[..end].replace(',', "/")).ok()?;
            if bytes.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = bytes.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            out.push_str(&String::from_utf16(&units).ok()?);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn expand_uid_set(set: &str) -> Vec<u32> {
    if set.is_empty() {
        return Vec::new();
    }
    set.split(',')
        .flat_map(|part| match part.split_once(':') {
            Some((a, b)) => a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap(),
            None => {
                let n = part.parse::<u32>().unwrap();
                n..=n
            }
        })
        .collect()
}

/// The spool segment decoder (a crash-damaged or foreign file must give an error, not a panic or
/// a huge allocation); what it decodes re-encodes and decodes to the same messages.
pub fn spool_record(data: &[u8]) {
    let Ok(messages) = crate::spool::fuzz_decode(data) else { return };
    let encoded = crate::spool::fuzz_encode(&messages);
    let again = crate::spool::fuzz_decode(&encoded).expect("re-encoded segment decodes");
    assert_eq!(messages.len(), again.len());
    for (a, b) in messages.iter().zip(&again) {
        assert_eq!(a.body, b.body);
        let (ra, rb) = (serde_json::to_string(&a.record).unwrap(), serde_json::to_string(&b.record).unwrap());
        assert_eq!(ra, rb);
    }
}

/// The config loader on any text (parse, validate, locate the error); a config it accepts
/// written back as TOML reads back to the same config.
pub fn config(data: &[u8]) {
    // The loader reads the file with `read_to_string`: only UTF-8 text gets this far.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = match crate::config::load_str(text, "fuzz.toml") {
        Ok(config) => config,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let Ok(written) = toml::to_string(&config) else { return };
    let reread = crate::config::load_str(&written, "written.toml")
        .unwrap_or_else(|e| panic!("a loaded config written back does not load: {e}\n{written}"));
    assert_eq!(toml::to_string(&reread).ok().as_deref(), Some(&*written), "config changed on a round trip");
}

/// The authentication code on any message: mail-auth's parse of DKIM/ARC headers and body
/// hashes (no panic), the removal of `Authentication-Results` fields claiming our id (none
/// left, nothing else lost), and the header values written from client names (one line of
/// printable ASCII) and read back.
pub fn auth_results(data: &[u8]) {
    use crate::proto::authres::{claims_authserv_id, parse_header, value};
    const ID: &str = "mx.example.org";
    let _ = mail_auth::AuthenticatedMessage::parse_with_opts(data, None, false);
    let _ = claims_authserv_id(data, ID);
    let text = String::from_utf8_lossy(data);
    let _ = parse_header(&text);
    let written = value(&text);
    assert!(written.bytes().all(|b| b == b' ' || b.is_ascii_graphic()), "{written:?}");
    if let Some(cleaned) = crate::verify::message::without_forged_results(data, ID) {
        assert!(cleaned.len() < data.len());
        for (name, start, end) in headers::fields(&cleaned) {
            let line = &cleaned[start..end];
            let value = memchr::memchr(b':', line).map_or(&b""[..], |colon| &line[colon + 1..]);
            assert!(
                !(name.eq_ignore_ascii_case("Authentication-Results") && claims_authserv_id(value, ID)),
                "a forged field survived: {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
