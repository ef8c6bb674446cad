//! act: local delivery of spooled messages into Maildir++ or, in `lmtp` mode, to a mail
//! store's LMTP server ([`lmtp`]).
//!
//! Input: durable spool segments from the spool writer (and, on start, those a previous run
//! left). For each message and local recipient: `Return-Path:` in front, the stored bytes
//! after it, into the recipient's Maildir (the folders scripts chose with `file_into`, with the
//! flags they set). A segment is retired only when all its messages are delivered; on a
//! failure (disk full, permissions, a 4xx from the LMTP server) the undelivered rest is
//! retried later, never dropped.

pub mod actions;
pub mod lmtp;

pub use crate::maildir::writer as maildir;
pub use crate::maildir::{deliver_copies, DeliveryTarget};

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::config::{Config, DeliveryMode};
use crate::outbound::Outbound;
use crate::script::apply;
use crate::spool::{Segment, SpooledMessage};

/// How long a failed delivery waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Threads delivering batches at the same time.
const DELIVERY_WORKERS: usize = 4;
/// The delivery threads' nice value. Receiving is the latency-sensitive path (a client waits
/// for every reply); delivery only has to keep up, and the spool already holds what it has not
/// done yet. Below the sessions' priority it takes the CPU they leave (measured in
/// bench/results/findings.md), and it is never starved for long: when it falls behind, its full queue holds back the spool
/// writer and so the 250s, which frees the CPU again.
const DELIVERY_NICE: i32 = 10;
/// How long the deliverer waits for more spool segments to join a batch: the batch then costs
/// one sync instead of one per segment (at one SMTP session, a segment per message).
const GATHER: Duration = Duration::from_millis(10);
/// Most spool segments delivered as one batch.
const MAX_SEGMENTS: usize = 64;

pub use crate::outbound::autoreply::own_addresses;

/// Everything the deliverer acts with.
#[derive(Clone)]
pub struct Deliverer {
    pub target: DeliveryTarget,
    /// Where forwards, redirects, replies and relayed recipients go.
    pub outbound: Outbound,
    /// Vacation memory.
    pub store: Arc<redb::Database>,
    /// Envelope sender of forwards: `None` keeps the original sender.
    pub forward_sender: Option<String>,
    /// This daemon's own addresses: never auto-answered (see [`own_addresses`]).
    pub own: Vec<String>,
    /// `[srs]`: forwards of foreign senders go out with an SRS envelope sender.
    pub srs: Option<Arc<crate::proto::srs::Srs>>,
    /// `[delivery] mode = "lmtp"`: local recipients go to this server instead of Maildir.
    pub lmtp: Option<Arc<lmtp::LmtpTarget>>,
}

impl Deliverer {
    pub fn from_config(config: &Config, outbound: Outbound, store: Arc<redb::Database>) -> Deliverer {
        let forward_sender = match config.outbound.forward_sender.as_str() {
            "" | "original" => None,
            fixed => Some(fixed.to_string()),
        };
        let target = DeliveryTarget::from_config(config);
        let own = own_addresses(&target.hostname, &target.local_domains);
        let lmtp = match config.delivery.mode {
            DeliveryMode::Maildir => None,
            // Checked when the config was loaded; an error here cannot happen.
            DeliveryMode::Lmtp => match crate::config::delivery::parse_lmtp(&config.delivery.lmtp) {
                Ok(endpoint) => Some(Arc::new(lmtp::LmtpTarget::new(endpoint, config.outbound.max_age))),
                Err(e) => {
                    tracing::error!(error = %e, "LMTP delivery not possible; delivering into Maildir");
                    None
                }
            },
        };
        Deliverer { target, outbound, store, forward_sender, own, srs: None, lmtp }
    }

    /// With the SRS codec forwards use.
    pub fn with_srs(mut self, srs: Option<Arc<crate::proto::srs::Srs>>) -> Deliverer {
        self.srs = srs;
        self
    }

    /// The envelope sender of a forward or redirect of mail from `sender`: `forward_sender`
    /// if set, else `sender` itself, in SRS form when it is not one of our domains.
    pub fn forward_sender_for(&self, sender: &str) -> String {
        if let Some(fixed) = &self.forward_sender {
            return fixed.clone();
        }
        match &self.srs {
            Some(srs) if !sender.is_empty() && !self.is_our_address(sender, srs) => {
                srs.forward(sender, crate::spool::unix_now())
            }
            _ => sender.to_string(),
        }
    }

    fn is_our_address(&self, sender: &str, srs: &crate::proto::srs::Srs) -> bool {
        let domain = sender.rsplit_once('@').map_or("", |(_, d)| d);
        domain.eq_ignore_ascii_case(srs.domain()) || self.target.is_local(sender)
    }
}

