//! IMAP: messages larger than [`SPILL_AT`], fetched in pieces into a file.
//!
//! Whole messages are fetched with `BODY.PEEK[]<0.SPILL_AT>`: a message up to that size comes
//! whole in the batch's one `UID FETCH`, as before; of a larger one only its first part does,
//! and the rest follows here in 1 MB pieces (`BODY.PEEK[]<offset.length>`, RFC 3501 §6.4.5),
//! each written to a file as it arrives. The IMAP library holds a response whole in memory, so
//! this is what keeps a poller's memory bounded whatever the message size.
//!
//! Security: the server's `RFC822.SIZE` is only a hint; the fetch stops at a short piece and
//! at [`MAX_MESSAGE`] bytes, whatever the server claims, and a piece longer than asked for is
//! an error (never appended).

use std::path::Path;
use std::sync::Arc;

use async_imap::types::Fetch;
use futures::TryStreamExt;

use crate::fetch::pop3::MAX_MESSAGE;
use crate::fetch::retry::Warned;
use crate::message::stored::SPILL_AT;
use crate::message::MessageView;
use crate::spool::large::{Spill, Spilled, Staged};

/// The fetch items of a batch of whole messages: up to [`SPILL_AT`] bytes of each.
pub const BODY_QUERY: &str = "(UID FLAGS RFC822.SIZE BODY.PEEK[]<0.262144>)";
/// The same for one message, without its flags.
pub const WHOLE_QUERY: &str = "(UID RFC822.SIZE BODY.PEEK[]<0.262144>)";
/// The size of each further piece.
const PIECE: usize = 1024 * 1024;

const _: () = assert!(SPILL_AT == 262_144, "BODY_QUERY names SPILL_AT");

/// Whether `fetch` holds only the first part of a larger message: exactly the length asked
/// for came back. `RFC822.SIZE` is not consulted (some servers report an estimate); a message
/// of exactly that length costs one more fetch, which answers with an empty string. More than
/// asked means the server ignored the partial fetch and sent the whole message.
pub fn is_partial(got: usize) -> bool {
    got == SPILL_AT
}

/// Whether the server says the message is larger than a poller fetches; the warning that
/// it is left on the server is logged once a day per message (and at debug level otherwise).
pub fn too_large(fetch: &Fetch, uid: u32) -> bool {
    let Some(size) = fetch.size.filter(|&size| size as usize > MAX_MESSAGE) else { return false };
    static WARNED: std::sync::Mutex<Option<Warned>> = std::sync::Mutex::new(None);
    let mut warned = WARNED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if warned.get_or_insert_with(Warned::default).due(&format!("{uid}:{size}"), std::time::Instant::now()) {
        tracing::warn!(uid, size, "message larger than the fetch limit: left on the server (said once a day)");
    } else {
        tracing::debug!(uid, size, "message larger than the fetch limit: left on the server");
    }
    true
}

/// A fetched message: its view, and the file that holds it when large (removed when dropped).
pub type Whole = (MessageView, Option<Arc<Staged>>);

/// The view of a message from its bytes in memory.
pub fn in_memory(raw: Vec<u8>, flags: Vec<String>) -> Whole {
    (MessageView::with_flags(Arc::new(raw), flags), None)
}

/// Fetches the rest of message `uid` after `first` into a file under `dir`. `None` when the
/// message left the server meanwhile, or turned out larger than [`MAX_MESSAGE`] (left there,
/// with a warning).
pub async fn rest(
    session: &mut super::ImapSession,
    uid: u32,
    first: &[u8],
    flags: Vec<String>,
    dir: &Path,
) -> Result<Option<Whole>, super::ImapError> {
    let mut spill = Spill::new(dir);
    std::io::Write::write_all(&mut spill, first)?;
    loop {
        let offset = spill.len();
        if offset as usize >= MAX_MESSAGE {
            tracing::warn!(uid, "message larger than the fetch limit ({MAX_MESSAGE} bytes): left on the server");
            return Ok(None);
        }
        let query = format!("(UID BODY.PEEK[]<{offset}.{PIECE}>)");
        let uid_text = uid.to_string();
        let fetches: Vec<Fetch> = super::timed(super::COMMAND_TIMEOUT, async {
            session.uid_fetch(&uid_text, &query).await?.try_collect().await
        })
        .await?;
        let Some(piece) = fetches.iter().find(|f| f.uid == Some(uid)).and_then(|f| f.body()) else {
            return Ok(None);
        };
        if piece.len() > PIECE {
            // Not the piece asked for: a server that ignores partial fetches.
            return Err(super::ImapError::Other(format!(
                "message {uid}: the server answered a partial fetch with {} bytes",
                piece.len()
            )));
        }
        std::io::Write::write_all(&mut spill, piece)?;
        if piece.len() < PIECE {
            break;
        }
    }
    Ok(Some(match spill.finish()? {
        Spilled::Memory(raw) => in_memory(raw, flags),
        Spilled::File(file) => {
            (MessageView::from_file(Arc::new(Vec::new()), file.tail(), flags)?, Some(Arc::new(file)))
        }
    }))
}
