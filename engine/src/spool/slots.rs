//! The slot spool: segments are written into reused files, so making one durable costs a
//! single `fdatasync` of blocks the file already owns.
//!
//! A new file for every segment costs two disk flushes before the `250`: the file's own
//! `fsync` (its data and its new inode) and the folder's, for the rename that published it
//! (0.73 ms together on the bench machine). A slot is a file in `spool/slots/` that stays
//! there: a segment is written over it from offset 0 and made durable with `fdatasync` alone
//! (0.21 ms), because nothing the file system needs to find the data has changed. The first
//! use of a new slot also syncs the folder once, so its name survives a crash.
//!
//! ```text
//! header, 32 bytes:  "MFSLOT1\n" | seq u64 LE | len u64 LE | crc32 u32 LE | 0u32
//! payload:           len bytes, the segment encoding (see [`super::segment`])
//! ```
//! The checksum covers `seq`, `len` and the payload, so a write cut off by a crash (never
//! acknowledged: the `250` waits for the sync) reads as invalid, whatever mix of old and new
//! sectors reached the disk. A delivered segment is retired by zeroing its header, unsynced:
//! if a crash loses that write, the segment is delivered again — at least once, never zero
//! times. On start, every slot with a valid header is a segment to deliver, in `seq` order.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::segment::{self, Origin, Segment};
use super::{SpoolError, SpooledMessage};

const FOLDER: &str = "slots";
const CORRUPT_FOLDER: &str = "corrupt";
const MAGIC: &[u8; 8] = b"MFSLOT1\n";
const HEADER_LEN: usize = 32;
/// Slots made ready on open, so the first messages do not pay for new files.
const PREWARM: usize = 4;
const PREWARM_SIZE: usize = 64 * 1024;
/// Free slots kept beyond this are deleted: a burst should not leave its disk space behind.
const KEEP_FREE: usize = 64;
/// Far above any segment the writer makes (64 MB batches plus one message): a larger length
/// in a header is damage, and must not become an allocation of that size.
const MAX_PAYLOAD: u64 = 4 * 1024 * 1024 * 1024;
/// A freed slot larger than this is cut back to [`PREWARM_SIZE`].
const SHRINK_ABOVE: u64 = 8 * 1024 * 1024;

/// The set of slot files, and which of them are free.
#[derive(Debug)]
pub struct Pool {
    dir: PathBuf,
    free: Mutex<Vec<FreeSlot>>,
    next_index: AtomicU64,
    next_seq: AtomicU64,
    /// Some slot could not be read on open (left for recovery by hand): what its records name
    /// must not be swept away.
    unreadable: bool,
}

/// A free slot: its number and the size of its file.
#[derive(Debug, Clone, Copy, PartialEq)]
struct FreeSlot {
    index: u64,
    size: u64,
}

/// A slot that holds a durable segment until [`SlotRef::release`].
#[derive(Debug)]
pub struct SlotRef {
    pool: Arc<Pool>,
    index: u64,
    /// The size of the file as the write left it, so the release needs no `statx`. `None` for
    /// a segment a previous run left: the release asks the file. (The file itself is not kept
    /// open: a segment whose delivery keeps failing is retried for as long as it takes, and an
    /// open file per such segment would run the process out of descriptors.)
    size: Option<u64>,
}

