//! `mailflow trace ID` while the daemon runs: the daemon holds the state store, so it answers
//! look-ups on a Unix socket in `[state] dir` (mode 0600: only the daemon's user). One line in
//! (the id), one line out (the trace as JSON, or `null`).
//!
//! Security: the id is at most [`MAX_ID`] bytes and is only used as a key.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use super::Trace;

/// File name of the socket inside `[state] dir`.
pub const SOCKET_FILE: &str = "trace.sock";
/// Longest id accepted.
pub const MAX_ID: usize = 1024;

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE)
}

/// Serves look-ups until the process ends.
pub fn serve(state_dir: &Path, db: Arc<redb::Database>) -> std::io::Result<()> {
    let path = path(state_dir);
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, most likely: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let db = db.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = tokio::io::BufReader::new(read.take(MAX_ID as u64 + 2));
                if reader.read_line(&mut line).await.is_err() {
                    return;
                }
                let id = line.trim().to_string();
                let found = tokio::task::spawn_blocking(move || lookup(&db, &id)).await.ok().flatten();
                let mut json = serde_json::to_string(&found).unwrap_or_else(|_| "null".into());
                json.push('\n');
                let _ = write.write_all(json.as_bytes()).await;
            });
        }
    });
    Ok(())
}

/// Memory first (the newest events), then the store.
pub fn lookup(db: &redb::Database, id: &str) -> Option<Trace> {
    if id.is_empty() {
        return None;
    }
    super::find(id).or_else(|| super::store::load(db, id).ok().flatten())
}

/// Asks a running daemon. `Err` when none answers (then read the store directly).
pub fn ask(state_dir: &Path, id: &str) -> std::io::Result<Option<Trace>> {
    let mut stream = std::os::unix::net::UnixStream::connect(path(state_dir))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{}\n", id.replace(['\r', '\n'], "")).as_bytes())?;
    let mut line = String::new();
    std::io::BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}
