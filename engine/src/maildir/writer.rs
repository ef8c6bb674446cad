//! Maildir++ delivery: write into `tmp/`, fsync, rename into `new/` (or `cur/` with flags),
//! fsync the folder. Folder `A/B` is the sub-folder `.A.B/` of the recipient's root, created on
//! demand (with the `maildirfolder` marker Dovecot and Courier expect).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::message::stored::Tail;

static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// The Maildir root of `recipient` (`local@domain`) from the `[delivery] maildir` template.
/// `/` in a local part cannot climb out of the template's folder: it becomes `_`.
pub fn root_for(template: &str, recipient: &str) -> PathBuf {
    let (local, domain) = recipient.rsplit_once('@').unwrap_or((recipient, ""));
    let clean = |s: &str| s.to_lowercase().replace(['/', '\\', '\0'], "_");
    PathBuf::from(template.replace("{local}", &clean(local)).replace("{domain}", &clean(domain)))
}

/// The Maildir of `folder` under `root`: the root for INBOX (or none), `.A.B` for `A/B` or `A.B`.
pub fn folder_dir(root: &Path, folder: Option<&str>) -> PathBuf {
    match folder {
        None => root.to_path_buf(),
        Some(f) if f.eq_ignore_ascii_case("INBOX") => root.to_path_buf(),
        Some(f) => {
            let name: String =
                f.split(['/', '.']).filter(|s| !s.is_empty() && *s != "..").collect::<Vec<_>>().join(".");
            root.join(format!(".{name}"))
        }
    }
}

/// Creates `tmp/`, `new/`, `cur/` (and the `maildirfolder` marker for a sub-folder).
pub fn ensure(dir: &Path, is_subfolder: bool) -> std::io::Result<()> {
    if dir.join("cur").is_dir() && dir.join("new").is_dir() && dir.join("tmp").is_dir() {
        return Ok(());
    }
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    if is_subfolder {
        File::create(dir.join("maildirfolder"))?;
    }
    Ok(())
}

/// A unique file name per the Maildir spec: time, microseconds, pid, a counter, host, size.
fn unique_name(hostname: &str, size: usize) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let n = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    let host = hostname.replace('/', "\\057").replace(':', "\\072");
    static PID: OnceLock<u32> = OnceLock::new();
    let pid = *PID.get_or_init(std::process::id);
    format!("{}.M{}P{}Q{}.{},S={}", now.as_secs(), now.subsec_micros(), pid, n, host, size)
}

fn message_size(parts: &[&[u8]], tail: Option<&Tail>) -> usize {
    parts.iter().map(|p| p.len()).sum::<usize>() + tail.map_or(0, |t| t.len as usize)
}

/// A new message's paths in `dir`: `tmp/NAME`, and `new/NAME` or (with `flags`)
/// `cur/NAME:2,FLAGS`; and which of `new`/`cur` that is.
fn new_paths(dir: &Path, hostname: &str, size: usize, flags: &str) -> (PathBuf, PathBuf, &'static str) {
    let name = unique_name(hostname, size);
    let tmp = dir.join("tmp").join(&name);
    let (target_dir, final_name) = if flags.is_empty() { ("new", name) } else { ("cur", format!("{name}:2,{flags}")) };
    (tmp, dir.join(target_dir).join(final_name), target_dir)
}

/// The durability still owed for a batch of deliveries. Until [`SyncBatch::sync`] returns
/// `Ok`, the batch's messages may vanish in a crash, so nothing may be acknowledged or removed
/// before it.
///
/// Two modes. Per file ([`Default`]): each file is fsynced and renamed into place at once, and
/// only the folder fsyncs wait for `sync` (one per folder per batch). Deferred
/// ([`SyncBatch::deferred`], for the deliverer's spool segments): files wait in `tmp/`
/// unsynced, and `sync` makes them all durable with one `syncfs(2)` per filesystem, renames them
/// into place and fsyncs their folders — a few disk flushes per batch instead of two per
/// message (on this project's VMs a flush costs ~0.3 ms of CPU in the guest, and at 20
/// sessions the CPU is the limit). A reader never sees a partial file in `new/`: the rename
/// comes after the data is on disk.
#[derive(Debug, Default)]
pub struct SyncBatch {
    dirs: BTreeSet<PathBuf>,
    /// Deferred mode: files written to `tmp/`, not yet synced: (tmp path, final path).
    staged: Vec<(PathBuf, PathBuf)>,
    /// Deferred mode: target folders already seen to exist in this batch (one `stat` per
    /// folder and batch, not per message).
    present: BTreeSet<PathBuf>,
    deferred: bool,
    /// Where a message given in parts is put together, so that its file gets one `write`.
    scratch: Vec<u8>,
}