impl Pool {
    /// Opens (or creates) `spool_dir/slots`. Returns the pool and the segments a previous run
    /// left there, oldest first. A slot that fails its checksum (a write cut off by a crash) is
    /// moved to `corrupt/`; a slot that cannot be read, or whose checksum is good but whose
    /// records do not decode, is left where it is and never reused — it was acknowledged.
    pub fn open(spool_dir: &Path) -> Result<(Arc<Pool>, Vec<Segment>), SpoolError> {
        let dir = spool_dir.join(FOLDER);
        std::fs::create_dir_all(&dir)?;
        let mut free = Vec::new();
        let mut found = Vec::new();
        let mut max_index = None;
        let mut max_seq = 0;
        let mut moved_aside = false;
        let mut unreadable = false;
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name();
            let Some(index) = name.to_str().and_then(parse_name) else { continue };
            max_index = max_index.max(Some(index));
            match read_slot(&entry.path()) {
                Ok(Slot::Free(size)) => free.push(FreeSlot { index, size }),
                Ok(Slot::Live(seq, messages)) => {
                    max_seq = max_seq.max(seq);
                    found.push((seq, index, messages));
                }
                Ok(Slot::Torn(reason)) => {
                    tracing::warn!(slot = %entry.path().display(), reason,
                        "spool slot fails its checksum (a write cut off before its 250); moved aside");
                    let aside = spool_dir.join(CORRUPT_FOLDER);
                    std::fs::create_dir_all(&aside)?;
                    let unique = format!("{}.{}", name.to_string_lossy(), super::new_id());
                    std::fs::rename(entry.path(), aside.join(unique))?;
                    moved_aside = true;
                }
                Err(e) => {
                    unreadable = true;
                    tracing::error!(slot = %entry.path().display(), error = %e,
                        "unreadable spool slot left in place and not reused; deliver or remove it by hand")
                }
            }
        }
        if moved_aside {
            File::open(spool_dir.join(CORRUPT_FOLDER))?.sync_all()?;
        }
        let next_index = match max_index {
            None => 0,
            Some(i) => i.checked_add(1).ok_or_else(|| std::io::Error::other("spool slot numbers exhausted"))?,
        };
        let pool = Arc::new(Pool {
            dir,
            free: Mutex::new(Vec::new()),
            next_index: AtomicU64::new(next_index),
            next_seq: AtomicU64::new(max_seq + 1),
            unreadable,
        });
        while free.len() + found.len() < PREWARM {
            let index = pool.next_index.fetch_add(1, Ordering::Relaxed);
            let file = OpenOptions::new().write(true).create_new(true).open(pool.path(index))?;
            file.write_all_at(&[0u8; PREWARM_SIZE], 0)?;
            file.sync_data()?;
            free.push(FreeSlot { index, size: PREWARM_SIZE as u64 });
        }
        // Always: a slot a previous run created just before a crash may have a name that is
        // not durable yet, and reusing it needs only `fdatasync` from now on.
        File::open(&pool.dir)?.sync_all()?;
        // Lowest index last: it is popped first, so a quiet daemon keeps reusing one file.
        free.sort_unstable_by_key(|slot| std::cmp::Reverse(slot.index));
        *pool.lock_free() = free;
        found.sort_unstable_by_key(|(seq, _, _)| *seq);
        let segments = found
            .into_iter()
            .map(|(_, index, messages)| Segment {
                origin: Origin::Slot(SlotRef { pool: pool.clone(), index, size: None }),
                messages,
            })
            .collect();
        Ok((pool, segments))
    }

    /// Writes `messages` as one segment into a free slot (a new one if none is free) and
    /// makes it durable. Blocking: call off the async runtime.
    pub fn write(self: &Arc<Self>, messages: &[SpooledMessage]) -> Result<SlotRef, SpoolError> {
        let mut buf = Vec::with_capacity(HEADER_LEN + 512 + messages.iter().map(|m| m.body.len() + 512).sum::<usize>());
        buf.resize(HEADER_LEN, 0);
        segment::encode(&mut buf, messages)?;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let len = (buf.len() - HEADER_LEN) as u64;
        buf[..8].copy_from_slice(MAGIC);
        buf[8..16].copy_from_slice(&seq.to_le_bytes());
        buf[16..24].copy_from_slice(&len.to_le_bytes());
        let crc = checksum(&buf[8..24], &buf[HEADER_LEN..]);
        buf[24..28].copy_from_slice(&crc.to_le_bytes());

        let reused = self.lock_free().pop();
        let (index, fresh, size) = match reused {
            Some(slot) => (slot.index, false, slot.size),
            None => (self.next_index.fetch_add(1, Ordering::Relaxed), true, 0),
        };
        match self.write_slot(index, fresh, &buf) {
            Ok(()) => Ok(SlotRef { pool: self.clone(), index, size: Some(size.max(buf.len() as u64)) }),
            Err(e) => {
                // The client hears 451; make sure a restart does not deliver it anyway.
                if let Ok(file) = OpenOptions::new().write(true).open(self.path(index)) {
                    if file.write_all_at(&[0u8; HEADER_LEN], 0).is_ok() {
                        let _ = file.sync_data();
                    }
                }
                // The slot is not reused in this run: a failure that sticks to its file would
                // otherwise fail every later batch, and a new slot whose folder sync failed
                // may vanish in a crash. A restart finds it (free or torn) again.
                Err(e.into())
            }
        }
    }

    fn write_slot(&self, index: u64, fresh: bool, buf: &[u8]) -> std::io::Result<()> {
        let file = OpenOptions::new().write(true).create_new(fresh).open(self.path(index))?;
        file.write_all_at(buf, 0)?;
        file.sync_data()?;
        if fresh {
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Whether some slot could not be read on open.
    pub fn has_unreadable(&self) -> bool {
        self.unreadable
    }

    fn path(&self, index: u64) -> PathBuf {
        self.dir.join(format!("slot-{index:010}"))
    }

    fn lock_free(&self) -> std::sync::MutexGuard<'_, Vec<FreeSlot>> {
        self.free.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SlotRef {
    /// Frees the slot: zeroes its header (not synced, see the module doc) and hands it back
    /// for reuse.
    pub fn release(&self) -> std::io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.pool.path(self.index))?;
        let mut size = match self.size {
            Some(size) => size,
            None => file.metadata()?.len(),
        };
        file.write_all_at(&[0u8; HEADER_LEN], 0)?;
        if size > SHRINK_ABOVE {
            // The size change is journaled and may reach the disk before the zeroed header:
            // sync the header first, or a crash leaves a header pointing past the end.
            file.sync_data()?;
            file.set_len(PREWARM_SIZE as u64)?;
            size = PREWARM_SIZE as u64;
        }
        drop(file);
        let mut free = self.pool.lock_free();
        if free.len() >= KEEP_FREE {
            drop(free);
            return std::fs::remove_file(self.pool.path(self.index));
        }
        free.push(FreeSlot { index: self.index, size });
        Ok(())
    }
}

