//! Bounces: an RFC 3464 delivery status notification (`multipart/report;
//! report-type=delivery-status`) to the original envelope sender, from the null sender,
//! naming each failed recipient and the remote server's answer.

use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::MimePart;
use mail_builder::MessageBuilder;

use super::entry::{QueueEntry, RcptState};
use crate::message::headers;

/// Builds the DSN for `failed` recipients of `entry`, whose message was `original`.
pub fn build(hostname: &str, entry: &QueueEntry, failed: &[&RcptState], original: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut text = format!(
        "This is the mail system at host {hostname}.\r\n\r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         It has been returned to you; the reasons are below.\r\n\r\n"
    );
    let mut status = format!("Reporting-MTA: dns; {hostname}\r\nX-Mailflow-Queue-ID: {}\r\n", entry.id);
    for rcpt in failed {
        let error = rcpt.last_error.replace(['\r', '\n'], " ");
        text.push_str(&format!("<{}>: {}\r\n", rcpt.addr, error));
        let code = status_code(&error);
        let diagnostic = match smtp_reply(&error) {
            Some(reply) => format!("smtp; {reply}"),
            None => format!("X-Mailflow; {error}"),
        };
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n{}\r\n",
            ascii(&rcpt.addr),
            code,
            fold(&format!("Diagnostic-Code: {}", ascii(&diagnostic)))
        ));
    }
    let header_end = headers::body_offset(original);
    let original_headers = String::from_utf8_lossy(&original[..header_end]).into_owned();
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", text),
            // A header-like block that parsers read line by line: plain 7bit, folded, never
            // quoted-printable (RFC 3464 §2.1).
            MimePart::new("message/delivery-status", status).transfer_encoding("7bit"),
            MimePart::new("text/rfc822-headers", original_headers),
        ],
    );
    let daemon = format!("MAILER-DAEMON@{hostname}");
    MessageBuilder::new()
        .from(("Mail Delivery System", daemon.as_str()))
        .to(entry.sender.clone())
        .subject("Undelivered Mail Returned to Sender")
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(report)
        .write_to_vec()
}

/// The remote server's reply (`550 5.1.1 text`) inside a transport error
/// (`permanent error (550): 5.1.1 text`), if the error was an SMTP reply.
fn smtp_reply(error: &str) -> Option<String> {
    let start = error.find("error (")? + "error (".len();
    let rest = &error[start..];
    let code = rest.get(..3).filter(|c| c.bytes().all(|b| b.is_ascii_digit()))?;
    let text = rest[3..].strip_prefix("):")?.trim();
    Some(if text.is_empty() { code.to_string() } else { format!("{code} {text}") })
}

/// US-ASCII only (a delivery-status part is 7bit): anything else becomes `?`.
fn ascii(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii() && !c.is_ascii_control() { c } else { '?' }).collect()
}

/// Folds a `Name: value` field at spaces so lines stay near 78 characters, and cuts it short
/// of SMTP's 998-octet line limit when there is no space to fold at.
fn fold(field: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in field.split(' ').filter(|w| !w.is_empty()) {
        if !line.is_empty() && line.len() + 1 + word.len() > 78 {
            out.push_str(&line);
            out.push_str("\r\n");
            line = String::from(" ");
        } else if !line.is_empty() && line != " " {
            line.push(' ');
        }
        line.push_str(&word[..word.len().min(900)]);
    }
    out.push_str(&line);
    out
}

/// The enhanced status code in a reply text (`550 5.1.1 ...`), else a generic permanent one.
fn status_code(error: &str) -> String {
    error
        .split_whitespace()
        .find(|w| {
            let parts: Vec<&str> = w.split('.').collect();
            parts.len() == 3
                && matches!(parts[0], "4" | "5")
                && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|s| match s.strip_prefix('4') {
            Some(rest) => format!("5{rest}"),
            None => s.to_string(),
        })
        .unwrap_or_else(|| "5.0.0".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::entry::{EntryKind, RcptStatus};

    #[test]
    fn dsn_names_recipient_and_reply() {
        let entry = QueueEntry {
            id: "Q1".into(),
            kind: EntryKind::Forward,
            sender: "ann@x.org".into(),
            recipients: vec![],
            attempts: 1,
            created: 0,
            next_try: 0,
            last_error: String::new(),
            origin: "O1".into(),
        };
        let failed = RcptState {
            addr: "bob@y.org".into(),
            status: RcptStatus::Failed,
            last_error: "permanent error (550): 5.1.1 no such user".into(),
        };
        let raw =
            build("mx.example.org", &entry, &[&failed], b"Subject: hi\r\nFrom: ann@x.org\r\n\r\nbody\r\n").unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(text.contains("multipart/report"), "{text}");
        assert!(
            text.contains("report-type=\"delivery-status\"") || text.contains("report-type=delivery-status"),
            "{text}"
        );
        assert!(text.contains("Final-Recipient: rfc822; bob@y.org"), "{text}");
        assert!(text.contains("Status: 5.1.1"), "{text}");
        assert!(text.contains("no such user"), "{text}");
        assert!(text.contains("Subject: hi"), "{text}");
        assert!(!text.contains("body\r\n--"), "the original body must not be returned");
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"), "{text}");
    }

    #[test]
    fn diagnostic_code_is_the_smtp_reply_or_a_mailflow_text() {
        assert_eq!(
            smtp_reply("permanent error (550): 5.1.1 <b@y.org>: no such user").as_deref(),
            Some("550 5.1.1 <b@y.org>: no such user")
        );
        assert_eq!(
            smtp_reply("gave up after 3 attempts (max_age): transient error (451): 4.3.0 later").as_deref(),
            Some("451 4.3.0 later")
        );
        assert_eq!(smtp_reply("domain d accepts no mail (null MX, RFC 7505)"), None);
    }

    #[test]
    fn long_fields_are_folded() {
        let long = format!("Diagnostic-Code: smtp; 550 {}", "word ".repeat(40));
        let folded = fold(&long);
        assert!(folded.lines().count() > 1);
        assert!(folded.split("\r\n").all(|l| l.len() <= 78), "{folded}");
        assert!(folded.split("\r\n").skip(1).all(|l| l.starts_with(' ')));
        assert_eq!(folded.replace("\r\n", ""), long.trim_end());
        assert_eq!(ascii("caf\u{e9}\u{7}"), "caf??");
    }
}
