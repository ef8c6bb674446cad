//! Auto-replies (`msg.reply`) and vacation notices (`msg.vacation`): when not to answer
//! (RFC 3834 §2, RFC 5230 §4.5), how the answer looks, and the per-sender memory that answers
//! a person once per `days`.
//!
//! The checks are pure functions of the message and envelope, so `mailflow test` shows the
//! same suppression the daemon would apply.
//!
//! Security: the message is untrusted, but its headers can only suppress an answer, never
//! cause one. A message carrying the `X-Loop` this daemon writes (its host name, on forwards
//! and redirects) has been through here before and is never answered: a loop stops.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mail_builder::headers::raw::Raw;
use mail_builder::MessageBuilder;
use redb::{ReadableTable, TableDefinition};

use crate::message::MessageView;
use crate::script::decision::{ReplySpec, VacationSpec};

/// Vacation memory: `"<recipient>\0<sender>"` → unix seconds of the last notice.
const VACATION: TableDefinition<&str, u64> = TableDefinition::new("vacation");

/// Why no auto-reply goes out. Logged, and printed by `mailflow test`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Suppressed {
    #[error("the envelope sender is null (a bounce)")]
    NullSender,
    #[error("the sender {0} is a mailer daemon, list owner or request address")]
    RobotSender(String),
    #[error("the sender {0} is this daemon's own address")]
    OwnAddress(String),
    #[error("the sender {0} is the recipient's own address")]
    ToSelf(String),
    #[error("the message has Auto-Submitted: {0}")]
    AutoSubmitted(String),
    #[error("the message has X-Loop: {0} (this daemon's own: a mail loop)")]
    Looped(String),
    #[error("the message has a {0} header (mailing list)")]
    ListHeader(&'static str),
    #[error("the message has Precedence: {0}")]
    Precedence(String),
    #[error("the recipient is not in To or Cc (nor in addresses)")]
    NotAddressed,
    #[error("{sender} was already answered in the last {days} day(s)")]
    AlreadyAnswered { sender: String, days: i64 },
}

/// RFC 3834's rules shared by reply and vacation. `own` lists this daemon's addresses
/// (`mailer-daemon@<hostname>`, ...): their domains are the names an `X-Loop` of ours carries.
pub fn check_reply(msg: &MessageView, sender: &str, own: &[String]) -> Result<(), Suppressed> {
    if sender.is_empty() {
        return Err(Suppressed::NullSender);
    }
    let local = sender.rsplit_once('@').map_or(sender, |(l, _)| l).to_ascii_lowercase();
    if local == "mailer-daemon" || local.starts_with("owner-") || local.ends_with("-request") {
        return Err(Suppressed::RobotSender(sender.to_string()));
    }
    if own.iter().any(|a| a.eq_ignore_ascii_case(sender)) {
        return Err(Suppressed::OwnAddress(sender.to_string()));
    }
    let auto = msg.header("Auto-Submitted");
    let auto_value = auto.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !auto.is_empty() && auto_value != "no" {
        return Err(Suppressed::AutoSubmitted(auto.trim().to_string()));
    }
    if let Some(marker) = own_x_loop(msg, own) {
        return Err(Suppressed::Looped(marker));
    }
    if msg.has_header("List-Id") {
        return Err(Suppressed::ListHeader("List-Id"));
    }
    if msg.has_header("List-Unsubscribe") {
        return Err(Suppressed::ListHeader("List-Unsubscribe"));
    }
    let precedence = msg.header("Precedence").trim().to_ascii_lowercase();
    if matches!(precedence.as_str(), "bulk" | "list" | "junk") {
        return Err(Suppressed::Precedence(precedence));
    }
    Ok(())
}

/// The first `X-Loop` (any occurrence, any case) naming one of this daemon's names: the
/// domains of `own`, among them `[smtp] hostname`, the value forwards and redirects carry.
fn own_x_loop(msg: &MessageView, own: &[String]) -> Option<String> {
    if !msg.has_header("X-Loop") {
        return None;
    }
    let names: Vec<&str> = own.iter().filter_map(|a| a.rsplit_once('@').map(|(_, domain)| domain)).collect();
    msg.headers("X-Loop")
        .into_iter()
        .map(|value| value.trim().to_string())
        .find(|value| names.iter().any(|name| name.eq_ignore_ascii_case(value)))
}