impl fmt::Display for SlotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.pool.path(self.index).display())
    }
}

/// The index of a slot file, only for the exact name [`Pool::path`] gives it (`slot-05` or
/// `slot-+5` would alias `slot-0000000005`).
fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("slot-")?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a slot file holds.
enum Slot {
    /// No segment; the file's size.
    Free(u64),
    Live(u64, Vec<SpooledMessage>),
    /// A bad header, length or checksum: a write that a crash cut off.
    Torn(&'static str),
}

fn checksum(seq_and_len: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(seq_and_len);
    hasher.update(payload);
    hasher.finalize()
}

/// Reads a slot. `Err` is an I/O error, or records that do not decode behind a good checksum.
fn read_slot(path: &Path) -> Result<Slot, SpoolError> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut header = [0u8; HEADER_LEN];
    if size < HEADER_LEN as u64 {
        return Ok(Slot::Free(size));
    }
    file.read_exact_at(&mut header, 0)?;
    if &header[..8] != MAGIC {
        return Ok(Slot::Free(size));
    }
    let field = |range: std::ops::Range<usize>| header[range].iter().rev().fold(0u64, |n, &b| n << 8 | u64::from(b));
    let (seq, len, crc) = (field(8..16), field(16..24), field(24..28) as u32);
    if len > size - HEADER_LEN as u64 {
        return Ok(Slot::Torn("length beyond the end of the file"));
    }
    if len > MAX_PAYLOAD {
        return Ok(Slot::Torn("length beyond any segment the writer makes"));
    }
    let mut payload = vec![0u8; len as usize];
    file.read_exact_at(&mut payload, HEADER_LEN as u64)?;
    if checksum(&header[8..24], &payload) != crc {
        return Ok(Slot::Torn("checksum mismatch"));
    }
    let messages = segment::decode(payload.as_slice(), payload.len(), &path.display().to_string())?;
    Ok(Slot::Live(seq, messages))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::segment::tests::message;

    fn live(dir: &Path) -> Vec<Segment> {
        Pool::open(dir).unwrap().1
    }

