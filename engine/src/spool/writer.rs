//! The spool writer thread: group commit of concurrently finished messages into one slot.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::large::{self, Staged};
use super::segment::{Origin, Segment};
use super::slots::Pool;
use super::{SpoolError, SpoolRecord, SpooledMessage};

/// Most messages (and bytes) written into one segment.
const MAX_BATCH: usize = 256;
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// Requests waiting for the writer before sessions feel back-pressure.
const QUEUE_DEPTH: usize = 1024;

struct Request {
    message: SpooledMessage,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the spool writer. Cheap to clone; one per session is fine.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Request>,
    dir: PathBuf,
}

impl Spool {
    /// Opens the slot spool and starts the writer; each durable segment is then sent to
    /// `deliver`. Returns the handle and the segments a previous run left behind, oldest first.
    pub fn open(dir: &Path, deliver: mpsc::Sender<Segment>) -> Result<(Spool, Vec<Segment>), SpoolError> {
        std::fs::create_dir_all(dir)?;
        let (pool, mut leftovers) = Pool::open(dir)?;
        // Records name their files by absolute path: after the data folder moved, the files
        // are found where the spool is now.
        for message in leftovers.iter_mut().flat_map(|s| s.messages.iter_mut()) {
            if let Some(tail) = message.record.tail.as_mut() {
                if let Some(name) = tail.path.file_name() {
                    tail.path = dir.join(large::FOLDER).join(name);
                }
            }
        }
        large::prepare(dir)?;
        if pool.has_unreadable() {
            tracing::warn!("an unreadable spool slot is left in place: no message file in large/ is removed");
        } else {
            let live = leftovers.iter().flat_map(|s| &s.messages).filter_map(|m| m.record.tail.as_ref());
            match large::remove_orphans(dir, &live.map(|t| t.path.clone()).collect()) {
                Ok(0) => {}
                Ok(removed) => tracing::info!(removed, "removed message files of sessions that never got their 250"),
                Err(e) => tracing::warn!(error = %e, "cannot sweep large/ of files no record names"),
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new().name("spool-writer".into()).spawn(move || run_writer(pool, rx, deliver))?;
        Ok((Spool { tx, dir: dir.to_path_buf() }, leftovers))
    }

    /// A file in `large/` for a message too big to hold in memory while it arrives.
    pub fn stage(&self, id: &str) -> std::io::Result<Staged> {
        Staged::create(&self.dir, id)
    }

    /// Makes the message durable. `Ok` means it is fsynced in a spool slot (a large message's
    /// file must have been synced before, see [`Staged::sync`]): only then may the session
    /// answer 250.
    pub async fn store(&self, record: SpoolRecord, body: Arc<Vec<u8>>) -> Result<(), SpoolError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request { message: SpooledMessage { record, body }, done })
            .await
            .map_err(|_| SpoolError::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SpoolError::Io(std::io::Error::other(e))),
            Err(_) => Err(SpoolError::Closed),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The writer runs on its own thread rather than as a task that hands each batch to
/// `spawn_blocking`: a message then costs one wake-up on the way in (this thread) and one on
/// the way out (the session), where the task design added three more (writer task, blocking
/// thread, writer task again), which with one client were most of the latency that is not the
/// flush itself (bench/results/findings.md).
fn run_writer(pool: Arc<Pool>, mut rx: mpsc::Receiver<Request>, deliver: mpsc::Sender<Segment>) {
    while let Some(first) = rx.blocking_recv() {
        let mut bytes = first.message.body.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(request) => {
                    bytes += request.message.body.len();
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        let (messages, replies): (Vec<SpooledMessage>, Vec<_>) = batch.into_iter().map(|r| (r.message, r.done)).unzip();
        let started = std::time::Instant::now();
        // A panic must not take the writer down with it: every later message would get 451.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.write(&messages)));
        let reply = match written {
            Ok(Ok(slot)) => {
                crate::prometheus::spool_segment(messages.len(), started.elapsed());
                tracing::debug!(segment = %slot, messages = messages.len(), "spool segment synced");
                Ok(slot)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "spool write failed: answering 451");
                Err(e.to_string())
            }
            Err(_) => {
                tracing::error!("spool writer panicked: answering 451");
                Err("spool writer panicked".to_string())
            }
        };
        for done in replies {
            let _ = done.send(reply.as_ref().map(|_| ()).map_err(Clone::clone));
        }
        if let Ok(slot) = reply {
            if deliver.blocking_send(Segment { origin: Origin::Slot(slot), messages }).is_err() {
                tracing::error!("deliverer stopped; spooled messages wait for the next start");
            }
        }
    }
}
