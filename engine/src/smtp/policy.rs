//! What a listener's role allows: submission listeners want STARTTLS before AUTH (on a
//! `starttls` listener) and AUTH before MAIL; an authenticated user may only use the envelope
//! senders and From addresses `auth_users` lists for them; bounces to SRS addresses are
//! verified at RCPT and turned back into the original sender.
//!
//! Input: the session's state and the client's addresses. Output: a refusal [`Reply`] or the
//! address to use. Security: every check here is about untrusted input; a forged SRS address
//! gets 550 at RCPT, so no bounce is ever sent for it (no backscatter).

use super::reply::Reply;
use super::session::{Session, SessionStream};
use crate::config::{ListenerRole, ListenerTls};
use crate::message::MessageView;
use crate::proto::srs::SrsError;

impl<S: SessionStream> Session<S> {
    /// Whether this client's mail is checked (SPF, iprev, DKIM, DMARC, ARC): mail from the
    /// internet is; a submission listener's and an authenticated client's is not (it is ours).
    pub(super) fn verifies(&self) -> bool {
        self.listener.role == ListenerRole::Mx && self.auth_user.is_none()
    }

    /// AUTH needs TLS: always, unless `allow_plain_auth`, and on a submission listener with
    /// `tls = "starttls"` even then (credentials never cross in clear there).
    pub(super) fn auth_needs_tls(&self) -> bool {
        let submission_starttls =
            self.listener.role == ListenerRole::Submission && self.listener.tls == ListenerTls::Starttls;
        !self.config.smtp.allow_plain_auth || submission_starttls
    }

    /// The refusal of MAIL FROM:<sender> by the listener's policy, if any: 530 before AUTH on
    /// submission, 553 for a sender the authenticated user may not use.
    pub(super) fn mail_policy(&self, sender: &str) -> Option<Reply> {
        if self.listener.role == ListenerRole::Submission && self.auth_user.is_none() {
            return Some(Reply::new(530, "5.7.0", "Authentication required"));
        }
        let user = self.auth_user.as_deref()?;
        let entry = self.config.smtp.auth_users.get(user)?;
        if entry.may_send_as(sender) {
            return None;
        }
        tracing::warn!(user = %user, sender = %sender, "sender not allowed for this user");
        Some(Reply::new(553, "5.7.1", format!("Sender address <{sender}> not allowed for {user}")))
    }

    /// The recipient to use for `rcpt` when it is an SRS address of ours: the original sender
    /// it stands for (`Ok`), or the 550 for a forged or expired one. `None`: not SRS.
    pub(super) fn srs_recipient(&self, rcpt: &str) -> Option<Result<String, Reply>> {
        let srs = self.shared.srs.as_ref()?;
        if !srs.is_srs(rcpt) {
            return None;
        }
        Some(match srs.reverse(rcpt, crate::spool::unix_now()) {
            Ok(original) => {
                tracing::info!(rcpt = %rcpt, to = %original, "SRS address: sent back to the original sender");
                Ok(original)
            }
            Err(e @ (SrsError::BadHash | SrsError::Expired | SrsError::Malformed | SrsError::NotSrs)) => {
                tracing::warn!(rcpt = %rcpt, error = %e, "SRS address refused");
                Err(Reply::new(550, "5.1.1", format!("Invalid SRS address: {e}")))
            }
        })
    }

    /// The refusal at end of DATA of a message whose From addresses the authenticated user may
    /// not use, if any.
    pub(super) fn header_from_policy(&self, view: &MessageView) -> Option<Reply> {
        let user = self.auth_user.as_deref()?;
        let entry = self.config.smtp.auth_users.get(user)?;
        if entry.addresses().is_empty() {
            return None;
        }
        // One From header naming one address: a second one could show another sender.
        let address = view.from();
        let single = view.headers("From").len() == 1 && !view.header("From").contains(',');
        if address.is_empty() || !single {
            return Some(Reply::new(550, "5.7.1", "Message needs exactly one From address"));
        }
        if entry.may_send_as(address) {
            return None;
        }
        tracing::warn!(user = %user, from = %address, "From address not allowed for this user");
        Some(Reply::new(550, "5.7.1", format!("From address <{address}> not allowed for {user}")))
    }
}
