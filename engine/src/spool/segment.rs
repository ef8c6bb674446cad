//! The spool file format: one segment holds one or more messages.
//!
//! ```text
//! MFSEG1\n
//! <record as one JSON line>\n<size>\n<size bytes of message>
//! ...
//! ```
//! A segment becomes visible in `incoming/` only by rename after fsync, so a reader never sees
//! a partial one.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{SpoolError, SpoolRecord, SpooledMessage};

const MAGIC: &[u8] = b"MFSEG1\n";

/// A durable segment and the messages it holds.
#[derive(Debug)]
pub struct Segment {
    pub path: PathBuf,
    pub messages: Vec<SpooledMessage>,
}

/// Writes `messages` as one segment: temp file in `tmp/`, fsync, rename into `incoming/`,
/// fsync of `incoming/`. Returns the final path. Blocking: call off the async runtime.
pub fn write_segment(spool_dir: &Path, messages: &[SpooledMessage]) -> Result<PathBuf, SpoolError> {
    let name = messages.first().map(|m| m.record.id.clone()).unwrap_or_else(super::new_id);
    let tmp = spool_dir.join("tmp").join(&name);
    let result = write_and_publish(spool_dir, &tmp, &name, messages);
    if result.is_err() {
        // Disk full or I/O error: leave no half-written file behind.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_and_publish(
    spool_dir: &Path,
    tmp: &Path,
    name: &str,
    messages: &[SpooledMessage],
) -> Result<PathBuf, SpoolError> {
    let incoming = spool_dir.join("incoming");
    let dest = incoming.join(name);
    let mut file = std::io::BufWriter::with_capacity(256 * 1024, File::create(tmp)?);
    file.write_all(MAGIC)?;
    for message in messages {
        let json = serde_json::to_vec(&message.record).map_err(std::io::Error::other)?;
        file.write_all(&json)?;
        write!(file, "\n{}\n", message.body.len())?;
        file.write_all(&message.body)?;
    }
    let file = file.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, &dest)?;
    File::open(&incoming)?.sync_all()?;
    Ok(dest)
}

/// Reads a segment back (on start, to finish what a previous run accepted).
pub fn read_segment(path: &Path) -> Result<Segment, SpoolError> {
    let corrupt = |reason: &str| SpoolError::Corrupt { path: path.display().to_string(), reason: reason.to_string() };
    let mut reader = BufReader::new(File::open(path)?);
    let mut magic = [0u8; MAGIC.len()];
    reader.read_exact(&mut magic)?;
    if magic != MAGIC {
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
        let mut body = vec![0u8; size];
        reader.read_exact(&mut body).map_err(|_| corrupt("truncated message"))?;
        messages.push(SpooledMessage { record, body: Arc::new(body) });
    }
    Ok(Segment { path: path.to_path_buf(), messages })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::{Envelope, SpoolRecord};

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        std::fs::create_dir_all(dir.path().join("incoming")).unwrap();
        let message = |id: &str, body: &[u8]| SpooledMessage {
            record: SpoolRecord {
                id: id.to_string(),
                envelope: Envelope { sender: "a@b.c".into(), recipients: vec!["d@e.f".into()], ..Default::default() },
                actions: Vec::new(),
                deliver_locally: true,
                received_at: 1,
            },
            body: Arc::new(body.to_vec()),
        };
        let written = vec![message("A1", b"x\r\n\nbinary\0\xff\r\n"), message("A2", b"")];
        let path = write_segment(dir.path(), &written).unwrap();
        assert!(path.starts_with(dir.path().join("incoming")));
        let read = read_segment(&path).unwrap();
        assert_eq!(read.messages.len(), 2);
        assert_eq!(read.messages[0].body.as_slice(), b"x\r\n\nbinary\0\xff\r\n");
        assert_eq!(read.messages[1].record.id, "A2");
        assert!(dir.path().join("tmp").read_dir().unwrap().next().is_none());
    }
}