/// Starts the deliverer. It runs until every sender of `rx` is gone, then finishes what it
/// holds and returns.
pub fn spawn(
    target: Deliverer,
    rx: mpsc::Receiver<Segment>,
    retry: mpsc::WeakSender<Segment>,
) -> tokio::task::JoinHandle<()> {
    let target = Arc::new(target);
    // Batches of segments are delivered by a few threads at once, so delivery keeps up with
    // ingest; within a batch one sync makes every file durable. The threads take segments
    // straight from the spool writer: no task in between to wake for each one.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let runtime = tokio::runtime::Handle::current();
    for n in 0..DELIVERY_WORKERS {
        let (target, retry, rx, done, runtime) =
            (target.clone(), retry.clone(), rx.clone(), done_tx.clone(), runtime.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("deliver-{n}"))
            .spawn(move || run_worker(&target, &rx, &retry, &runtime, done));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a delivery thread");
        }
    }
    drop(done_tx);
    // Every thread drops its `done` sender once the channel is closed and it has finished
    // what it held.
    tokio::spawn(async move {
        let _ = done_rx.recv().await;
    })
}

/// The next batch: the first segment to come, and whatever joins it within [`GATHER`].
/// `None` once every sender is gone and nothing is left.
fn gather(rx: &mut mpsc::Receiver<Segment>) -> Option<Vec<Segment>> {
    let first = rx.blocking_recv()?;
    let started = std::time::Instant::now();
    let mut batch = vec![first];
    loop {
        while batch.len() < MAX_SEGMENTS {
            match rx.try_recv() {
                Ok(segment) => batch.push(segment),
                Err(_) => break,
            }
        }
        let left = GATHER.saturating_sub(started.elapsed());
        if batch.len() >= MAX_SEGMENTS || left.is_zero() || rx.is_closed() {
            return Some(batch);
        }
        std::thread::sleep(left);
    }
}

/// One delivery thread: delivers batches until the channel closes; undelivered rests go back
/// to the deliverer after [`RETRY_AFTER`].
fn run_worker(
    target: &Deliverer,
    segments: &std::sync::Mutex<mpsc::Receiver<Segment>>,
    retry: &mpsc::WeakSender<Segment>,
    runtime: &tokio::runtime::Handle,
    _done: mpsc::Sender<()>,
) {
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), DELIVERY_NICE) {
        tracing::debug!(error = %e, "delivery thread keeps the default priority");
    }
    loop {
        // One thread at a time gathers a batch; the others wait for the lock.
        let batch = match segments.lock() {
            Ok(mut rx) => gather(&mut rx),
            Err(poisoned) => gather(&mut poisoned.into_inner()),
        };
        let Some(batch) = batch else { return };
        let rests = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| deliver_batch(target, batch))) {
            Ok(rests) => rests,
            Err(_) => {
                // The segments stay in the spool: the next start delivers them.
                tracing::error!("delivery thread panicked on a batch; it stays spooled until the next start");
                Vec::new()
            }
        };
        for rest in rests {
            let retry = retry.clone();
            runtime.spawn(async move {
                tokio::time::sleep(RETRY_AFTER).await;
                if let Some(tx) = retry.upgrade() {
                    let _ = tx.send(rest).await;
                }
            });
        }
    }
}

/// Where a batch's local copies go: Maildir files made durable together at the end, or one
/// LMTP connection (the server's 2xx after the dot means it stored the copy durably).
enum Local<'a> {
    Maildir(maildir::SyncBatch),
    Lmtp(lmtp::Session<'a>),
}

/// Delivers every message of the segments, makes the whole batch durable with one sync (see
/// [`maildir::SyncBatch`]), then retires each segment whose messages all succeeded.
/// Returns the undelivered rest of the others.
fn deliver_batch(target: &Deliverer, segments: Vec<Segment>) -> Vec<Segment> {
    let mut local = match &target.lmtp {
        Some(lmtp) => Local::Lmtp(lmtp::Session::new(lmtp, &target.target.hostname)),
        None => Local::Maildir(maildir::SyncBatch::deferred()),
    };
    let mut results = Vec::with_capacity(segments.len());
    for segment in segments {
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for message in segment.messages {
            let span = tracing::info_span!("message", id = %message.record.id);
            if span.in_scope(|| deliver_message(target, &message, &mut local)) {
                done.push(message);
            } else {
                failed.push(message);
            }
        }
        results.push((segment.origin, done, failed));
    }
    let Local::Maildir(mut pending) = local else {
        return retire(results);
    };
    if let Err(e) = pending.sync() {
        // The files may not survive a crash: keep every segment (a retry may duplicate a
        // message, which beats losing one).
        tracing::error!(error = %e, "cannot make Maildir deliveries durable; will retry");
        pending.discard();
        for (_, done, failed) in &mut results {
            failed.append(done);
        }
    }
    retire(results)
}

