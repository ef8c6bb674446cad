//! The outbound side of a spooled message: recipients in other domains (authenticated relay,
//! `ctx.add_rcpt`), and the scripts' `forward`, `redirect`, `reply` and `vacation` actions,
//! each turned into an outbound queue entry — or suppressed, with the reason logged.

use super::Deliverer;
use crate::message::stored::Tail;
use crate::message::MessageView;
use crate::outbound::autoreply::{self, Suppressed};
use crate::outbound::{EntryKind, Seal};
use crate::script::Action;
use crate::spool::SpooledMessage;

/// What [`carry_out`] did.
pub struct Outcome {
    /// False when something could not be queued: the spool keeps the message for a retry.
    pub queued_ok: bool,
    pub queued: usize,
    /// A redirect was refused (mail loop): the message is delivered locally instead.
    pub redirect_suppressed: bool,
}

/// What the actions of one message act on, wherever the message came from: the spool (SMTP)
/// or a poller, which has no spool record.
pub struct Outgoing<'a> {
    /// What queue entry ids derive from: a spool id, or `account:uid` for a poller.
    pub id: &'a str,
    pub sender: &'a str,
    /// The envelope's recipients: those in other domains are relayed.
    pub recipients: &'a [String],
    pub actions: &'a [Action],
    /// The message; for a large one, the part before `tail`.
    pub body: &'a [u8],
    /// A large message's file: copied into the queue, never read into memory.
    pub tail: Option<&'a Tail>,
    /// The SMTP client's account, "" if none: only its relayed mail is DKIM-signed.
    pub auth_user: &'a str,
    /// The SMTP client's address, "" for a poller: ARC seals name it.
    pub remote_ip: &'a str,
}

/// [`carry_out`] for a spooled message.
pub fn carry_out_spooled(deliverer: &Deliverer, message: &SpooledMessage) -> Outcome {
    let view = match message.view() {
        Ok(view) => view,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the message file; will retry");
            return Outcome { queued_ok: false, queued: 0, redirect_suppressed: false };
        }
    };
    let record = &message.record;
    let outgoing = Outgoing {
        id: &record.id,
        sender: &record.envelope.sender,
        recipients: &record.envelope.recipients,
        actions: &record.actions,
        body: &message.body,
        tail: record.tail.as_ref(),
        auth_user: &record.envelope.auth_user,
        remote_ip: &record.envelope.remote_ip,
    };
    carry_out(deliverer, &outgoing, &view, None)
}

