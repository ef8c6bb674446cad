//! Unit tests of the message view.

use super::*;

/// The Subject and From fast paths against mail-parser, on plain values and on thousands of
/// generated ones built from the characters that matter to the two parsers.
#[test]
fn fast_paths_agree_with_mail_parser() {
    let mut values: Vec<String> = [
        "test",
        " test ",
        "Re: hello  world",
        "a\tb",
        "=?UTF-8?Q?x?=",
        "x =? y",
        "(comment) x",
        "\"q\" x",
        "sender@bench.test",
        "<sender@bench.test>",
        " <a.b+c-d_e@x-y.example> ",
        "a..b@x",
        ".a@x",
        "a@x.",
        "a@",
        "@x",
        "a@b@c",
        "<a@x",
        "a@x>",
        "Name <a@x>",
        "a@x (c)",
        "A@X.ORG",
        "",
        "   ",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let alphabet = b"aZ9 .@<>()\"\\,;:=?-_+\t!#%&'*/^`{|}~[]";
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..5000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 24) as usize;
        let mut value = String::new();
        let mut r = seed;
        for _ in 0..len {
            r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            value.push(alphabet[(r >> 33) as usize % alphabet.len()] as char);
        }
        // Address-shaped too: parts from a smaller alphabet, bare or in angle brackets.
        let part = |r: &mut u64| -> String {
            let set = b"aZ9._+-()\" ,;:<>@";
            (0..1 + (*r % 6) as usize)
                .map(|_| {
                    *r = r.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    set[(*r >> 33) as usize % set.len()] as char
                })
                .collect()
        };
        let address = format!("{}@{}", part(&mut r), part(&mut r));
        values.push(if seed.is_multiple_of(2) { address } else { format!("<{address}>") });
        values.push(value);
    }
    for value in values {
        let raw = format!("Subject: {value}\r\nFrom: {value}\r\nTo: x@y\r\n\r\nbody\r\n");
        let view = MessageView::new(Arc::new(raw.into_bytes()));
        let slow_subject = view.decode_fields(HeaderName::Subject, |m| m.subject().unwrap_or_default().to_string());
        let slow_from =
            view.decode_fields(HeaderName::From, |m| addresses(m.from()).into_iter().next().unwrap_or_default());
        assert_eq!(view.subject(), slow_subject, "Subject: {value:?}");
        assert_eq!(view.from(), slow_from, "From: {value:?}");
    }
}

#[test]
fn lazy_view_reads_fields() {
    let raw = b"From: Ann <ann@example.org>\r\nTo: b@example.org, c@example.org\r\nSubject: =?UTF-8?Q?h=C3=A9llo?=\r\nList-Id: <list.example.org>\r\nX-Folded: a\r\n b\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\r\nCc: <d@example.org>\r\n\r\nbody\r\n";
    let view = MessageView::new(Arc::new(raw.to_vec()));
    assert_eq!(view.subject(), "héllo");
    assert_eq!(view.header("Subject"), "héllo");
    assert_eq!(view.from(), "ann@example.org");
    assert_eq!(view.to(), ["b@example.org", "c@example.org"]);
    assert_eq!(view.cc(), ["d@example.org"]);
    assert_eq!(view.date(), "2026-11-27T10:00:00Z");
    assert_eq!(view.message_id(), "");
    assert_eq!(view.header("list-id"), "<list.example.org>");
    assert_eq!(view.header("X-Folded"), "a b");
    assert!(view.has_header("LIST-ID"));
    assert!(!view.has_header("X-None"));
    assert_eq!(view.body().text.trim(), "body");
}
