//! RCPT TO: where relay control happens. Order, recipient limit, address checks, the
//! local-domains rule (no open relay), then the `rcpt_to` stage for this one recipient.

use smtp_proto::RcptTo;

use super::address::{bracketed, parse_mailbox};
use super::mail::address_reply;
use super::reply::Reply;
use super::session::{Flow, Session, SessionStream};
use crate::script::Stage;

impl<S: SessionStream> Session<S> {
    pub(super) async fn handle_rcpt(&mut self, to: RcptTo<String>, raw: &str) -> Flow {
        let Some(tx) = self.tx.as_ref() else {
            self.reply(Reply::new(503, "5.5.1", "Need MAIL before RCPT"));
            return Flow::Continue;
        };
        let config = &self.config.smtp;
        if tx.recipients.len() >= config.max_recipients {
            self.reply(Reply::new(452, "4.5.3", "Too many recipients"));
            return Flow::Continue;
        }
        let text = bracketed(raw).unwrap_or(&to.address).to_string();
        // RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted.
        let rcpt = if text.eq_ignore_ascii_case("postmaster") {
            let domain = config.local_domains.first().cloned().unwrap_or_else(|| config.hostname.clone());
            format!("postmaster@{domain}")
        } else {
            let parsed = parse_mailbox(&text, tx.utf8);
            // A bounce to one of our SRS addresses goes back to the sender it stands for.
            let srs = parsed.as_ref().ok().and_then(|m| self.srs_recipient(&m.as_string()));
            match parsed {
                Ok(_) if srs.is_some() => match srs {
                    Some(Ok(original)) => original,
                    Some(Err(reply)) => {
                        self.reply(reply);
                        return Flow::Continue;
                    }
                    None => return Flow::Continue,
                },
                // An authenticated client may send anywhere (submission); everyone else only to
                // local domains, over TLS or not.
                Ok(mailbox) if config.is_local_domain(&mailbox.domain) || self.auth_user.is_some() => {
                    mailbox.as_string()
                }
                Ok(mailbox) => {
                    tracing::info!(rcpt = %mailbox.as_string(), "relay denied");
                    self.reply(Reply::new(550, "5.7.1", "Relaying denied"));
                    return Flow::Continue;
                }
                Err(e) => {
                    self.reply(address_reply(&e, "5.1.3", "recipient"));
                    return Flow::Continue;
                }
            }
        };
        let decision = self.run_stage(Stage::RcptTo, self.context(&rcpt), None).await;
        if let Some(reply) = decision.refusal() {
            self.reply(reply);
            return Flow::Continue;
        }
        if let Some(tx) = self.tx.as_mut() {
            if !tx.recipients.iter().any(|r| r.eq_ignore_ascii_case(&rcpt)) {
                tx.recipients.push(rcpt);
            }
            tx.actions.extend(decision.actions);
        }
        self.reply(Reply::new(250, "2.1.5", "Recipient OK"));
        Flow::Continue
    }
}
