//! Local delivery over LMTP (`[delivery] mode = "lmtp"`): a spooled message's local
//! recipients handed to the mail store in one transaction, each recipient's reply after the
//! final dot acted on by itself.
//!
//! Input: a spooled message, its folders (`file_into`) and the batch's connection
//! ([`Session`]). One RCPT per recipient and folder (`user+Folder@domain`, see
//! [`crate::lmtp::detail_address`]). Output: 2xx settles that recipient; 5xx bounces it (a DSN
//! to the sender through the outbound queue) and settles it; 4xx, a refused connection or a
//! timeout leave it pending, and the spool keeps the message until every recipient is
//! settled. Settled recipients are remembered per spool id ([`LmtpTarget`]), so a retry sends
//! only the pending ones. A recipient still deferred after `[outbound] max_age` is bounced.
//!
//! Limits: the memory of settled recipients lives in the process: a restart while a message
//! is half delivered delivers its settled recipients again (at-least-once, as Maildir).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use super::Deliverer;
use crate::config::LmtpEndpoint;
use crate::lmtp::{detail_address, Client, LmtpError, Outcome, Reply};
use crate::outbound::{dsn, EntryKind, QueueEntry, RcptState, RcptStatus};
use crate::spool::SpooledMessage;

/// The LMTP server and what has been settled of partly delivered messages.
#[derive(Debug)]
pub struct LmtpTarget {
    pub endpoint: LmtpEndpoint,
    /// Spool id → recipients (with their folder) answered for good: delivered or bounced.
    /// An entry exists only while a message has some recipients settled and some pending.
    settled: Mutex<HashMap<String, HashSet<String>>>,
    /// How long a recipient may stay deferred before it is bounced (`[outbound] max_age`).
    max_age: Duration,
}

impl LmtpTarget {
    pub fn new(endpoint: LmtpEndpoint, max_age: Duration) -> LmtpTarget {
        LmtpTarget { endpoint, settled: Mutex::new(HashMap::new()), max_age }
    }

    fn settled(&self, id: &str) -> HashSet<String> {
        self.lock().get(id).cloned().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        self.settled.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One batch's connection to the server: opened on the first message, reused for the next,
/// and not tried again within the batch once it could not be opened (a server that is down
/// costs one connection attempt per batch, not one per message).
pub struct Session<'a> {
    target: &'a LmtpTarget,
    hostname: &'a str,
    client: Option<Client>,
    down: Option<String>,
}

impl<'a> Session<'a> {
    pub fn new(target: &'a LmtpTarget, hostname: &'a str) -> Session<'a> {
        Session { target, hostname, client: None, down: None }
    }

    fn client(&mut self) -> Result<&mut Client, String> {
        if let Some(reason) = &self.down {
            return Err(reason.clone());
        }
        if self.client.is_none() {
            match Client::connect(&self.target.endpoint, self.hostname) {
                Ok(client) => self.client = Some(client),
                Err(e) => {
                    tracing::warn!(server = %self.target.endpoint, error = %e, "LMTP server unavailable; deliveries deferred");
                    self.down = Some(e.to_string());
                    return Err(e.to_string());
                }
            }
        }
        self.client.as_mut().ok_or_else(|| "no connection".to_string())
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            client.quit();
        }
    }
}

/// One recipient in one folder.
struct Unit<'m> {
    rcpt: &'m str,
    folder: Option<&'m str>,
    key: String,
}

/// What [`deliver_local`] did.
pub struct Delivered {
    /// Every local recipient is settled: the message may leave the spool.
    pub complete: bool,
    /// Copies stored by the server in this attempt.
    pub stored: usize,
}

