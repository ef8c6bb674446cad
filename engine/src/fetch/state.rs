//! What the pollers remember, in the state store: per IMAP (account, mailbox) the UIDVALIDITY,
//! a watermark (every UID up to it is done) and the done UIDs above it, failure counts, and
//! the Message-IDs already processed (to avoid repeating actions after a UIDVALIDITY change);
//! per POP3 account the UIDLs done.
//!
//! A message is marked done only after its hook and its actions succeeded; the state of a
//! batch is written in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

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
}
