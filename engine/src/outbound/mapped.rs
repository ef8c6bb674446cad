//! Queue files mapped into memory: sent and signed from the page cache, so a 20 MB forward
//! costs no 20 MB allocation.

/// Maps `file`; `None` for an empty file (which cannot be mapped).
pub(super) fn map_file(file: &std::fs::File) -> std::io::Result<Option<memmap2::Mmap>> {
    if file.metadata()?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: the one `unsafe` of the daemon. A mapping is undefined behaviour only if the
    // file changes under it; queue files are written once (temp file, fsync, rename), never
    // changed in place, and removed only by unlinking (the mapping keeps the data). A disk
    // error while a page is read, or someone else truncating the file, raises SIGBUS.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(file)? };
    Ok(Some(map))
}
