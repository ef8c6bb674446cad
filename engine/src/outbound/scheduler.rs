//! The scheduler task: scans the queue folder, sends what is due, records the outcome.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tracing::Instrument;

use super::entry::{self, EntryKind, QueueEntry, RcptStatus};
use super::{dsn, normalize, retry_delay, Outbound, Transport};
use crate::maildir::DeliveryTarget;

/// The folder is rescanned at least this often (to see `mailflow queue retry`/`delete`).
const RESCAN: Duration = Duration::from_millis(500);

/// What the scheduler needs from the config.
#[derive(Clone)]
pub struct Settings {
    pub retry: Vec<Duration>,
    pub max_age: Duration,
    pub hostname: String,
    /// Recipients in local domains are delivered to their Maildir, not sent.
    pub local: DeliveryTarget,
    /// Entries sent at the same time (`[outbound] concurrency`).
    pub concurrency: usize,
    /// `[srs]`: a bounce of a forward goes to the original sender, not to our SRS address.
    pub srs: Option<Arc<crate::proto::srs::Srs>>,
}

pub(super) async fn run(
    outbound: Outbound,
    transport: Arc<Transport>,
    settings: Settings,
    mut wake: mpsc::UnboundedReceiver<()>,
) {
    let settings = Arc::new(settings);
    let permits = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut in_flight: HashSet<String> = HashSet::new();
    loop {
        while let Ok(id) = done_rx.try_recv() {
            in_flight.remove(&id);
        }
        let dir = outbound.dir().to_path_buf();
        let entries = tokio::task::spawn_blocking(move || entry::list(&dir)).await.unwrap_or_default();
        let now = crate::spool::unix_now();
        for entry in entries {
            if entry.next_try > now || in_flight.contains(&entry.id) {
                continue;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            in_flight.insert(entry.id.clone());
            let (outbound, transport, settings, done) =
                (outbound.clone(), transport.clone(), settings.clone(), done_tx.clone());
            let span = tracing::info_span!("outbound", queue_id = %entry.id, origin = %entry.origin);
            tokio::spawn(
                async move {
                    let id = entry.id.clone();
                    attempt(&outbound, &transport, &settings, entry).await;
                    drop(permit);
                    let _ = done.send(id);
                }
                .instrument(span),
            );
        }
        tokio::select! {
            woken = wake.recv() => if woken.is_none() { return },
            Some(id) = done_rx.recv() => { in_flight.remove(&id); }
            _ = tokio::time::sleep(RESCAN) => {}
        }
    }
}

/// One delivery attempt of every pending recipient of `entry`.
async fn attempt(outbound: &Outbound, transport: &Transport, settings: &Settings, mut entry: QueueEntry) {
    let path = entry::msg_path(outbound.dir(), &entry.id);
    let message = match tokio::task::spawn_blocking(move || map_message(&path)).await {
        Ok(Ok(message)) => message,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::error!(error = %e, "queued message file missing; entry dropped");
            let _ = entry::remove(outbound.dir(), &entry.id);
            return;
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the queued message; will retry");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the queued message; will retry");
            return;
        }
    };
    for index in 0..entry.recipients.len() {
        if entry.recipients[index].status != RcptStatus::Pending {
            continue;
        }
        let rcpt = entry.recipients[index].addr.clone();
        let result = if settings.local.is_local(&rcpt) {
            let (local, sender, body) = (settings.local.clone(), entry.sender.clone(), Arc::clone(&message));
            let rcpt2 = rcpt.clone();
            match tokio::task::spawn_blocking(move || local.deliver_local(&rcpt2, &sender, body.bytes())).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(super::transport::SendError {
                    permanent: e.is_permanent(),
                    message: format!("local delivery: {e}"),
                }),
                Err(e) => Err(super::transport::SendError { permanent: false, message: e.to_string() }),
            }
        } else {
            transport.send(&entry.sender, &rcpt, message.bytes()).await
        };
        let state = &mut entry.recipients[index];
        match result {
            Ok(()) => {
                state.status = RcptStatus::Sent;
                state.last_error.clear();
                tracing::info!(rcpt = %rcpt, outcome = "sent", "message sent");
                crate::trace::event(
                    &entry.origin,
                    "sent",
                    format!("{:?} to {rcpt} sent", entry.kind).to_lowercase(),
                    &entry.id,
                );
                crate::prometheus::outbound("sent");
            }
            Err(e) if e.permanent => {
                state.status = RcptStatus::Failed;
                state.last_error = e.message.clone();
                tracing::warn!(rcpt = %rcpt, error = %e.message, outcome = "failed", "permanent failure");
                crate::trace::event(&entry.origin, "failed", format!("to {rcpt}: {}", e.message), &entry.id);
                crate::prometheus::outbound("failed");
            }
            Err(e) => {
                state.last_error = e.message.clone();
                entry.last_error = e.message.clone();
                tracing::info!(rcpt = %rcpt, error = %e.message, outcome = "deferred", "temporary failure; will retry");
                crate::trace::event(&entry.origin, "deferred", format!("to {rcpt}: {}", e.message), &entry.id);
                crate::prometheus::outbound("deferred");
            }
        }
    }
    entry.attempts += 1;
    let now = crate::spool::unix_now();
    // Both times are whole seconds (truncated): `>` makes sure a full `max_age` has passed (up
    // to a second late), where `>=` could give up to a second early.
    let expired = now.saturating_sub(entry.created) > settings.max_age.as_secs();
    if entry.pending().next().is_some() && expired {
        for state in entry.recipients.iter_mut().filter(|r| r.status == RcptStatus::Pending) {
            state.status = RcptStatus::Failed;
            state.last_error = format!("gave up after {} attempts (max_age): {}", entry.attempts, state.last_error);
            tracing::warn!(rcpt = %state.addr, outcome = "expired", "delivery given up: max_age reached");
            crate::prometheus::outbound("expired");
        }
    }
    let dir = outbound.dir().to_path_buf();
    // The bounce is queued (durably) before the entry goes, so a crash in between can repeat
    // it but never lose it; when it cannot be queued the entry stays and bounces next time.
    if entry.pending().next().is_none() && bounce(outbound, settings, &entry, message.bytes()).await {
        let id = entry.id.clone();
        let _ = tokio::task::spawn_blocking(move || entry::remove(&dir, &id)).await;
    } else {
        entry.next_try = now + retry_delay(&settings.retry, entry.attempts).as_secs();
        let saved = tokio::task::spawn_blocking(move || {
            // `mailflow queue delete` while this attempt was in flight: keep it deleted.
            if !entry::exists(&dir, &entry.id) {
                let _ = entry::remove(&dir, &entry.id);
                return Ok(false);
            }
            entry::save(&dir, &entry).map(|()| true)
        })
        .await;
        match saved {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::info!("entry deleted while it was being sent; not kept"),
            _ => tracing::error!("cannot save queue entry state; it will be retried as it was"),
        }
    }
}

