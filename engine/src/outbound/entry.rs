//! One outbound queue entry on disk: `<id>.msg` (the bytes to send, never re-encoded) and
//! `<id>.json` (envelope, per-recipient state, attempts, next try). Both are written to a temp
//! name, fsynced and renamed, the message first: an entry exists once its `.json` does.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::message::stored::Tail;

/// Why the entry exists: decides bounce and loop rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// An authenticated client's mail to a foreign domain, or a script's `add_rcpt`.
    Relay,
    Forward,
    Redirect,
    Reply,
    Vacation,
    /// A delivery status notification: never bounced itself.
    Bounce,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RcptStatus {
    Pending,
    Sent,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RcptState {
    pub addr: String,
    pub status: RcptStatus,
    /// The last reply or error for this recipient.
    pub last_error: String,
}

/// The queue's record of one message to send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueEntry {
    pub id: String,
    pub kind: EntryKind,
    /// Envelope sender; "" is the null sender (replies, bounces).
    pub sender: String,
    pub recipients: Vec<RcptState>,
    pub attempts: u32,
    /// Unix seconds.
    pub created: u64,
    pub next_try: u64,
    pub last_error: String,
    /// Queue id of the message this one came from, to follow it through the log.
    pub origin: String,
}

impl QueueEntry {
    pub fn pending(&self) -> impl Iterator<Item = &RcptState> {
        self.recipients.iter().filter(|r| r.status == RcptStatus::Pending)
    }
}

fn json_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

pub fn msg_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.msg"))
}

fn write_durable(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    write_durable_with(dir, name, |file| file.write_all(bytes))
}

fn write_durable_with(
    dir: &Path,
    name: &str,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        write(&mut file)?;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Header lines to put in front of a message, computed from its bytes (DKIM, ARC).
pub type Sign<'a> = &'a (dyn Fn(&[u8]) -> Vec<u8> + Sync);

/// Stores a new entry and its message durably: `parts` then, for a large message, its file
/// part copied file to file. With `sign`, the header lines it computes from the whole
/// message go in front. Blocking.
pub fn create(
    dir: &Path,
    entry: &QueueEntry,
    parts: &[&[u8]],
    tail: Option<&Tail>,
    sign: Option<Sign<'_>>,
) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let name = format!("{}.msg", entry.id);
    match (sign, tail) {
        (None, _) => write_durable_with(dir, &name, |file| write_parts(file, parts, tail))?,
        (Some(sign), None) => {
            // Small: the parts are in memory already; one contiguous copy to sign.
            let whole = parts.concat();
            let headers = sign(&whole);
            write_durable_with(dir, &name, |file| {
                file.write_all(&headers)?;
                file.write_all(&whole)
            })?;
        }
        (Some(sign), Some(_)) => {
            // Large: written once unsigned, mapped (page cache, not the heap), signed, and
            // copied behind the signature; never read into memory as a whole.
            let unsigned = dir.join(format!(".{}.unsigned", entry.id));
            let result = (|| {
                let mut file = File::create(&unsigned)?;
                write_parts(&mut file, parts, tail)?;
                drop(file);
                let map = super::mapped::map_file(&File::open(&unsigned)?)?;
                let bytes: &[u8] = map.as_deref().unwrap_or_default();
                let headers = sign(bytes);
                write_durable_with(dir, &name, |file| {
                    file.write_all(&headers)?;
                    file.write_all(bytes)
                })
            })();
            let _ = fs::remove_file(&unsigned);
            result?;
        }
    }
    save(dir, entry)
}

fn write_parts(file: &mut File, parts: &[&[u8]], tail: Option<&Tail>) -> std::io::Result<()> {
    for part in parts {
        file.write_all(part)?;
    }
    match tail {
        Some(tail) => tail.copy_to(file),
        None => Ok(()),
    }
}

/// Rewrites an entry's state durably. Blocking.
pub fn save(dir: &Path, entry: &QueueEntry) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?;
    write_durable(dir, &format!("{}.json", entry.id), &json)?;
    File::open(dir)?.sync_all()
}

/// Whether the entry (its state file) is still in the queue.
pub fn exists(dir: &Path, id: &str) -> bool {
    json_path(dir, id).exists()
}

pub fn load(dir: &Path, id: &str) -> std::io::Result<QueueEntry> {
    let bytes = fs::read(json_path(dir, id))?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// Removes an entry (state first, so a crash leaves at most an orphan message file).
pub fn remove(dir: &Path, id: &str) -> std::io::Result<()> {
    match fs::remove_file(json_path(dir, id)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let _ = fs::remove_file(msg_path(dir, id));
    File::open(dir)?.sync_all()
}

/// Every entry in the queue, oldest first; unreadable ones are logged and skipped.
pub fn list(dir: &Path) -> Vec<QueueEntry> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut entries: Vec<QueueEntry> = read
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".json")?.to_string();
            if id.starts_with('.') {
                return None;
            }
            match load(dir, &id) {
                Ok(entry) => Some(entry),
                // Sent and removed between the listing and the read: nothing to report.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
                Err(err) => {
                    tracing::warn!(id = %id, error = %err, "unreadable queue entry skipped");
                    None
                }
            }
        })
        .collect();
    entries.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
    entries
}