    #[test]
    fn written_segment_survives_a_restart_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, leftovers) = Pool::open(dir.path()).unwrap();
        assert!(leftovers.is_empty());
        let first = pool.write(&[message("A1", b"one\r\n"), message("A2", b"two\r\n")]).unwrap();
        let second = pool.write(&[message("B1", b"three\r\n")]).unwrap();
        let found = live(dir.path());
        let ids: Vec<Vec<&str>> =
            found.iter().map(|s| s.messages.iter().map(|m| m.record.id.as_str()).collect()).collect();
        assert_eq!(ids, vec![vec!["A1", "A2"], vec!["B1"]], "oldest first");
        first.release().unwrap();
        let found = live(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].messages[0].body.as_slice(), b"three\r\n");
        second.release().unwrap();
        assert!(live(dir.path()).is_empty());
    }

    #[test]
    fn segments_found_on_restart_are_released_by_path_and_big_slots_are_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = Pool::open(dir.path()).unwrap();
        let big = pool.write(&[message("BIG", &vec![b'x'; SHRINK_ABOVE as usize + 1])]).unwrap();
        let path = pool.path(big.index);
        big.release().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREWARM_SIZE as u64, "cut back on release");
        let kept = pool.write(&[message("KEPT", &vec![b'y'; SHRINK_ABOVE as usize + 1])]).unwrap();
        assert_eq!(kept.index, big.index, "the freed slot is reused");
        drop(pool);
        let (_pool, found) = Pool::open(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        found[0].retire().unwrap();
        assert!(live(dir.path()).is_empty());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), PREWARM_SIZE as u64);
    }

    #[test]
    fn a_freed_slot_is_reused_and_a_shorter_segment_reads_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = Pool::open(dir.path()).unwrap();
        let big = pool.write(&[message("BIG", &vec![b'x'; 200_000])]).unwrap();
        let index = big.index;
        big.release().unwrap();
        let small = pool.write(&[message("SMALL", b"s\r\n")]).unwrap();
        assert_eq!(small.index, index, "the freed slot is taken first");
        let found = live(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].messages.len(), 1);
        assert_eq!(found[0].messages[0].record.id, "SMALL");
        let files = std::fs::read_dir(dir.path().join(FOLDER)).unwrap().count();
        assert_eq!(files, PREWARM, "no file beyond the prewarmed ones");
    }

    #[test]
    fn a_torn_write_is_not_delivered_and_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = Pool::open(dir.path()).unwrap();
        let slot = pool.write(&[message("TORN", b"payload that a crash cut short\r\n")]).unwrap();
        let path = pool.path(slot.index);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + 40] ^= 0xFF; // a sector of the payload never reached the disk
        std::fs::write(&path, bytes).unwrap();
        let good = pool.write(&[message("GOOD", b"ok\r\n")]).unwrap();
        let found = live(dir.path());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].messages[0].record.id, "GOOD");
        let aside: Vec<String> = std::fs::read_dir(dir.path().join(CORRUPT_FOLDER))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(aside.len() == 1 && aside[0].starts_with(&format!("{name}.")), "{aside:?}");
        drop(good);
    }

    #[test]
    fn a_good_checksum_over_records_that_do_not_decode_stays_in_place_and_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = Pool::open(dir.path()).unwrap();
        let path = pool.path(0);
        let payload = b"MFSEG1\n{not a record}\n".to_vec();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&7u64.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        let mut seq_len = 7u64.to_le_bytes().to_vec();
        seq_len.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&checksum(&seq_len, &payload).to_le_bytes());
        bytes.extend_from_slice(&[0u8; 4]);
        bytes.extend_from_slice(&payload);
        std::fs::write(&path, &bytes).unwrap();
        let (pool, found) = Pool::open(dir.path()).unwrap();
        assert!(found.is_empty());
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "left as it was");
        assert!(!pool.lock_free().iter().any(|f| f.index == 0), "never handed out for reuse");
        assert!(!dir.path().join(CORRUPT_FOLDER).exists());
    }

    #[test]
    fn a_slot_whose_write_failed_is_not_handed_out_again() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = Pool::open(dir.path()).unwrap();
        let first = pool.path(0);
        std::fs::remove_file(&first).unwrap();
        std::fs::create_dir(&first).unwrap(); // opening it for writing now fails
        assert!(pool.write(&[message("FAILS", b"x\r\n")]).is_err());
        let slot = pool.write(&[message("OK", b"y\r\n")]).unwrap();
        assert_ne!(slot.index, 0);
        assert!(!pool.lock_free().iter().any(|f| f.index == 0));
    }

    #[test]
    fn only_the_exact_slot_name_counts() {
        assert_eq!(parse_name("slot-0000000005"), Some(5));
        for alias in ["slot-5", "slot-05", "slot-+000000005", "slot-00000000005", "slot-000000000x", "x"] {
            assert_eq!(parse_name(alias), None, "{alias}");
        }
    }

    #[test]
    fn new_slots_are_made_when_all_are_busy_and_surplus_free_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = Pool::open(dir.path()).unwrap();
        let held: Vec<SlotRef> =
            (0..KEEP_FREE + 3).map(|i| pool.write(&[message(&format!("M{i}"), b"x\r\n")]).unwrap()).collect();
        assert_eq!(live(dir.path()).len(), KEEP_FREE + 3);
        for slot in &held {
            slot.release().unwrap();
        }
        assert!(live(dir.path()).is_empty());
        let files = std::fs::read_dir(dir.path().join(FOLDER)).unwrap().count();
        assert_eq!(files, KEEP_FREE);
    }
}
