//! keep: the durable handoff between receiving and delivering (Postfix's queue file).
//!
//! A session hands an accepted message to [`Spool::store`] and replies `250` only when that
//! returns: the message and its envelope are then in a spool slot that was written and
//! `fdatasync`ed (see [`slots`] for why a reused slot needs one flush where a new file needs
//! two). One writer thread does the writing and batches whatever arrived while the previous
//! batch was syncing into one segment — one sync for many messages under load (group commit).
//! Segments go to the deliverer, which retires a segment only once every message in it is
//! delivered. On start, every segment left in a slot is delivered again (a crash after the
//! 250 loses nothing; it may deliver twice).

pub mod large;
mod segment;
mod slots;
mod writer;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::message::stored::Tail;
use crate::message::MessageView;
use crate::script::Action;

pub use segment::{Origin, Segment};
pub use writer::Spool;

/// Who sent what to whom: the SMTP envelope plus the facts of the session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Envelope {
    /// MAIL FROM, "" for the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
    pub helo: String,
    pub remote_ip: String,
    pub tls: bool,
    pub auth_user: String,
}

/// Everything the deliverer needs to know about one spooled message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpoolRecord {
    /// The queue id (`queued as <ID>`), followed through the log.
    pub id: String,
    pub envelope: Envelope,
    /// Delivery-relevant actions decided by scripts (folders, flags, outbound mail); message
    /// edits are already applied to the stored bytes.
    pub actions: Vec<Action>,
    /// False when a script redirected the message: no local copy.
    pub deliver_locally: bool,
    /// Unix seconds when it was accepted.
    pub received_at: u64,
    /// A large message: the part of it kept in a file of `large/` (the bytes stored with the
    /// record are what comes before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<Tail>,
}

/// A record and its message bytes, as written and as handed to the deliverer.
#[derive(Debug, Clone)]
pub struct SpooledMessage {
    pub record: SpoolRecord,
    /// The message; for a large one, the part before `record.tail`.
    pub body: Arc<Vec<u8>>,
}

impl SpooledMessage {
    /// The message's size in bytes.
    pub fn size(&self) -> usize {
        self.body.len() + self.record.tail.as_ref().map_or(0, |t| t.len as usize)
    }

    /// The message as scripts and auto-replies see it (a large one is read from its file only
    /// where the whole is needed).
    pub fn view(&self) -> std::io::Result<MessageView> {
        match &self.record.tail {
            None => Ok(MessageView::new(self.body.clone())),
            Some(tail) => MessageView::from_file(self.body.clone(), tail.clone(), Vec::new()),
        }
    }
}

/// Errors of the spool; every one of them means "answer 451, do not answer 250".
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("spool writer is not running")]
    Closed,
    #[error("spool segment {path}: {reason}")]
    Corrupt { path: String, reason: String },
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new id: microseconds since the epoch and a counter, 16 upper-case hex digits, sortable by
/// time.
pub fn new_id() -> String {
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    id_text(micros, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// 13 hex digits of microseconds, 3 of counter: one u64's 16 digits, written without `format!`
/// (two ids a message).
fn id_text(micros: u64, count: u32) -> String {
    let value = (micros & 0x000F_FFFF_FFFF_FFFF) << 12 | u64::from(count & 0xFFF);
    (0..16).rev().map(|i| char::from(b"0123456789ABCDEF"[(value >> (i * 4) & 0xF) as usize])).collect()
}

/// The segment decoder on bytes held in memory, for the fuzz harnesses.
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) -> Result<Vec<SpooledMessage>, SpoolError> {
    segment::decode(bytes, bytes.len(), "fuzz input")
}

/// The segment encoder, for the fuzz harnesses' round trip.
#[doc(hidden)]
pub fn fuzz_encode(messages: &[SpooledMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    segment::encode(&mut out, messages).expect("encoding to memory");
    out
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sixteen_hex_digits_of_time_then_counter() {
        for (micros, count) in [(0, 0), (1_795_965_108_471_344, 5), (u64::MAX, 0xFFFF), (0xABCDEF, 0x123)] {
            let expected = format!("{:013X}{:03X}", micros & 0x000F_FFFF_FFFF_FFFF, count & 0xFFF);
            assert_eq!(id_text(micros, count), expected);
        }
        let (a, b) = (new_id(), new_id());
        assert!(a.len() == 16 && a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
        assert_ne!(a, b);
    }
}