/// Queues what `message` asks for: relaying to other domains, forwards, redirects, replies,
/// vacation notices. `view` is the message as scripts saw it; `me` names the recipient
/// auto-replies answer for (a poller's account address); `None` means the first local
/// recipient of the envelope.
pub fn carry_out(deliverer: &Deliverer, message: &Outgoing<'_>, view: &MessageView, me: Option<&str>) -> Outcome {
    let target = &deliverer.target;
    let mut outcome = Outcome { queued_ok: true, queued: 0, redirect_suppressed: false };
    let mut queue =
        |kind: EntryKind, sender: &str, rcpts: &[String], parts: &[&[u8]], tail: Option<&Tail>, seal: Seal| {
            match deliverer.outbound.enqueue_parts(kind, sender, rcpts, parts, tail, message.id, seal) {
                Ok(id) => {
                    outcome.queued += 1;
                    let event =
                        if matches!(kind, EntryKind::Forward | EntryKind::Redirect) { "forwarded" } else { "queued" };
                    let what = format!("{:?}", kind).to_lowercase();
                    crate::trace::event(message.id, event, format!("{what} to {} queued", rcpts.join(", ")), &id);
                }
                Err(e) => {
                    crate::trace::event(message.id, "error", format!("cannot queue {kind:?} (will retry): {e}"), "");
                    tracing::error!(error = %e, kind = ?kind, "cannot queue outbound mail; will retry");
                    outcome.queued_ok = false;
                }
            }
        };
    let tail = message.tail;
    let sender = message.sender;

    let foreign: Vec<String> = message.recipients.iter().filter(|r| !target.is_local(r)).cloned().collect();
    if !foreign.is_empty() {
        // Signed only for an authenticated client: mail from the internet that a script sends
        // on (or a bounce routed back through SRS) is not ours to vouch for.
        let seal = if message.auth_user.is_empty() { Seal::None } else { Seal::Dkim };
        queue(EntryKind::Relay, sender, &foreign, &[message.body], tail, seal);
    }

    let loop_marker = target.hostname.to_ascii_lowercase();
    // Parsing the header block costs more than the rest of delivery: only when a forward asks.
    let looped = std::cell::OnceCell::new();
    let looped =
        || *looped.get_or_init(|| view.headers("X-Loop").iter().any(|v| v.trim().eq_ignore_ascii_case(&loop_marker)));
    let first_local =
        me.map(str::to_string).or_else(|| message.recipients.iter().find(|r| target.is_local(r)).cloned());
    let own = &deliverer.own;
    let mut redirect_suppressed = false;

    for action in message.actions {
        match action {
            Action::Forward { addr } | Action::Redirect { addr } => {
                let kind =
                    if matches!(action, Action::Forward { .. }) { EntryKind::Forward } else { EntryKind::Redirect };
                if looped() {
                    tracing::warn!(action = %action, reason = "mail loop: X-Loop names this host", "forward suppressed");
                    crate::trace::event(
                        message.id,
                        "suppressed",
                        format!("{action}: mail loop (X-Loop names this host)"),
                        "",
                    );
                    redirect_suppressed |= kind == EntryKind::Redirect;
                    continue;
                }
                let x_loop = format!("X-Loop: {}\r\n", target.hostname);
                let sender = deliverer.forward_sender_for(sender);
                let seal = Seal::Arc { remote_ip: message.remote_ip.parse().ok() };
                queue(kind, &sender, std::slice::from_ref(addr), &[x_loop.as_bytes(), message.body], tail, seal);
            }
            Action::Reply(spec) => {
                let Some(rcpt) = first_local.as_deref() else { continue };
                match autoreply::check_reply(view, sender, own) {
                    Err(reason) => log_suppressed(message.id, "reply", &reason),
                    Ok(()) => {
                        let from = autoreply::reply_from(spec, rcpt);
                        match autoreply::build(view, &from, sender, spec.subject.as_deref(), &spec.body) {
                            Ok(bytes) => {
                                queue(EntryKind::Reply, "", &[sender.to_string()], &[&bytes], None, Seal::Dkim)
                            }
                            Err(e) => tracing::error!(error = %e, "cannot build the reply"),
                        }
                    }
                }
            }
            Action::Vacation(spec) => {
                let Some(rcpt) = first_local.as_deref() else { continue };
                let checked = autoreply::check_vacation(view, sender, rcpt, spec, own).and_then(|()| {
                    match autoreply::vacation_due(&deliverer.store, rcpt, sender, spec.days) {
                        Ok(true) => Ok(()),
                        Ok(false) => Err(Suppressed::AlreadyAnswered { sender: sender.to_string(), days: spec.days }),
                        Err(e) => {
                            // Without the memory we cannot promise "once per period": stay quiet.
                            tracing::error!(error = %e, "vacation memory unavailable; no notice sent");
                            Err(Suppressed::AlreadyAnswered { sender: sender.to_string(), days: spec.days })
                        }
                    }
                });
                match checked {
                    Err(reason) => log_suppressed(message.id, "vacation", &reason),
                    Ok(()) => {
                        let from = spec.from.clone().unwrap_or_else(|| rcpt.to_string());
                        match autoreply::build(view, &from, sender, spec.subject.as_deref(), &spec.body) {
                            Ok(bytes) => {
                                queue(EntryKind::Vacation, "", &[sender.to_string()], &[&bytes], None, Seal::Dkim)
                            }
                            Err(e) => tracing::error!(error = %e, "cannot build the vacation notice"),
                        }
                    }
                }
            }
            _ => {}
        }
    }
    outcome.redirect_suppressed = redirect_suppressed;
    outcome
}

fn log_suppressed(id: &str, action: &str, reason: &Suppressed) {
    tracing::info!(action, reason = %reason, "auto-reply suppressed");
    crate::trace::event(id, "suppressed", format!("{action} not sent: {reason}"), "");
}
