//! act: the outbound sender — forwards, redirects, auto-replies, vacation notices, relayed
//! mail of authenticated clients, and bounces — through a durable queue with retries.
//!
//! Input: [`Outbound::enqueue`] from the deliverer (one entry per message, its own bytes, an
//! explicit envelope). The scheduler task sends due entries (one recipient per transaction, so
//! each recipient has its own state), retries 4xx answers and connection failures on the
//! `retry` schedule (then the last interval until `max_age`), fails 5xx at once, and bounces
//! failures to the envelope sender (never to the null sender). Entries are files in the queue
//! folder, so they survive kill -9 and `mailflow queue` can read and change them; delivery is
//! at-least-once.
//!
//! Security: message bytes are sent as stored, with line ends normalised to CRLF.

pub mod autoreply;
pub mod dsn;
pub mod entry;
mod mapped;
pub mod mx;
pub mod normalize;
mod pool;
mod scheduler;
pub mod signing;
pub mod transport;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::message::stored::Tail;

pub use crate::config::relay::{parse_relay, RelayUrl};
pub use entry::{EntryKind, QueueEntry, RcptState, RcptStatus};
pub use scheduler::Settings;
pub use signing::{Seal, Signer};
pub use transport::Transport;

/// Handle to the queue: cheap to clone, usable from blocking code.
#[derive(Clone)]
pub struct Outbound {
    dir: PathBuf,
    wake: mpsc::UnboundedSender<()>,
    /// DKIM keys and the ARC sealer; `None` when no `[[dkim]]` is configured.
    signer: Option<Arc<Signer>>,
}

impl Outbound {
    /// Starts the scheduler on `dir`; pending entries from a previous run are resumed.
    pub fn start(
        dir: &Path,
        transport: Arc<Transport>,
        settings: Settings,
        signer: Option<Arc<Signer>>,
    ) -> std::io::Result<(Outbound, tokio::task::JoinHandle<()>)> {
        std::fs::create_dir_all(dir)?;
        let (wake, wake_rx) = mpsc::unbounded_channel();
        let outbound = Outbound { dir: dir.to_path_buf(), wake, signer };
        let handle = tokio::spawn(scheduler::run(outbound.clone(), transport, settings, wake_rx));
        Ok((outbound, handle))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Queues `message` for `recipients` durably (blocking: call off the async runtime) and
    /// wakes the scheduler. Returns the new entry's id. What mailflow writes itself (replies,
    /// notices, bounces) is DKIM-signed.
    pub fn enqueue(
        &self,
        kind: EntryKind,
        sender: &str,
        recipients: &[String],
        message: &[u8],
        origin: &str,
    ) -> std::io::Result<String> {
        let seal = match kind {
            EntryKind::Reply | EntryKind::Vacation | EntryKind::Bounce => Seal::Dkim,
            _ => Seal::None,
        };
        self.enqueue_parts(kind, sender, recipients, &[message], None, origin, seal)
    }

    /// [`Outbound::enqueue`] for a message in parts: `parts` (CRLF line ends) and, for a large
    /// message, the file part after them (CRLF by the DATA reader's rules), which is copied
    /// file to file and never read into memory. `seal` says whether it is DKIM-signed or
    /// ARC-sealed on the way into the queue.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue_parts(
        &self,
        kind: EntryKind,
        sender: &str,
        recipients: &[String],
        parts: &[&[u8]],
        tail: Option<&Tail>,
        origin: &str,
        seal: Seal,
    ) -> std::io::Result<String> {
        // Parts from a poller may have bare line ends; what DATA accepted (every tail) has none.
        let normalized: Vec<std::borrow::Cow<'_, [u8]>> = parts
            .iter()
            .map(|p| if normalize::is_crlf(p) || p.is_empty() { (*p).into() } else { normalize::crlf(p).into() })
            .collect();
        let normalized: Vec<&[u8]> = normalized.iter().map(|p| p.as_ref()).collect();
        let parts = normalized.as_slice();
        let id = entry_id(kind, sender, recipients, parts, tail, origin)?;
        if entry::exists(&self.dir, &id) {
            // The same action of the same message, carried out again after a crash (a spool
            // segment is replayed until it is removed): already queued, queue it once.
            tracing::info!(queue_id = %id, origin = %origin, kind = ?kind, "already queued");
            return Ok(id);
        }
        let now = crate::spool::unix_now();
        let entry = QueueEntry {
            id: id.clone(),
            kind,
            sender: sender.to_string(),
            recipients: recipients
                .iter()
                .map(|r| RcptState { addr: r.clone(), status: RcptStatus::Pending, last_error: String::new() })
                .collect(),
            attempts: 0,
            created: now,
            next_try: now,
            last_error: String::new(),
            origin: origin.to_string(),
        };
        let signer = self.signer.as_deref().filter(|_| seal != Seal::None);
        let sign = signer.map(|signer| move |message: &[u8]| signer.headers_for(seal, message));
        entry::create(&self.dir, &entry, parts, tail, sign.as_ref().map(|f| f as entry::Sign<'_>))?;
        tracing::info!(queue_id = %id, origin = %origin, kind = ?kind, sender = %sender, recipients = %recipients.join(","), "queued for sending");
        let _ = self.wake.send(());
        Ok(id)
    }
}

/// A queue id that is the same each time the same action of the same message is carried out,
/// so a replay after a crash finds the entry instead of queueing a second copy. Replies and
/// vacation notices are built anew each time (fresh Date and Message-ID), so their bytes stay
/// out of it. 16 hex digits, like spool ids.
fn entry_id(
    kind: EntryKind,
    sender: &str,
    recipients: &[String],
    parts: &[&[u8]],
    tail: Option<&Tail>,
    origin: &str,
) -> std::io::Result<String> {
    use std::hash::Hasher;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(kind as u8, sender, recipients, origin), &mut hasher);
    if !matches!(kind, EntryKind::Reply | EntryKind::Vacation) {
        for part in parts {
            hasher.write(part);
        }
        if let Some(tail) = tail {
            let mut reader = tail.reader()?;
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = std::io::Read::read(&mut reader, &mut chunk)?;
                if n == 0 {
                    break;
                }
                hasher.write(&chunk[..n]);
            }
        }
    }
    Ok(format!("{:016X}", hasher.finish()))
}

