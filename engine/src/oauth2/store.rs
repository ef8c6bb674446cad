//! Where OAuth2 tokens are kept: the `oauth2_tokens` table of the state store (account name →
//! JSON [`Stored`]), and a hand-over file for `mailflow oauth2 authorize` run while the daemon
//! holds the store (redb admits one process): `[state] dir/oauth2/<account>.json`, mode 0600,
//! moved into the store by the daemon the next time it needs the account's token.
//!
//! Security: refresh tokens are long-lived secrets. The hand-over file is created 0600 in a
//! 0700 folder and deleted once imported; nothing here logs a token.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

const TABLE: TableDefinition<&str, &str> = TableDefinition::new("oauth2_tokens");

/// One account's tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Stored {
    pub refresh_token: String,
    #[serde(default)]
    pub access_token: String,
    /// Unix seconds; 0 = unknown.
    #[serde(default)]
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("token store: {0}")]
    Db(String),
    #[error("token hand-over file {path}: {source}")]
    File { path: String, source: std::io::Error },
}

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

pub fn load(store: &redb::Database, account: &str) -> Result<Option<Stored>, StoreError> {
    let read = store.begin_read().map_err(db)?;
    let table = match read.open_table(TABLE) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db(e)),
    };
    let Some(value) = table.get(account).map_err(db)? else { return Ok(None) };
    Ok(serde_json::from_str(value.value()).ok())
}

pub fn save(store: &redb::Database, account: &str, tokens: &Stored) -> Result<(), StoreError> {
    let text = serde_json::to_string(tokens).map_err(db)?;
    let write = store.begin_write().map_err(db)?;
    write.open_table(TABLE).map_err(db)?.insert(account, text.as_str()).map_err(db)?;
    write.commit().map_err(db)
}

pub fn remove(store: &redb::Database, account: &str) -> Result<(), StoreError> {
    let write = store.begin_write().map_err(db)?;
    write.open_table(TABLE).map_err(db)?.remove(account).map_err(db)?;
    write.commit().map_err(db)
}

/// The hand-over file of `account` under `state_dir` (the name hex-escapes anything but
/// letters, digits, `-` and `_`, so an account name cannot leave the folder).
pub fn handover_path(state_dir: &Path, account: &str) -> PathBuf {
    let name: String = account
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    state_dir.join("oauth2").join(format!("{name}.json"))
}

/// Writes the hand-over file (atomically: a temporary file renamed into place).
pub fn write_handover(state_dir: &Path, account: &str, tokens: &Stored) -> Result<PathBuf, StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = handover_path(state_dir, account);
    let file_error = |source| StoreError::File { path: path.display().to_string(), source };
    let dir = path.parent().unwrap_or(state_dir);
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(file_error)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(file_error)?;
    file.write_all(serde_json::to_string(tokens).map_err(db)?.as_bytes()).map_err(file_error)?;
    file.sync_all().map_err(file_error)?;
    std::fs::rename(&tmp, &path).map_err(file_error)?;
    Ok(path)
}

/// Moves a waiting hand-over file into the store; true when there was one.
pub fn import_handover(store: &redb::Database, state_dir: &Path, account: &str) -> Result<bool, StoreError> {
    let path = handover_path(state_dir, account);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(StoreError::File { path: path.display().to_string(), source }),
    };
    let tokens: Stored = serde_json::from_str(&text).map_err(|e| StoreError::File {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    save(store, account, &tokens)?;
    std::fs::remove_file(&path).map_err(|source| StoreError::File { path: path.display().to_string(), source })?;
    Ok(true)
}

/// Where `mailflow oauth2 authorize` puts a new refresh token: into the store when no daemon
/// holds it, else into the hand-over file. Returns a sentence saying which.
pub fn save_from_cli(state_dir: &Path, account: &str, tokens: &Stored) -> Result<String, StoreError> {
    match crate::state::open(state_dir) {
        Ok(store) => {
            save(&store, account, tokens)?;
            drop::<Arc<redb::Database>>(store);
            Ok(format!("stored in {}", state_dir.join(crate::state::STORE_FILE).display()))
        }
        // The daemon runs and holds the store: it picks the file up.
        Err(_) => {
            let path = write_handover(state_dir, account, tokens)?;
            Ok(format!("handed to the running daemon through {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_the_store_and_the_handover_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::state::in_memory().unwrap();
        assert_eq!(load(&store, "a").unwrap(), None);
        let tokens = Stored { refresh_token: "r1".into(), access_token: "a1".into(), expires_at: 5 };
        save(&store, "a", &tokens).unwrap();
        assert_eq!(load(&store, "a").unwrap(), Some(tokens.clone()));
        assert!(!import_handover(&store, dir.path(), "a").unwrap());
        let new = Stored { refresh_token: "r2".into(), ..Stored::default() };
        let path = write_handover(dir.path(), "a", &new).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(import_handover(&store, dir.path(), "a").unwrap());
        assert!(!path.exists());
        assert_eq!(load(&store, "a").unwrap(), Some(new));
        remove(&store, "a").unwrap();
        assert_eq!(load(&store, "a").unwrap(), None);
        assert_eq!(handover_path(dir.path(), "../x y").file_name().unwrap(), "%2E%2E%2Fx%20y.json");
    }
}
