//! keep: the embedded state store (redb) under `[state] dir`, shared by the parts of the daemon
//! that remember things across restarts (plugin kv; later poller positions, vacation memory,
//! the queue index). Each user keeps to its own tables.

use std::path::Path;
use std::sync::Arc;

/// File name of the store inside `[state] dir`.
pub const STORE_FILE: &str = "mailflow.redb";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("state store {path}: {message}")]
    Db { path: String, message: String },
}

/// Opens (or creates) the store in `dir`. Only one process may hold it.
pub fn open(dir: &Path) -> Result<Arc<redb::Database>, StateError> {
    open_file(dir, STORE_FILE)
}

/// File name of the decision traces' store inside `[state] dir`: a file of its own, so their
/// steady writes never wait for (or make wait) the kv, vacation and poller tables, and an I/O
/// error while writing them (a full disk) cannot leave the main store needing a restart.
pub const TRACE_FILE: &str = "traces.redb";

/// Page cache of the traces' store: they are written once and read rarely, and redb's default
/// cache (up to 1 GiB) would keep every page written in memory.
pub const TRACE_CACHE: usize = 4 * 1024 * 1024;

/// Opens (or creates) the store `file` in `dir`. Only one process may hold it.
pub fn open_file(dir: &Path, file: &str) -> Result<Arc<redb::Database>, StateError> {
    std::fs::create_dir_all(dir).map_err(|source| StateError::Io { path: dir.display().to_string(), source })?;
    let path = dir.join(file);
    let mut builder = redb::Database::builder();
    if file == TRACE_FILE {
        builder.set_cache_size(TRACE_CACHE);
    }
    builder
        .create(&path)
        .map(Arc::new)
        .map_err(|e| StateError::Db { path: path.display().to_string(), message: e.to_string() })
}

/// A throw-away in-memory store: what `mailflow check` and `mailflow test` give plugins, so a
/// dry run changes nothing on disk.
pub fn in_memory() -> Result<Arc<redb::Database>, StateError> {
    redb::Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .map(Arc::new)
        .map_err(|e| StateError::Db { path: "(memory)".into(), message: e.to_string() })
}
