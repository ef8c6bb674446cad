//! What a segment holds: one or more messages, each a record and its bytes.
//!
//! ```text
//! MFSEG1\n
//! <record as one JSON line>\n<size>\n<size bytes of message>
//! ...
//! ```
//! This encoding is the payload of a slot ([`super::slots`]).

use std::fmt;
use std::io::{BufRead, Write};
use std::sync::Arc;

use super::slots::SlotRef;
use super::{SpoolError, SpoolRecord, SpooledMessage};

const MAGIC: &[u8] = b"MFSEG1\n";
/// A segment with a large message (a record naming a file in `large/`): a version that does
/// not know such records must refuse the segment, not deliver the bytes before the file alone.
const MAGIC_WITH_FILES: &[u8] = b"MFSEG2\n";

/// A durable segment and the messages it holds.
#[derive(Debug)]
pub struct Segment {
    pub origin: Origin,
    pub messages: Vec<SpooledMessage>,
}

/// Where a segment is kept until every message in it is delivered.
#[derive(Debug)]
pub enum Origin {
    /// A slot of the slot spool.
    Slot(SlotRef),
}

impl Segment {
    /// Forgets the segment on disk once all its messages are delivered: the slot becomes free
    /// for reuse, a legacy file is removed. Not synced: a crash right after may deliver the
    /// segment again (at-least-once), never lose it.
    pub fn retire(&self) -> std::io::Result<()> {
        match &self.origin {
            Origin::Slot(slot) => slot.release(),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Slot(slot) => write!(f, "{slot}"),
        }
    }
}

/// Appends the encoding of `messages` to `out`.
pub fn encode(out: &mut Vec<u8>, messages: &[SpooledMessage]) -> std::io::Result<()> {
    let files = messages.iter().any(|m| m.record.tail.is_some());
    out.extend_from_slice(if files { MAGIC_WITH_FILES } else { MAGIC });
    for message in messages {
        serde_json::to_writer(&mut *out, &message.record).map_err(std::io::Error::other)?;
        write!(out, "\n{}\n", message.body.len())?;
        out.extend_from_slice(&message.body);
    }
    Ok(())
}

/// Decodes what [`encode`] wrote; `limit` is the number of bytes the source holds (a size
/// line beyond it is damage, not a reason to allocate), `what` names the source in errors.
pub fn decode(mut reader: impl BufRead, limit: usize, what: &str) -> Result<Vec<SpooledMessage>, SpoolError> {
    let corrupt = |reason: &str| SpoolError::Corrupt { path: what.to_string(), reason: reason.to_string() };
    let mut magic = [0u8; MAGIC.len()];
    reader.read_exact(&mut magic)?;
    if magic != MAGIC && magic != MAGIC_WITH_FILES {
        return Err(corrupt("not a mailflow spool segment"));
    }
    let mut messages = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let record: SpoolRecord =
            serde_json::from_str(line.trim_end()).map_err(|e| corrupt(&format!("record: {e}")))?;
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size: usize = size_line.trim().parse().map_err(|_| corrupt("size line"))?;
        if size > limit {
            return Err(corrupt("size beyond the end of the segment"));
        }
        let mut body = vec![0u8; size];
        reader.read_exact(&mut body).map_err(|_| corrupt("truncated message"))?;
        messages.push(SpooledMessage { record, body: Arc::new(body) });
    }
    Ok(messages)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spool::{Envelope, SpoolRecord};

    pub(crate) fn message(id: &str, body: &[u8]) -> SpooledMessage {
        SpooledMessage {
            record: SpoolRecord {
                id: id.to_string(),
                envelope: Envelope { sender: "a@b.c".into(), recipients: vec!["d@e.f".into()], ..Default::default() },
                actions: Vec::new(),
                deliver_locally: true,
                received_at: 1,
                tail: None,
            },
            body: Arc::new(body.to_vec()),
        }
    }

    #[test]
    fn a_segment_naming_a_file_has_its_own_magic() {
        let mut with_file = message("F1", b"Received: x\r\n");
        with_file.record.tail =
            Some(crate::message::stored::Tail { path: "/spool/large/F1".into(), offset: 0, len: 9 });
        let mut bytes = Vec::new();
        encode(&mut bytes, &[message("A1", b"x\r\n"), with_file]).unwrap();
        assert!(bytes.starts_with(MAGIC_WITH_FILES));
        let read = decode(bytes.as_slice(), bytes.len(), "test").unwrap();
        assert_eq!(read[1].record.tail.as_ref().map(|t| t.len), Some(9));
        let mut plain = Vec::new();
        encode(&mut plain, &[message("A1", b"x\r\n")]).unwrap();
        assert!(plain.starts_with(MAGIC));
    }

    #[test]
    fn round_trip() {
        let written = vec![message("A1", b"x\r\n\nbinary\0\xff\r\n"), message("A2", b"")];
        let mut bytes = Vec::new();
        encode(&mut bytes, &written).unwrap();
        let read = decode(bytes.as_slice(), bytes.len(), "test").unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].body.as_slice(), b"x\r\n\nbinary\0\xff\r\n");
        assert_eq!(read[1].record.id, "A2");
    }
}