/// The delay before attempt number `attempts + 1`: the schedule, then its last interval.
pub fn retry_delay(schedule: &[Duration], attempts: u32) -> Duration {
    let index = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    schedule.get(index).copied().unwrap_or(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_action_of_the_same_message_is_queued_once() {
        let dir = tempfile::tempdir().unwrap();
        let (wake, _rx) = mpsc::unbounded_channel();
        let outbound = Outbound { dir: dir.path().to_path_buf(), wake, signer: None };
        let rcpt = ["bob@far.example".to_string()];
        let first = outbound.enqueue(EntryKind::Forward, "a@x", &rcpt, b"m1", "SPOOLID").unwrap();
        // A replayed spool segment carries the action out again: same entry, no second copy.
        assert_eq!(outbound.enqueue(EntryKind::Forward, "a@x", &rcpt, b"m1", "SPOOLID").unwrap(), first);
        assert_eq!(entry::list(dir.path()).len(), 1);
        // Another message, kind or origin is another entry.
        outbound.enqueue(EntryKind::Forward, "a@x", &rcpt, b"m2", "SPOOLID").unwrap();
        outbound.enqueue(EntryKind::Redirect, "a@x", &rcpt, b"m1", "SPOOLID").unwrap();
        outbound.enqueue(EntryKind::Forward, "a@x", &rcpt, b"m1", "OTHER").unwrap();
        assert_eq!(entry::list(dir.path()).len(), 4);
        // A reply is rebuilt with a fresh Date/Message-ID each time: its bytes do not count.
        let reply = outbound.enqueue(EntryKind::Reply, "", &rcpt, b"Date: 1", "SPOOLID").unwrap();
        assert_eq!(outbound.enqueue(EntryKind::Reply, "", &rcpt, b"Date: 2", "SPOOLID").unwrap(), reply);
        assert_eq!(entry::list(dir.path()).len(), 5);
    }

    #[test]
    fn schedule_then_last_interval() {
        let s = [Duration::from_secs(60), Duration::from_secs(300)];
        assert_eq!(retry_delay(&s, 1), Duration::from_secs(60));
        assert_eq!(retry_delay(&s, 2), Duration::from_secs(300));
        assert_eq!(retry_delay(&s, 9), Duration::from_secs(300));
        assert_eq!(retry_delay(&[], 1), Duration::from_secs(300));
    }
}