/// Reply rules plus vacation's own: the recipient (or one of `addresses`) must be named in
/// To or Cc, so Bcc'd and list mail gets no notice.
pub fn check_vacation(
    msg: &MessageView,
    sender: &str,
    rcpt: &str,
    spec: &VacationSpec,
    own: &[String],
) -> Result<(), Suppressed> {
    check_reply(msg, sender, own)?;
    // Never a notice to oneself (RFC 5230 §4.6: not to the user's own addresses).
    if std::iter::once(rcpt).chain(spec.addresses.iter().map(String::as_str)).any(|a| a.eq_ignore_ascii_case(sender)) {
        return Err(Suppressed::ToSelf(sender.to_string()));
    }
    let named = |a: &String| msg.to().iter().chain(msg.cc()).any(|t| t.eq_ignore_ascii_case(a));
    let mine: Vec<String> = std::iter::once(rcpt.to_string()).chain(spec.addresses.iter().cloned()).collect();
    if !mine.iter().any(named) {
        return Err(Suppressed::NotAddressed);
    }
    Ok(())
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Whether `rcpt` already answered `sender` within `days`; if not, remembers this answer now.
/// One write transaction, so two copies of a message cannot both answer.
pub fn vacation_due(store: &Arc<redb::Database>, rcpt: &str, sender: &str, days: i64) -> Result<bool, String> {
    let key = format!("{}\0{}", rcpt.to_ascii_lowercase(), sender.to_ascii_lowercase());
    let txn = store.begin_write().map_err(|e| e.to_string())?;
    let due = {
        let mut table = txn.open_table(VACATION).map_err(|e| e.to_string())?;
        let last = table.get(key.as_str()).map_err(|e| e.to_string())?.map(|v| v.value());
        let period = u64::try_from(days.max(1)).unwrap_or(1) * 86_400;
        let due = last.is_none_or(|t| now().saturating_sub(t) >= period);
        if due {
            table.insert(key.as_str(), now()).map_err(|e| e.to_string())?;
        }
        due
    };
    txn.commit().map_err(|e| e.to_string())?;
    Ok(due)
}

/// The answer: from `from` to the envelope sender, `Auto-Submitted: auto-replied`, threaded
/// with In-Reply-To and References, subject `Auto: <original>` unless the script gave one.
pub fn build(
    original: &MessageView,
    from: &str,
    to: &str,
    subject: Option<&str>,
    body: &str,
) -> std::io::Result<Vec<u8>> {
    let subject = match subject {
        Some(s) => s.to_string(),
        None => format!("Auto: {}", original.subject()),
    };
    let mut builder = MessageBuilder::new()
        .from(from.to_string())
        .to(to.to_string())
        .subject(subject)
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .text_body(body.to_string());
    if !original.message_id().is_empty() {
        let mut references: Vec<String> = original
            .header("References")
            .split_whitespace()
            .map(|r| r.trim_matches(['<', '>']).to_string())
            .filter(|r| !r.is_empty())
            .collect();
        // No References: the parent's single In-Reply-To id stands in (RFC 5322 §3.6.4).
        let parent_header = original.header("In-Reply-To");
        let in_reply_to: Vec<&str> = parent_header.split_whitespace().collect();
        if references.is_empty() && in_reply_to.len() == 1 {
            let parent = in_reply_to[0].trim_matches(['<', '>']);
            if !parent.is_empty() {
                references.push(parent.to_string());
            }
        }
        references.push(original.message_id().to_string());
        builder = builder.in_reply_to(original.message_id().to_string()).references(references);
    }
    builder.write_to_vec()
}

/// `msg.reply(...)` resolved to its sender address (`from`, else the recipient).
pub fn reply_from(spec: &ReplySpec, rcpt: &str) -> String {
    spec.from.clone().unwrap_or_else(|| rcpt.to_string())
}

/// The daemon's own addresses (`mailer-daemon@`, `postmaster@` its host name, `mailer-daemon@`
/// each local domain): auto-replies never answer them. `mailflow test` uses the same list.
pub fn own_addresses(hostname: &str, local_domains: &[String]) -> Vec<String> {
    let mut own = vec![format!("mailer-daemon@{hostname}"), format!("postmaster@{hostname}")];
    for domain in local_domains {
        own.push(format!("mailer-daemon@{domain}"));
    }
    own
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(text: &str) -> MessageView {
        MessageView::new(Arc::new(text.replace('\n', "\r\n").into_bytes()))
    }

    const PLAIN: &str = "From: ann@x.org\nTo: me@example.org\nSubject: hi\nMessage-ID: <m1@x.org>\n\nbody\n";

    #[test]
    fn suppression_rules() {
        let own = vec!["mailer-daemon@mx.example.org".to_string()];
        assert_eq!(check_reply(&view(PLAIN), "", &own), Err(Suppressed::NullSender));
        assert!(matches!(check_reply(&view(PLAIN), "MAILER-DAEMON@x.org", &own), Err(Suppressed::RobotSender(_))));
        assert!(matches!(check_reply(&view(PLAIN), "owner-list@x.org", &own), Err(Suppressed::RobotSender(_))));
        assert!(matches!(check_reply(&view(PLAIN), "list-request@x.org", &own), Err(Suppressed::RobotSender(_))));
        assert!(check_reply(&view(PLAIN), "mailer-daemon@mx.example.org", &own).is_err());
        let auto = format!("Auto-Submitted: auto-generated\n{PLAIN}");
        assert!(matches!(check_reply(&view(&auto), "ann@x.org", &own), Err(Suppressed::AutoSubmitted(_))));
        let no = format!("Auto-Submitted: no\n{PLAIN}");
        assert_eq!(check_reply(&view(&no), "ann@x.org", &own), Ok(()));
        let list = format!("List-Id: <l.x.org>\n{PLAIN}");
        assert_eq!(check_reply(&view(&list), "ann@x.org", &own), Err(Suppressed::ListHeader("List-Id")));
        let unsub = format!("List-Unsubscribe: <mailto:u@x.org>\n{PLAIN}");
        assert_eq!(check_reply(&view(&unsub), "ann@x.org", &own), Err(Suppressed::ListHeader("List-Unsubscribe")));
        for p in ["bulk", "list", "junk", "Bulk"] {
            let prec = format!("Precedence: {p}\n{PLAIN}");
            assert!(matches!(check_reply(&view(&prec), "ann@x.org", &own), Err(Suppressed::Precedence(_))));
        }
        assert_eq!(check_reply(&view(PLAIN), "ann@x.org", &own), Ok(()));
    }

    #[test]
    fn our_own_x_loop_is_never_answered() {
        let own = super::own_addresses("mx.example.org", &["example.org".to_string()]);
        let spec = VacationSpec { days: 7, subject: None, body: "away".into(), from: None, addresses: vec![] };
        for header in [
            "X-Loop: mx.example.org",
            "x-loop:   MX.Example.ORG  ",
            "X-Loop: someone-else.example\nX-LOOP: mx.example.org",
        ] {
            let looped = format!("{header}\n{PLAIN}");
            let checked = check_reply(&view(&looped), "ann@x.org", &own);
            assert!(
                matches!(&checked, Err(Suppressed::Looped(v)) if v.eq_ignore_ascii_case("mx.example.org")),
                "{header}: {checked:?}"
            );
            assert!(matches!(
                check_vacation(&view(&looped), "ann@x.org", "me@example.org", &spec, &own),
                Err(Suppressed::Looped(_))
            ));
        }
        // Someone else's loop marker (or a look-alike) does not stop an answer.
        for header in ["X-Loop: other.example", "X-Loop: mx.example.org.evil", "X-Loop-Id: mx.example.org"] {
            let other = format!("{header}\n{PLAIN}");
            assert_eq!(check_reply(&view(&other), "ann@x.org", &own), Ok(()), "{header}");
        }
    }

    #[test]
    fn vacation_needs_the_recipient_addressed() {
        let spec = VacationSpec { days: 7, subject: None, body: "away".into(), from: None, addresses: vec![] };
        assert_eq!(check_vacation(&view(PLAIN), "ann@x.org", "me@example.org", &spec, &[]), Ok(()));
        assert_eq!(
            check_vacation(&view(PLAIN), "ann@x.org", "other@example.org", &spec, &[]),
            Err(Suppressed::NotAddressed)
        );
        let alias = VacationSpec { addresses: vec!["me@example.org".into()], ..spec.clone() };
        assert_eq!(check_vacation(&view(PLAIN), "ann@x.org", "other@example.org", &alias, &[]), Ok(()));
        // Mail from oneself (or one of one's addresses) gets no notice.
        assert!(matches!(
            check_vacation(&view(PLAIN), "Me@Example.org", "me@example.org", &spec, &[]),
            Err(Suppressed::ToSelf(_))
        ));
        assert!(matches!(
            check_vacation(&view(PLAIN), "me@example.org", "other@example.org", &alias, &[]),
            Err(Suppressed::ToSelf(_))
        ));
    }

    #[test]
    fn vacation_memory() {
        let store =
            Arc::new(redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap());
        assert!(vacation_due(&store, "me@x", "ann@y", 7).unwrap());
        assert!(!vacation_due(&store, "me@x", "ANN@y", 7).unwrap());
        assert!(vacation_due(&store, "me@x", "bob@y", 7).unwrap());
    }

    #[test]
    fn reply_headers() {
        let raw = build(&view(PLAIN), "me@example.org", "ann@x.org", None, "I am away").unwrap();
        let text = String::from_utf8(raw).unwrap();
        assert!(text.contains("Auto-Submitted: auto-replied\r\n"), "{text}");
        assert!(text.contains("Subject: Auto: hi\r\n"), "{text}");
        assert!(text.contains("In-Reply-To: <m1@x.org>\r\n"), "{text}");
        assert!(text.contains("References: <m1@x.org>\r\n"), "{text}");
        assert!(text.contains("I am away"), "{text}");
        let child = format!("In-Reply-To: <m0@x.org>\n{PLAIN}");
        let text = String::from_utf8(build(&view(&child), "me@example.org", "ann@x.org", None, "x").unwrap()).unwrap();
        assert!(text.contains("References: <m0@x.org> <m1@x.org>\r\n"), "{text}");
    }
}