impl SyncBatch {
    /// A batch in deferred mode (see the type's documentation).
    pub fn deferred() -> SyncBatch {
        SyncBatch { deferred: true, ..SyncBatch::default() }
    }

    /// Makes every message of the batch durable and in place.
    pub fn sync(&mut self) -> std::io::Result<()> {
        let staged = std::mem::take(&mut self.staged);
        self.present.clear();
        if !staged.is_empty() {
            let folders: BTreeSet<&Path> =
                staged.iter().map(|(tmp, _)| tmp.parent().unwrap_or(Path::new("."))).collect();
            let mut devices = BTreeSet::new();
            for folder in folders {
                if devices.insert(std::os::unix::fs::MetadataExt::dev(&fs::metadata(folder)?)) {
                    syncfs(folder)?;
                }
            }
            for (tmp, dest) in &staged {
                fs::rename(tmp, dest)?;
                if let Some(folder) = dest.parent() {
                    self.dirs.insert(folder.to_path_buf());
                }
            }
        }
        for dir in std::mem::take(&mut self.dirs) {
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Removes the staged files of a batch that will not be synced (after an error).
    pub fn discard(&mut self) {
        for (tmp, _) in std::mem::take(&mut self.staged) {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// `syncfs(2)` on the filesystem holding `folder`: everything written to it is on disk when
/// this returns `Ok` (Linux reports writeback errors here since 5.8).
fn syncfs(folder: &Path) -> std::io::Result<()> {
    let dir = File::open(folder)?;
    rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
}

/// Writes `parts` (concatenated, then `tail` copied from its file) as one message into `dir`,
/// which must exist. With `flags` (Maildir info letters, e.g. "FS") it goes to
/// `cur/name:2,flags`, else to `new/`. Returns
/// the final path once the file is fsynced and renamed into place; its folder is added to
/// `pending`, whose [`SyncBatch::sync`] makes the name durable. Blocking.
pub fn write_message(
    dir: &Path,
    hostname: &str,
    parts: &[&[u8]],
    tail: Option<&Tail>,
    flags: &str,
    pending: &mut SyncBatch,
) -> std::io::Result<PathBuf> {
    let size = message_size(parts, tail);
    let (tmp, dest, target_dir) = new_paths(dir, hostname, size, flags);
    let deferred = pending.deferred;
    let result = (|| {
        let mut file = File::create(&tmp)?;
        match parts {
            [one] => file.write_all(one)?,
            _ => {
                // One write, not one per part: a short first write (the Return-Path line)
                // makes the kernel zero the rest of the file's first block, which the next
                // write then fills again (visible in perf as `memset` under `write`).
                pending.scratch.clear();
                pending.scratch.reserve(size);
                for part in parts {
                    pending.scratch.extend_from_slice(part);
                }
                file.write_all(&pending.scratch)?;
            }
        }
        if let Some(tail) = tail {
            // A large message: file to file, never whole in memory.
            tail.copy_to(&mut file)?;
        }
        if deferred {
            // The folder must exist now: `sync` renames into it later.
            let target = dir.join(target_dir);
            if !pending.present.contains(&target) {
                if !target.is_dir() {
                    return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "Maildir folder missing"));
                }
                pending.present.insert(target);
            }
            return Ok(());
        }
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &dest)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if deferred {
        pending.staged.push((tmp, dest.clone()));
    } else {
        pending.dirs.insert(dir.join(target_dir));
    }
    Ok(dest)
}

/// Writes `parts` (then `tail`) into `dir/tmp/` under a new unique name, fsynced, and returns
/// (the temporary path, the final one: `new/NAME`, or `cur/NAME:2,FLAGS`) without renaming: the
/// caller moves it into place once it has recorded that it did (a poller's journal), so a crash
/// in between neither loses nor duplicates the copy. `dir` must exist.
pub fn stage_file(
    dir: &Path,
    hostname: &str,
    parts: &[&[u8]],
    tail: Option<&Tail>,
    flags: &str,
) -> std::io::Result<(PathBuf, PathBuf)> {
    let (tmp, dest, _) = new_paths(dir, hostname, message_size(parts, tail), flags);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        for part in parts {
            file.write_all(part)?;
        }
        if let Some(tail) = tail {
            tail.copy_to(&mut file)?;
        }
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((tmp, dest))
}

/// Maildir info letters for IMAP flags, sorted as the spec wants; keywords have no letter.
pub fn info_flags<'a>(flags: impl IntoIterator<Item = &'a str>) -> String {
    let mut letters: Vec<char> = flags
        .into_iter()
        .filter_map(|f| match f.to_ascii_lowercase().as_str() {
            "\\seen" => Some('S'),
            "\\flagged" => Some('F'),
            "\\answered" => Some('R'),
            "\\draft" => Some('D'),
            "\\deleted" => Some('T'),
            _ => None,
        })
        .collect();
    letters.sort_unstable();
    letters.dedup();
    letters.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_and_folders() {
        assert_eq!(root_for("/m/{local}@{domain}", "Ann@Example.org"), PathBuf::from("/m/ann@example.org"));
        assert_eq!(root_for("/m/{local}", "/etc/x@a"), PathBuf::from("/m/_etc_x"));
        assert_eq!(folder_dir(Path::new("/r"), Some("Lists/Rust")), PathBuf::from("/r/.Lists.Rust"));
        assert_eq!(folder_dir(Path::new("/r"), Some("inbox")), PathBuf::from("/r"));
    }

    #[test]
    fn deferred_batch_appears_only_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), false).unwrap();
        let mut batch = SyncBatch::deferred();
        let a = write_message(dir.path(), "h", &[b"a\r\n"], None, "", &mut batch).unwrap();
        let b = write_message(dir.path(), "h", &[b"b\r\n"], None, "S", &mut batch).unwrap();
        let count = |sub: &str| fs::read_dir(dir.path().join(sub)).unwrap().count();
        // Nothing a Maildir reader looks at yet: both wait, unsynced, in tmp/.
        assert_eq!((count("tmp"), count("new"), count("cur")), (2, 0, 0));
        batch.sync().unwrap();
        assert_eq!((count("tmp"), count("new"), count("cur")), (0, 1, 1));
        assert_eq!(fs::read(a).unwrap(), b"a\r\n");
        assert_eq!(fs::read(b).unwrap(), b"b\r\n");
        // A batch that will not be synced leaves nothing behind.
        let mut dropped = SyncBatch::deferred();
        write_message(dir.path(), "h", &[b"c"], None, "", &mut dropped).unwrap();
        dropped.discard();
        assert_eq!((count("tmp"), count("new")), (0, 1));
    }

    #[test]
    fn writes_into_new_and_cur() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path(), false).unwrap();
        let mut pending = SyncBatch::default();
        let path = write_message(dir.path(), "h", &[b"a: b\r\n", b"\r\nx\r\n"], None, "", &mut pending).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"a: b\r\n\r\nx\r\n");
        assert!(path.parent().unwrap().ends_with("new"));
        let seen =
            write_message(dir.path(), "h", &[b"x"], None, &info_flags(["\\Seen", "\\Flagged"]), &mut pending).unwrap();
        pending.sync().unwrap();
        assert!(seen.to_string_lossy().ends_with(":2,FS"));
        assert!(fs::read_dir(dir.path().join("tmp")).unwrap().next().is_none());
    }
}