/// Retires each segment whose messages are all delivered (and durable); returns the rest.
fn retire(results: Vec<(crate::spool::Origin, Vec<SpooledMessage>, Vec<SpooledMessage>)>) -> Vec<Segment> {
    let mut rests = Vec::new();
    for (origin, done, failed) in results {
        // Delivered and synced: a large message's file is no longer needed (a replay of the
        // segment after a crash finds it gone and knows the message was delivered).
        for tail in done.iter().filter_map(|m| m.record.tail.as_ref()) {
            crate::spool::large::remove(tail);
        }
        let segment = Segment { origin, messages: failed };
        if segment.messages.is_empty() {
            if let Err(e) = segment.retire() {
                tracing::warn!(segment = %segment.origin, error = %e, "cannot retire delivered spool segment");
            }
        } else {
            rests.push(segment);
        }
    }
    rests
}

/// True when every local recipient got the message and every outbound copy is queued.
fn deliver_message(deliverer: &Deliverer, message: &SpooledMessage, local: &mut Local<'_>) -> bool {
    let target = &deliverer.target;
    let record = &message.record;
    if let Some(tail) = record.tail.as_ref().filter(|t| crate::spool::large::is_gone(t)) {
        // Files of large messages are removed only once delivered: this is a replay.
        tracing::warn!(file = %tail.path.display(), "message file already removed: delivered before a restart");
        return true;
    }
    let folders = apply::folders(&record.actions);
    let flags = maildir::info_flags(apply::flags(&record.actions));
    let mut all_ok = true;
    let outcome = actions::carry_out_spooled(deliverer, message);
    if !outcome.queued_ok {
        all_ok = false;
    }
    let deliver_locally = record.deliver_locally || outcome.redirect_suppressed;
    let return_path = format!("Return-Path: <{}>\r\n", record.envelope.sender);
    let mut delivered = 0;
    let pending = match local {
        Local::Maildir(pending) => pending,
        Local::Lmtp(session) => {
            if !flags.is_empty() {
                // LMTP has no way to pass flags (see docs/delivery.md).
                tracing::debug!(flags = %flags, "flags are not carried over LMTP");
            }
            if deliver_locally {
                let done = lmtp::deliver_local(deliverer, session, message, &folders);
                all_ok &= done.complete;
                delivered = done.stored;
                let what = if done.complete { "delivered" } else { "error" };
                let text = format!("{} recipient(s) stored over LMTP; all done: {}", done.stored, done.complete);
                crate::trace::event(&record.id, what, text, "");
            }
            crate::prometheus::delivered(all_ok);
            log_delivered(message, all_ok, delivered, outcome.queued);
            return all_ok;
        }
    };
    for rcpt in record.envelope.recipients.iter().filter(|r| target.is_local(r)) {
        if !deliver_locally {
            continue;
        }
        let root = maildir::root_for(&target.maildir_template, rcpt);
        match deliver_copies(
            target,
            &root,
            &folders,
            &[return_path.as_bytes(), &message.body],
            message.record.tail.as_ref(),
            &flags,
            pending,
        ) {
            Ok(paths) => {
                delivered += paths.len();
                let into = if folders.is_empty() { "INBOX".to_string() } else { folders.join(", ") };
                crate::trace::event(&record.id, "delivered", format!("to {rcpt} in {into}"), "");
            }
            Err(e) => {
                all_ok = false;
                crate::trace::event(&record.id, "error", format!("delivery to {rcpt} failed (will retry): {e}"), "");
                tracing::error!(rcpt = %rcpt, error = %e, "delivery failed; will retry");
            }
        }
    }
    crate::prometheus::delivered(all_ok);
    log_delivered(message, all_ok, delivered, outcome.queued);
    all_ok
}

/// The one line per delivered message (`files`: the copies stored locally).
fn log_delivered(message: &SpooledMessage, all_ok: bool, files: usize, queued: usize) {
    if all_ok {
        let envelope = &message.record.envelope;
        tracing::info!(
            sender = %envelope.sender,
            recipients = %envelope.recipients.join(","),
            size = message.size(),
            files,
            queued,
            outcome = "delivered",
            "message delivered"
        );
    }
}

/// Spawns delivery of the segments a previous run left in the spool.
pub async fn resume(leftovers: Vec<Segment>, tx: &mpsc::Sender<Segment>) {
    for segment in leftovers {
        tracing::info!(segment = %segment.origin, messages = segment.messages.len(), "resuming delivery of spooled messages");
        if tx.send(segment).instrument(tracing::Span::current()).await.is_err() {
            break;
        }
    }
}
