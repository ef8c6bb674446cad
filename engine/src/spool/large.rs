//! Large messages: the file a session writes a message into as it arrives, kept in
//! `spool/large/` once the message is accepted.
//!
//! A message over [`crate::message::stored::SPILL_AT`] is written here while DATA is read, so a
//! session holds a bounded buffer whatever the message size. The spool record then names the
//! file (a [`Tail`]) instead of carrying the bytes; the file is synced, with its folder, before
//! the record's slot, so a `250` still means both are on disk. The deliverer removes the file
//! once the message is delivered. On start, files no live record names (a session cut off
//! before its `250`, or a refused message) are removed.
//!
//! Security: file names are queue ids the daemon made; nothing from the client names a path.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::message::stored::{Tail, SPILL_AT};

pub const FOLDER: &str = "large";

/// A message file being written by a session. Removed on drop unless [`Staged::keep`] was
/// called (the message was accepted).
#[derive(Debug)]
pub struct Staged {
    file: File,
    path: PathBuf,
    written: u64,
    kept: bool,
}

impl Staged {
    /// Creates `spool_dir/large/<id>`.
    pub fn create(spool_dir: &Path, id: &str) -> std::io::Result<Staged> {
        let dir = spool_dir.join(FOLDER);
        let path = dir.join(id);
        let file = match OpenOptions::new().write(true).create_new(true).open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&dir)?;
                OpenOptions::new().write(true).create_new(true).open(&path)?
            }
            other => other?,
        };
        Ok(Staged { file, path, written: 0, kept: false })
    }

    /// Everything written so far, as the file part of a message.
    pub fn tail(&self) -> Tail {
        Tail { path: self.path.clone(), offset: 0, len: self.written }
    }

    /// Makes the file and its name durable. Blocking.
    pub fn sync(&self) -> std::io::Result<()> {
        (self.syncer()?)()
    }

    /// [`Staged::sync`] as a job for a blocking thread.
    pub fn syncer(&self) -> std::io::Result<impl FnOnce() -> std::io::Result<()> + Send + 'static> {
        let file = self.file.try_clone()?;
        let dir = self.path.parent().map(Path::to_path_buf);
        Ok(move || {
            file.sync_data()?;
            match dir {
                Some(dir) => File::open(dir)?.sync_all(),
                None => Ok(()),
            }
        })
    }

    /// The message was accepted: the file now belongs to the spool record.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Write for Staged {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A message being received whose size is not known in advance (a poller's fetch): held in
/// memory up to [`SPILL_AT`], then written to a [`Staged`] file in `dir/large/`.
#[derive(Debug)]
pub struct Spill {
    dir: PathBuf,
    memory: Vec<u8>,
    file: Option<Staged>,
}

/// What a [`Spill`] holds once complete.
#[derive(Debug)]
pub enum Spilled {
    Memory(Vec<u8>),
    File(Staged),
}

impl Spill {
    pub fn new(dir: &Path) -> Spill {
        Spill { dir: dir.to_path_buf(), memory: Vec::new(), file: None }
    }

    pub fn len(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.written) + self.memory.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn finish(mut self) -> std::io::Result<Spilled> {
        match self.file.take() {
            None => Ok(Spilled::Memory(std::mem::take(&mut self.memory))),
            Some(mut file) => {
                file.write_all(&self.memory)?;
                Ok(Spilled::File(file))
            }
        }
    }
}

impl Write for Spill {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.memory.extend_from_slice(buf);
        if self.memory.len() >= SPILL_AT {
            if self.file.is_none() {
                self.file = Some(Staged::create(&self.dir, &super::new_id())?);
            }
            if let Some(file) = &mut self.file {
                file.write_all(&self.memory)?;
            }
            self.memory.clear();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Removes every file in `dir/large/` (a poller's leftovers: what it was fetching when the
/// daemon stopped is fetched again).
pub fn clear(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir.join(FOLDER)) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Creates `spool_dir/large/` and makes its name durable, so that the first large message's
/// file sync covers everything its path needs.
pub fn prepare(spool_dir: &Path) -> std::io::Result<()> {
    let dir = spool_dir.join(FOLDER);
    if !dir.is_dir() {
        std::fs::create_dir_all(&dir)?;
        File::open(spool_dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether a message's file is gone (and only that: an error reading its metadata is not
/// "gone").
pub fn is_gone(tail: &Tail) -> bool {
    matches!(std::fs::metadata(&tail.path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// Removes a delivered message's file.
pub fn remove(tail: &Tail) {
    if let Err(e) = std::fs::remove_file(&tail.path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = %tail.path.display(), error = %e, "cannot remove a delivered message file");
        }
    }
}

/// Removes the files in `spool_dir/large/` that no live record names.
pub fn remove_orphans(spool_dir: &Path, live: &HashSet<PathBuf>) -> std::io::Result<usize> {
    let dir = spool_dir.join(FOLDER);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(0) };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if !live.contains(&path) {
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove a message file no record names")
                }
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staged_file_is_removed_unless_kept_and_orphans_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let mut dropped = Staged::create(dir.path(), "A").unwrap();
        dropped.write_all(b"refused").unwrap();
        let path = dropped.tail().path;
        drop(dropped);
        assert!(!path.exists());
        let mut kept = Staged::create(dir.path(), "B").unwrap();
        kept.write_all(b"accepted").unwrap();
        kept.sync().unwrap();
        let tail = kept.tail();
        kept.keep();
        assert_eq!(std::fs::read(&tail.path).unwrap(), b"accepted");
        let orphan = Staged::create(dir.path(), "C").unwrap();
        std::mem::forget(orphan); // a crash mid-DATA
        let live: HashSet<PathBuf> = [tail.path.clone()].into();
        assert_eq!(remove_orphans(dir.path(), &live).unwrap(), 1);
        assert!(tail.path.exists());
        remove(&tail);
        assert!(!tail.path.exists());
    }

    #[test]
    fn a_spill_stays_in_memory_until_the_threshold_then_goes_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut small = Spill::new(dir.path());
        small.write_all(b"small").unwrap();
        assert!(matches!(small.finish().unwrap(), Spilled::Memory(m) if m == b"small"));
        let mut big = Spill::new(dir.path());
        let chunk = vec![b'x'; 100_000];
        for _ in 0..5 {
            big.write_all(&chunk).unwrap();
        }
        assert_eq!(big.len(), 500_000);
        let Spilled::File(file) = big.finish().unwrap() else { panic!("500 KB stays in memory") };
        assert_eq!(std::fs::read(file.tail().path).unwrap(), vec![b'x'; 500_000]);
        let path = file.tail().path;
        drop(file);
        assert!(!path.exists(), "removed with its owner");
    }
}
