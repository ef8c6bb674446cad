//! MAIL FROM: open a transaction after checking order, address, SIZE and the `mail_from`
//! stage.

use std::borrow::Cow;

use smtp_proto::{MailFrom, MAIL_SMTPUTF8};

use super::address::{bracketed, parse_mailbox, AddressError};
use super::reply::Reply;
use super::session::{Flow, Session, SessionStream, Transaction};
use crate::script::Stage;

impl<S: SessionStream> Session<S> {
    pub(super) async fn handle_mail(&mut self, from: MailFrom<String>, raw: &str) -> Flow {
        if self.helo.is_none() {
            self.reply(Reply::new(503, "5.5.1", "Send HELO/EHLO first"));
            return Flow::Continue;
        }
        if self.tx.is_some() {
            self.reply(Reply::new(503, "5.5.1", "Nested MAIL command"));
            return Flow::Continue;
        }
        let utf8 = from.flags & MAIL_SMTPUTF8 != 0;
        let size = from.size.max(declared_size(raw));
        if (utf8 || size > 0 || from.flags != 0) && !self.esmtp {
            self.reply(Reply::new(555, "5.5.4", "MAIL parameters need EHLO"));
            return Flow::Continue;
        }
        // Each transaction runs on the newest script set (docs/scripting.md: a reload is live within a
        // second, also for a client that keeps its connection for many messages); within a
        // transaction the set stays the same from mail_from to data.
        self.scripts = self.shared.scripts.current();
        let max = self.config.smtp.max_message_size;
        if size > max {
            self.reply(Reply::new(552, "5.3.4", format!("Message size exceeds fixed limit of {max} bytes")));
            return Flow::Continue;
        }
        let text = bracketed(raw).map(Cow::Borrowed).unwrap_or(Cow::Owned(from.address.clone()));
        let sender = if text.is_empty() {
            String::new()
        } else {
            match parse_mailbox(&text, utf8) {
                Ok(mailbox) => mailbox.as_string(),
                Err(e) => {
                    self.reply(address_reply(&e, "5.1.7", "sender"));
                    return Flow::Continue;
                }
            }
        };
        if let Some(reply) = self.mail_policy(&sender) {
            self.reply(reply);
            return Flow::Continue;
        }
        self.checks.spf = match &self.shared.verifier {
            Some(verifier) if self.verifies() => {
                Box::pin(verifier.spf(self.remote_ip, self.helo.as_deref().unwrap_or(""), &sender)).await
            }
            _ => Default::default(),
        };
        self.tx = Some(Transaction { sender, utf8, ..Transaction::default() });
        let decision = self.run_stage(Stage::MailFrom, self.context(""), None).await;
        if let Some(reply) = decision.refusal() {
            self.tx = None;
            self.reply(reply);
            return Flow::Continue;
        }
        if let Some(tx) = self.tx.as_mut() {
            tx.actions.extend(decision.actions);
        }
        self.reply(Reply::new(250, "2.1.0", "Sender OK"));
        Flow::Continue
    }
}

/// The SIZE parameter as the client wrote it on the raw MAIL line. smtp-proto saturates a
/// value past `usize::MAX` but then restarts from the next digit, so `SIZE=99999999999999999999999`
/// reaches us as a small number; read the digits here, saturating for real. 0 when absent.
pub(crate) fn declared_size(raw: &str) -> usize {
    let params = raw.rsplit_once('>').map_or("", |(_, rest)| rest);
    params
        .split_ascii_whitespace()
        .filter_map(|p| p.get(..5).filter(|k| k.eq_ignore_ascii_case("SIZE=")).map(|_| &p[5..]))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .map(|v| v.parse::<usize>().unwrap_or(usize::MAX))
        .max()
        .unwrap_or(0)
}

/// The reply for an address refused by [`parse_mailbox`]; `syntax_status` is 5.1.7 (sender) or
/// 5.1.3 (recipient).
pub(crate) fn address_reply(error: &AddressError, syntax_status: &'static str, role: &str) -> Reply {
    match error {
        AddressError::SourceRoute | AddressError::Quoted | AddressError::RoutingHack => {
            Reply::new(550, "5.7.1", format!("Relaying denied: {error}"))
        }
        AddressError::NeedsSmtpUtf8 => Reply::new(553, "5.6.7", format!("Non-ASCII {role} address needs SMTPUTF8")),
        AddressError::Syntax => Reply::new(501, syntax_status, format!("Bad {role} address syntax")),
    }
}

#[cfg(test)]
mod tests {
    use super::declared_size;

    #[test]
    fn declared_size_saturates_instead_of_wrapping() {
        assert_eq!(declared_size("MAIL FROM:<a@b.c> SIZE=1000"), 1000);
        assert_eq!(declared_size("MAIL FROM:<a@b.c> body=8BITMIME size=42"), 42);
        assert_eq!(declared_size("MAIL FROM:<a@b.c> SIZE=99999999999999999999999"), usize::MAX);
        assert_eq!(declared_size("MAIL FROM:<a@b.c>"), 0);
        assert_eq!(declared_size("MAIL FROM:<> SIZE=abc"), 0);
        assert_eq!(declared_size("MAIL FROM:<j\u{f6}@b.c> SMTPUTF8 SIZE=7"), 7);
        assert_eq!(declared_size("MAIL FROM:<a@b.c> X\u{f6}\u{f6}=1 SIZE=8"), 8);
    }
}
