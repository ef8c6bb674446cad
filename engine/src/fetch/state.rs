//! What the pollers remember, in the state store: per IMAP (account, mailbox) the UIDVALIDITY,
//! a watermark (every UID up to it is done) and the done UIDs above it, failure counts, and
//! the Message-IDs already processed (to avoid repeating actions after a UIDVALIDITY change);
//! per POP3 account the UIDLs done and the UIDLs still to delete.
//!
//! The store is written durably once per batch (a durable commit costs milliseconds). Between
//! two commits every finished message is appended to the mailbox's [`Journal`] (a plain
//! `write`, no fsync), so a crash or `kill -9` mid-batch loses no progress: the next session
//! replays the journal (marks its messages done and re-applies their server actions, which are
//! idempotent), commits, and empties it. Only the message whose hook was running at the crash
//! runs again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use md5::{Digest, Md5};
use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

const MAILBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("fetch_mailbox");
const MESSAGE_IDS: TableDefinition<&str, u64> = TableDefinition::new("fetch_message_id");

/// A failing message is retried this many rounds, then skipped (and logged).
pub const MAX_ATTEMPTS: u32 = 5;

/// State of one IMAP mailbox or POP3 account.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MailboxState {
    pub uidvalidity: u32,
    /// IMAP: every UID ≤ this is done.
    pub watermark: u32,
    /// IMAP: done UIDs above the watermark.
    pub done: BTreeSet<u32>,
    /// POP3: done UIDLs.
    pub done_uidls: BTreeSet<String>,
    /// Failed hook attempts per UID (or UIDL), until MAX_ATTEMPTS.
    pub attempts: BTreeMap<String, u32>,
    /// IMAP, after a UIDVALIDITY change: UIDs up to this one were in the mailbox when the
    /// change was seen; they are skipped when their Message-ID was already processed.
    #[serde(default)]
    pub dedupe_below: u32,
    /// POP3: UIDLs processed and to be deleted (`delete_after_fetch` or `msg.delete()`), kept
    /// until the server no longer lists them.
    #[serde(default)]
    pub delete_uidls: BTreeSet<String>,
}

impl MailboxState {
    /// Counts a failed attempt at `id` (a UID or UIDL); true when it is the last one allowed:
    /// the caller then marks the message done (skipped) instead of retrying forever.
    pub fn failed(&mut self, id: String, error: &str) -> bool {
        let attempts = self.attempts.entry(id).or_insert(0);
        *attempts += 1;
        if *attempts >= MAX_ATTEMPTS {
            tracing::error!(error = %error, attempts = *attempts, "giving up on this message: left untouched and skipped");
            true
        } else {
            tracing::warn!(error = %error, attempts = *attempts, "hook or actions failed: message left untouched, retried next round");
            false
        }
    }

    pub fn is_done(&self, uid: u32) -> bool {
        uid <= self.watermark || self.done.contains(&uid)
    }

    /// Advances the watermark over every done UID, given the UIDs the server has above the
    /// old watermark (gaps of expunged messages do not hold it back).
    pub fn compact(&mut self, present: &BTreeSet<u32>) {
        let mut mark = self.watermark;
        for &uid in present.iter().filter(|&&u| u > self.watermark) {
            if self.done.contains(&uid) {
                mark = uid;
            } else {
                break;
            }
        }
        self.watermark = mark;
        self.done.retain(|&u| u > mark);
        let watermark = self.watermark;
        self.attempts.retain(|k, _| k.parse::<u32>().map_or(true, |u| u > watermark));
    }
}

/// Key of an IMAP mailbox's state.
pub fn imap_key(account: &str, mailbox: &str) -> String {
    format!("imap\0{account}\0{mailbox}")
}

pub fn pop3_key(account: &str) -> String {
    format!("pop3\0{account}")
}

pub fn load(store: &Arc<redb::Database>, key: &str) -> Result<MailboxState, String> {
    let txn = store.begin_read().map_err(|e| e.to_string())?;
    let table = match txn.open_table(MAILBOXES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(MailboxState::default()),
        Err(e) => return Err(e.to_string()),
    };
    let value = table.get(key).map_err(|e| e.to_string())?;
    match value {
        Some(v) => serde_json::from_slice(v.value()).map_err(|e| e.to_string()),
        None => Ok(MailboxState::default()),
    }
}

/// Writes the state and remembers `message_ids` as processed, in one durable transaction.
pub fn save(
    store: &Arc<redb::Database>,
    key: &str,
    state: &MailboxState,
    message_ids: &[String],
) -> Result<(), String> {
    let bytes = serde_json::to_vec(state).map_err(|e| e.to_string())?;
    let txn = store.begin_write().map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(MAILBOXES).map_err(|e| e.to_string())?;
        table.insert(key, bytes.as_slice()).map_err(|e| e.to_string())?;
        let mut ids = txn.open_table(MESSAGE_IDS).map_err(|e| e.to_string())?;
        let now = crate::spool::unix_now();
        for id in message_ids.iter().filter(|id| !id.is_empty()) {
            ids.insert(format!("{key}\0{id}").as_str(), now).map_err(|e| e.to_string())?;
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

/// Whether a message with this Message-ID was already processed in this mailbox.
pub fn seen_message_id(store: &Arc<redb::Database>, key: &str, message_id: &str) -> bool {
    if message_id.is_empty() {
        return false;
    }
    let Ok(txn) = store.begin_read() else { return false };
    let Ok(table) = txn.open_table(MESSAGE_IDS) else { return false };
    table.get(format!("{key}\0{message_id}").as_str()).ok().flatten().is_some()
}

/// The server actions a processed IMAP message still needs. Each is idempotent: applying it
/// again after a crash changes nothing (a moved or expunged UID is simply gone).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerActions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub move_to: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delete: bool,
}

/// One journal record: a message whose hook and local effects are done.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Done {
    /// IMAP: the UIDVALIDITY the UID belongs to.
    #[serde(default)]
    pub v: u32,
    #[serde(default)]
    pub uid: u32,
    /// POP3: the UIDL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uidl: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mid: String,
    #[serde(default)]
    pub act: ServerActions,
    /// Local copies written to a Maildir `tmp/` and not yet known to be in `new/`/`cur/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<(PathBuf, PathBuf)>,
}

