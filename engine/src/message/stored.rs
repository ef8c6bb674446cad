//! Large messages kept in a file, and the budget of message bytes held in memory.
//!
//! A message larger than [`SPILL_AT`] is not held whole in memory: its bytes are
//! `prefix ++ file[offset..offset + len]`, the prefix (the `Received:` header, or an edited
//! header block) in memory and the rest in a [`Tail`] file. Readers that need the whole message
//! (a script reading `raw` or the body, a forward) load it on demand and account for it in the
//! [`Budget`]; delivery copies the tail file to file without reading it into memory.
//!
//! Security: a tail is a path the daemon wrote itself under its spool folder; nothing here
//! opens a path that came from a client or a script.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

/// Messages up to this size stay in memory; larger ones go to a file as they arrive.
pub const SPILL_AT: usize = 256 * 1024;
/// How much of a spilled message is searched for the end of its header block. A header block
/// larger than this is treated as the first part of it (header edits then copy the message).
pub const MAX_HEADER_BLOCK: usize = 1024 * 1024;

/// The part of a message that lives in a file: `len` bytes from `offset` of `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tail {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
}

impl Tail {
    /// A reader over the tail's bytes.
    pub fn reader(&self) -> std::io::Result<std::io::Take<File>> {
        let mut file = File::open(&self.path)?;
        file.seek(SeekFrom::Start(self.offset))?;
        Ok(file.take(self.len))
    }

    /// Appends the tail to `out` (to a `File`, kernel to kernel where the file systems allow
    /// it: the bytes never pass through this process's memory).
    pub fn copy_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let copied = std::io::copy(&mut self.reader()?, out)?;
        if copied != self.len {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "message file shorter than recorded"));
        }
        Ok(())
    }

    /// The same file from `skip` bytes further on.
    pub fn skip(&self, skip: u64) -> Tail {
        let skip = skip.min(self.len);
        Tail { path: self.path.clone(), offset: self.offset + skip, len: self.len - skip }
    }
}

/// The first bytes of `tail` up to and including the blank line that ends the header block,
/// or `None` when there is none within [`MAX_HEADER_BLOCK`] (then the first that many bytes
/// are returned as the second value, for header reads only).
pub fn header_block(tail: &Tail) -> std::io::Result<(Option<usize>, Vec<u8>)> {
    let want = tail.len.min(MAX_HEADER_BLOCK as u64) as usize;
    let mut head = Vec::with_capacity(want.min(64 * 1024));
    tail.reader()?.take(want as u64).read_to_end(&mut head)?;
    let end = crate::message::headers::block_end(&head);
    match end {
        Some(end) => {
            head.truncate(end);
            Ok((Some(end), head))
        }
        None => Ok((None, head)),
    }
}

/// The bytes of message data held in memory by all messages in flight, against a cap.
/// Reservations past the cap are refused only where refusing is possible (a new DATA);
/// memory already in use is always counted, so the figure stays true.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    cap: AtomicUsize,
}

/// The process-wide budget (`[smtp] max_inflight_memory`).
pub static BUDGET: Budget = Budget { used: AtomicUsize::new(0), cap: AtomicUsize::new(256 * 1024 * 1024) };

impl Budget {
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether `bytes` more fit under the cap now.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.used().saturating_add(bytes) <= self.cap.load(Ordering::Relaxed)
    }

    /// Counts `bytes` as held until the returned guard is dropped (or resized).
    pub fn hold(&'static self, bytes: usize) -> Held {
        self.used.fetch_add(bytes, Ordering::Relaxed);
        Held { budget: self, bytes }
    }
}

/// Bytes counted in a [`Budget`] until dropped.
#[derive(Debug)]
pub struct Held {
    budget: &'static Budget,
    bytes: usize,
}

impl Held {
    /// Changes the count to `bytes` (a buffer grew or shrank).
    pub fn set(&mut self, bytes: usize) {
        if bytes > self.bytes {
            self.budget.used.fetch_add(bytes - self.bytes, Ordering::Relaxed);
        } else {
            self.budget.used.fetch_sub(self.bytes - bytes, Ordering::Relaxed);
        }
        self.bytes = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_reads_copies_and_skips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        std::fs::write(&path, b"xxSubject: a\r\n\r\nbody\r\n").unwrap();
        let tail = Tail { path: path.clone(), offset: 2, len: 20 };
        let read = |tail: &Tail| {
            let mut out = Vec::new();
            tail.copy_to(&mut out).map(|()| out)
        };
        assert_eq!(read(&tail).unwrap(), b"Subject: a\r\n\r\nbody\r\n");
        let (end, head) = header_block(&tail).unwrap();
        assert_eq!((end, head.as_slice()), (Some(14), &b"Subject: a\r\n\r\n"[..]));
        assert_eq!(read(&tail.skip(14)).unwrap(), b"body\r\n");
        let short = Tail { path, offset: 2, len: 100 };
        assert!(read(&short).is_err(), "a file shorter than its record is an error");
    }

    #[test]
    fn budget_counts_and_refuses_past_the_cap() {
        static B: Budget = Budget { used: AtomicUsize::new(0), cap: AtomicUsize::new(100) };
        let mut held = B.hold(60);
        assert!(B.has_room(40) && !B.has_room(41));
        held.set(10);
        assert_eq!(B.used(), 10);
        drop(held);
        assert_eq!(B.used(), 0);
    }
}
