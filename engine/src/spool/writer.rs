//! The spool writer task: group commit of concurrently finished messages.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::segment::{read_segment, write_segment, Segment};
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
    /// Creates the spool folders and starts the writer; each durable segment is then sent to
    /// `deliver`. Returns the handle and the segments a previous run left behind.
    pub fn open(dir: &Path, deliver: mpsc::Sender<Segment>) -> Result<(Spool, Vec<Segment>), SpoolError> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::create_dir_all(dir.join("incoming"))?;
        // A temp file is a segment that never got its 250: its client was told nothing good.
        for entry in std::fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        let mut leftovers = Vec::new();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir.join("incoming"))?.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            match read_segment(&path) {
                Ok(segment) => leftovers.push(segment),
                Err(e) => tracing::error!(path = %path.display(), error = %e, "unreadable spool segment left in place"),
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run_writer(dir.to_path_buf(), rx, deliver));
        Ok((Spool { tx, dir: dir.to_path_buf() }, leftovers))
    }

    /// Makes the message durable. `Ok` means it is fsynced in `incoming/`: only then may the
    /// session answer 250.
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

async fn run_writer(dir: PathBuf, mut rx: mpsc::Receiver<Request>, deliver: mpsc::Sender<Segment>) {
    while let Some(first) = rx.recv().await {
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
        let messages: Vec<SpooledMessage> = batch.iter().map(|r| r.message.clone()).collect();
        let dir2 = dir.clone();
        let written =
            tokio::task::spawn_blocking(move || write_segment(&dir2, &messages).map(|path| (path, messages))).await;
        match written {
            Ok(Ok((path, messages))) => {
                tracing::debug!(segment = %path.display(), messages = messages.len(), "spool segment synced");
                for request in batch {
                    let _ = request.done.send(Ok(()));
                }
                if deliver.send(Segment { path, messages }).await.is_err() {
                    tracing::error!("deliverer stopped; spooled messages wait for the next start");
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "spool write failed: answering 451");
                for request in batch {
                    let _ = request.done.send(Err(e.to_string()));
                }
            }
            Err(e) => {
                for request in batch {
                    let _ = request.done.send(Err(format!("spool writer: {e}")));
                }
            }
        }
    }
}
