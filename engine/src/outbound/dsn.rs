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
        status.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\nDiagnostic-Code: smtp; {}\r\n",
            rcpt.addr, code, error
        ));
    }
    let header_end = headers::body_offset(original);
    let original_headers = String::from_utf8_lossy(&original[..header_end]).into_owned();
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        vec![
            MimePart::new("text/plain", text),
            MimePart::new("message/delivery-status", status),
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
    }
}