/// Queues a DSN for the failed recipients to the envelope sender (never to the null sender,
/// never for a bounce). False when it could not be queued (the caller keeps the entry).
async fn bounce(outbound: &Outbound, settings: &Settings, entry: &QueueEntry, original: &[u8]) -> bool {
    let failed: Vec<_> = entry.recipients.iter().filter(|r| r.status == RcptStatus::Failed).collect();
    if failed.is_empty() {
        return true;
    }
    if entry.sender.is_empty() || entry.kind == EntryKind::Bounce {
        tracing::info!("no bounce: the failed message had a null sender");
        return true;
    }
    let report = match dsn::build(&settings.hostname, entry, &failed, original) {
        Ok(report) => report,
        Err(e) => {
            // Building is deterministic: retrying would fail the same way.
            tracing::error!(error = %e, "cannot build the bounce");
            return true;
        }
    };
    let sender = match &settings.srs {
        Some(srs) if srs.is_srs(&entry.sender) => match srs.reverse(&entry.sender, crate::spool::unix_now()) {
            Ok(original) => original,
            Err(e) => {
                tracing::warn!(sender = %entry.sender, error = %e, "no bounce: the SRS sender does not reverse");
                return true;
            }
        },
        _ => entry.sender.clone(),
    };
    let (outbound, origin) = (outbound.clone(), entry.id.clone());
    // A small file write; do it off the runtime like every queue write.
    let queued =
        tokio::task::spawn_blocking(move || outbound.enqueue(EntryKind::Bounce, "", &[sender], &report, &origin)).await;
    match queued {
        Ok(Ok(bounce_id)) => {
            let to = failed.iter().map(|r| r.addr.as_str()).collect::<Vec<_>>().join(", ");
            let detail = format!("bounce to {} for {to} queued", entry.sender);
            crate::trace::event(&entry.origin, "bounced", detail, &bounce_id);
            true
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot queue the bounce; will try again");
            false
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot queue the bounce; will try again");
            false
        }
    }
}

/// A queued message as sent: the file mapped into memory (page cache, not the heap: a 20 MB
/// forward costs no 20 MB allocation), or a CRLF-normalized copy for a file that has bare line
/// ends (entries queued by earlier versions normalized only here).
pub(super) enum Queued {
    Mapped(memmap2::Mmap),
    Copied(Vec<u8>),
}

impl Queued {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Queued::Mapped(map) => map,
            Queued::Copied(bytes) => bytes,
        }
    }
}

fn map_message(path: &std::path::Path) -> std::io::Result<Arc<Queued>> {
    let file = std::fs::File::open(path)?;
    let Some(map) = super::mapped::map_file(&file)? else {
        return Ok(Arc::new(Queued::Copied(Vec::new())));
    };
    if normalize::is_crlf(&map) {
        Ok(Arc::new(Queued::Mapped(map)))
    } else {
        Ok(Arc::new(Queued::Copied(normalize::crlf(&map))))
    }
}