/// Delivers `message` to its pending local recipients (each in each of `folders`).
pub fn deliver_local(
    deliverer: &Deliverer,
    session: &mut Session<'_>,
    message: &SpooledMessage,
    folders: &[&str],
) -> Delivered {
    let record = &message.record;
    let target = session.target;
    let settled = target.settled(&record.id);
    let folders: Vec<Option<&str>> =
        if folders.is_empty() { vec![None] } else { folders.iter().map(|f| Some(*f)).collect() };
    let mut seen = HashSet::new();
    let units: Vec<Unit<'_>> = record
        .envelope
        .recipients
        .iter()
        .filter(|r| deliverer.target.is_local(r))
        .flat_map(|rcpt| folders.iter().map(move |folder| (rcpt.as_str(), *folder)))
        .map(|(rcpt, folder)| Unit { rcpt, folder, key: format!("{}\n{}", rcpt.to_lowercase(), folder.unwrap_or("")) })
        .filter(|u| !settled.contains(&u.key) && seen.insert(u.key.clone()))
        .collect();
    if units.is_empty() {
        target.lock().remove(&record.id);
        return Delivered { complete: true, stored: 0 };
    }
    let addresses: Vec<String> = units.iter().map(|u| detail_address(u.rcpt, u.folder)).collect();
    let outcomes = match session.client() {
        Err(reason) => vec![Outcome::Deferred(reason); units.len()],
        Ok(client) => {
            let (outcomes, result) =
                client.deliver(&record.envelope.sender, &addresses, &[&message.body], record.tail.as_ref());
            if let Err(e) = result {
                // The connection is unusable; the next message opens a new one.
                if !matches!(e, LmtpError::Refused(..)) {
                    tracing::warn!(server = %target.endpoint, error = %e, "LMTP connection lost");
                }
                session.client = None;
            }
            outcomes
        }
    };

    let expired = crate::spool::unix_now().saturating_sub(record.received_at) > target.max_age.as_secs();
    let mut now_settled = Vec::new();
    let mut failed: Vec<(&Unit<'_>, String)> = Vec::new();
    let mut stored = 0;
    for (unit, outcome) in units.iter().zip(outcomes) {
        let folder = unit.folder.unwrap_or("INBOX");
        match outcome {
            Outcome::Delivered(reply) => {
                tracing::info!(rcpt = %unit.rcpt, folder, reply = %reply, "delivered over LMTP");
                now_settled.push(unit.key.clone());
                stored += 1;
            }
            Outcome::Failed(reply) => {
                tracing::warn!(rcpt = %unit.rcpt, folder, reply = %reply, outcome = "bounced", "LMTP server refused the recipient");
                failed.push((unit, permanent(&reply)));
            }
            Outcome::Deferred(reason) if expired => {
                tracing::warn!(rcpt = %unit.rcpt, folder, reason = %reason, outcome = "bounced", "still deferred after [outbound] max_age");
                failed.push((unit, format!("deferred for too long; last: {reason}")));
            }
            Outcome::Deferred(reason) => {
                tracing::warn!(rcpt = %unit.rcpt, folder, reason = %reason, outcome = "deferred", "LMTP delivery deferred; will retry");
            }
        }
    }
    if !failed.is_empty() && bounce(deliverer, message, &failed) {
        now_settled.extend(failed.iter().map(|(unit, _)| unit.key.clone()));
    }
    let complete = now_settled.len() == units.len();
    let mut map = target.lock();
    if complete {
        map.remove(&record.id);
    } else if !now_settled.is_empty() {
        map.entry(record.id.clone()).or_default().extend(now_settled);
    }
    Delivered { complete, stored }
}

/// A refusal as the DSN builder reads it (`… error (550): 5.1.1 text`).
fn permanent(reply: &Reply) -> String {
    format!("permanent error ({}): {}", reply.code, reply.text)
}

/// Queues a DSN to the sender naming the `failed` recipients (none for the null sender).
/// False when it could not be queued: those recipients stay pending and are tried again.
fn bounce(deliverer: &Deliverer, message: &SpooledMessage, failed: &[(&Unit<'_>, String)]) -> bool {
    let record = &message.record;
    let sender = &record.envelope.sender;
    if sender.is_empty() {
        tracing::info!("no bounce: the failed message had a null sender");
        return true;
    }
    let entry = QueueEntry {
        id: record.id.clone(),
        kind: EntryKind::Relay,
        sender: sender.clone(),
        recipients: Vec::new(),
        attempts: 1,
        created: record.received_at,
        next_try: 0,
        last_error: String::new(),
        origin: record.id.clone(),
    };
    let mut rcpts: Vec<RcptState> = Vec::new();
    for (unit, error) in failed {
        // One line per recipient even when several of its folders failed.
        if !rcpts.iter().any(|r| r.addr.eq_ignore_ascii_case(unit.rcpt)) {
            rcpts.push(RcptState {
                addr: unit.rcpt.to_string(),
                status: RcptStatus::Failed,
                last_error: error.clone(),
            });
        }
    }
    let original = match &record.tail {
        None => message.body.to_vec(),
        // The headers are all a DSN returns: the file is read only up to their end.
        Some(tail) => match crate::message::stored::header_block(tail) {
            Ok((_, head)) => [message.body.as_slice(), &head].concat(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the message file for the bounce; will retry");
                return false;
            }
        },
    };
    let failed_refs: Vec<&RcptState> = rcpts.iter().collect();
    let report = match dsn::build(&deliverer.target.hostname, &entry, &failed_refs, &original) {
        Ok(report) => report,
        Err(e) => {
            // Deterministic: a retry would fail the same way.
            tracing::error!(error = %e, "cannot build the bounce");
            return true;
        }
    };
    match deliverer.outbound.enqueue(EntryKind::Bounce, "", std::slice::from_ref(sender), &report, &record.id) {
        Ok(id) => {
            tracing::info!(queue_id = %id, sender = %sender, "bounce queued");
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot queue the bounce; will retry");
            false
        }
    }
}