/// The progress of one mailbox since its last durable commit: one JSON line per finished
/// message, appended with one `write` (no fsync: it must survive the process, not the
/// machine; the batch's durable commit covers the machine).
pub struct Journal {
    path: PathBuf,
    file: Option<File>,
}

impl Journal {
    pub fn open(dir: &Path, key: &str) -> Journal {
        // The key in hex; a long one (a deep folder name) hashed to keep within NAME_MAX.
        let bytes: Vec<u8> = if key.len() <= 100 { key.as_bytes().to_vec() } else { Md5::digest(key).to_vec() };
        let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Journal { path: dir.join(format!("{name}.jnl")), file: None }
    }

    /// The records of a previous run. A torn last line (crash mid-write) is ignored.
    pub fn read(&self) -> Vec<Done> {
        let Ok(file) = File::open(&self.path) else { return Vec::new() };
        BufReader::new(file).lines().map_while(Result::ok).filter_map(|line| serde_json::from_str(&line).ok()).collect()
    }

    pub fn append(&mut self, record: &Done) -> std::io::Result<()> {
        // The hook's `log` lines go first: a crash that keeps this record keeps them too.
        crate::logline::write_pending();
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                fs::create_dir_all(dir)?;
            }
            self.file = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
        }
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.as_mut().expect("opened above").write_all(&line)
    }

    /// Empties the journal once its records are in a durable commit.
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.file = None;
        match fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Moves staged local copies from `tmp/` to their place; a copy already moved (its `tmp/`
/// file gone) is left alone. Returns the folders to fsync before the next durable commit.
pub fn finish_copies(copies: &[(PathBuf, PathBuf)]) -> std::io::Result<BTreeSet<PathBuf>> {
    let mut dirs = BTreeSet::new();
    for (tmp, dest) in copies {
        match fs::rename(tmp, dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = dest.parent() {
            dirs.insert(dir.to_path_buf());
        }
    }
    Ok(dirs)
}

/// Makes renames into these folders durable.
pub fn sync_dirs(dirs: &BTreeSet<PathBuf>) -> std::io::Result<()> {
    for dir in dirs {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_skips_gaps_and_stops_at_failures() {
        let mut s = MailboxState::default();
        s.done.extend([1, 2, 4, 6]);
        s.compact(&BTreeSet::from([1, 2, 4, 5, 6]));
        assert_eq!(s.watermark, 4);
        assert!(s.is_done(6) && !s.is_done(5));
        s.done.insert(5);
        s.compact(&BTreeSet::from([5, 6]));
        assert_eq!(s.watermark, 6);
        assert!(s.done.is_empty());
    }

    #[test]
    fn round_trip_and_message_ids() {
        let store =
            Arc::new(redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap());
        let key = imap_key("work", "INBOX");
        assert_eq!(load(&store, &key).unwrap().watermark, 0);
        let state = MailboxState { uidvalidity: 7, watermark: 3, ..Default::default() };
        save(&store, &key, &state, &["<a@b>".to_string()]).unwrap();
        assert_eq!(load(&store, &key).unwrap().uidvalidity, 7);
        assert!(seen_message_id(&store, &key, "<a@b>"));
        assert!(!seen_message_id(&store, &key, "<c@d>"));
    }

    #[test]
    fn journal_replays_and_ignores_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), &imap_key("a", "INBOX"));
        assert!(j.read().is_empty());
        let act = ServerActions { flags: vec!["\\Seen".into()], move_to: Some("X".into()), delete: false };
        j.append(&Done { v: 3, uid: 7, mid: "m@x".into(), act: act.clone(), ..Done::default() }).unwrap();
        j.append(&Done { v: 3, uid: 8, ..Done::default() }).unwrap();
        let mut raw = OpenOptions::new().append(true).open(&j.path).unwrap();
        raw.write_all(b"{\"v\":3,\"ui").unwrap();
        let records = j.read();
        assert_eq!(records.len(), 2);
        assert_eq!((records[0].uid, records[0].act.clone()), (7, act));
        assert_eq!(records[1].act, ServerActions::default());
        j.clear().unwrap();
        assert!(j.read().is_empty());
        j.clear().unwrap();
        let long = Journal::open(dir.path(), &imap_key("a", &"x".repeat(300)));
        assert!(long.path.file_name().unwrap().len() < 100);
    }
}
