//! The plugin interface of mailflow.
//!
//! Scripts decide; plugins give them powers a script language should not implement itself
//! (a persistent store, HTTP, external programs). A plugin is a crate in the workspace,
//! compiled in and enabled by name in `[plugins] enabled`; it registers one rhai static module
//! (`kv::get`, `http::post_json`, ...) and knows nothing of the engine's insides: what it needs
//! from the daemon comes through [`PluginContext`] and the [`Host`] trait.
//!
//! Rules for plugin functions:
//! - anything that can block (network, process, disk) must finish within
//!   [`PluginContext::call_budget`]: its own timeout, capped by what is left of the hook's
//!   `timeout_ms`;
//! - failures are returned as rhai errors (`Err("...".into())`): the script host turns them
//!   into a script error and `on_error` (451 at SMTP stages);
//! - never panic on script input.
//!
//! ```
//! use mailflow_plugin::{Plugin, PluginContext, PluginError};
//! use rhai::Module;
//!
//! struct Hello;
//! impl Plugin for Hello {
//!     fn name(&self) -> &'static str { "hello" }
//!     fn module(&self) -> Module {
//!         let mut module = Module::new();
//!         module.set_native_fn("greet", |who: &str| Ok(format!("hello {who}")));
//!         module
//!     }
//! }
//! fn build(_: &toml::Table, _: &PluginContext) -> Result<Box<dyn Plugin>, PluginError> {
//!     Ok(Box::new(Hello))
//! }
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use rhai;

/// What a plugin adds to the script engine.
pub trait Plugin: Send + Sync {
    /// The name scripts use as module prefix (`kv` → `kv::get`) and the config uses in
    /// `[plugins] enabled` and `[plugins.<name>]`.
    fn name(&self) -> &'static str;

    /// The functions, as a rhai module registered under [`Plugin::name`].
    fn module(&self) -> rhai::Module;
}

/// Services of the daemon a plugin may use.
pub trait Host: Send + Sync {
    /// Time left in the hook call running on this thread; `None` outside a hook call.
    fn hook_time_left(&self) -> Option<Duration>;

    /// A script's `msg` value as a source to stream from (a large message stays in its file);
    /// `None` if the value is not a message.
    fn message_source(&self, value: &rhai::Dynamic) -> Option<MessageSource>;

    /// Replaces the message of the running hook call with `bytes` (fdm's `rewrite`): recorded
    /// as an action, applied before the message is stored. Errors outside a `data`/`fetched`
    /// call.
    fn rewrite_message(&self, bytes: Vec<u8>) -> Result<(), String>;

    /// The envelope and client facts of the running hook call (what the script sees as
    /// `ctx`), for plugins that pass them on (a spam scanner); `None` outside a hook call.
    fn envelope(&self) -> Option<Envelope> {
        None
    }
}

/// Who sent a message and to whom, as the running hook call knows it. Strings are "" when
/// not known at this stage (a fetched message has no client IP or HELO).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// MAIL FROM ("" for the null sender); for a fetched message, its Return-Path or From.
    pub sender: String,
    pub recipients: Vec<String>,
    pub remote_ip: String,
    pub helo: String,
    /// The SMTP AUTH user name.
    pub auth_user: String,
}

/// A message to stream: its bytes in memory, or `prefix` followed by `len` bytes from
/// `offset` of the file at `path` (a large message the daemon keeps in a file).
#[derive(Debug, Clone)]
pub enum MessageSource {
    Memory(Arc<Vec<u8>>),
    File { prefix: Arc<Vec<u8>>, path: PathBuf, offset: u64, len: u64 },
}

impl MessageSource {
    /// The message's size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            MessageSource::Memory(bytes) => bytes.len() as u64,
            MessageSource::File { prefix, len, .. } => prefix.len() as u64 + len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole message as a reader (a file part read as it is consumed, never loaded whole).
    pub fn reader(&self) -> std::io::Result<Box<dyn std::io::Read + Send>> {
        use std::io::{Cursor, Read, Seek};
        match self {
            MessageSource::Memory(bytes) => Ok(Box::new(Cursor::new(ArcBytes(bytes.clone())))),
            MessageSource::File { prefix, path, offset, len } => {
                let mut file = std::fs::File::open(path)?;
                file.seek(std::io::SeekFrom::Start(*offset))?;
                Ok(Box::new(Cursor::new(ArcBytes(prefix.clone())).chain(file.take(*len))))
            }
        }
    }

    /// Writes the whole message to `out`, a file part in 64 KB reads.
    pub fn write_to(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        match self {
            MessageSource::Memory(bytes) => out.write_all(bytes),
            MessageSource::File { prefix, path, offset, len } => {
                use std::io::{Read, Seek};
                out.write_all(prefix)?;
                let mut file = std::fs::File::open(path)?;
                file.seek(std::io::SeekFrom::Start(*offset))?;
                let copied = std::io::copy(&mut file.take(*len), out)?;
                if copied != *len {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "message file shorter than recorded",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// Shared bytes readable through a `Cursor` without copying them.
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Given to each plugin when it is built.
#[derive(Clone)]
pub struct PluginContext {
    /// The daemon's embedded store (redb), shared by every plugin and the daemon itself; each
    /// plugin uses its own tables. In `mailflow check`/`test` this is an in-memory store, so a
    /// dry run changes nothing.
    pub store: Arc<redb::Database>,
    /// `[state] dir`.
    pub state_dir: PathBuf,
    pub host: Arc<dyn Host>,
}

impl PluginContext {
    /// How long a blocking call may take: `own` (the plugin's timeout) capped by what is left
    /// of the hook's time. Zero means the hook is already out of time.
    pub fn call_budget(&self, own: Duration) -> Duration {
        match self.host.hook_time_left() {
            Some(left) => own.min(left),
            None => own,
        }
    }
}

/// Why a plugin could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("[plugins.{plugin}]: {message}")]
    Config { plugin: &'static str, message: String },
    #[error("plugin {plugin}: {message}")]
    Setup { plugin: &'static str, message: String },
}

impl PluginError {
    pub fn config(plugin: &'static str, message: impl ToString) -> PluginError {
        PluginError::Config { plugin, message: message.to_string() }
    }
}

/// Parses a plugin's config table into its typed config (use `#[serde(deny_unknown_fields)]`
/// on `T` so an unknown key is an error naming it).
pub fn parse_config<T: serde::de::DeserializeOwned>(
    plugin: &'static str,
    table: &toml::Table,
) -> Result<T, PluginError> {
    toml::Value::Table(table.clone()).try_into::<T>().map_err(|e| PluginError::config(plugin, e.message().trim()))
}

/// A rhai error value from a message.
pub fn error(message: impl Into<String>) -> Box<rhai::EvalAltResult> {
    message.into().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        timeout_ms: u64,
    }

    #[test]
    fn a_file_source_reads_prefix_then_its_part() {
        use std::io::Read;
        let path = std::env::temp_dir().join(format!("mf-api-reader-{}", std::process::id()));
        std::fs::write(&path, b"xxBODY\nzz").unwrap();
        let source =
            MessageSource::File { prefix: Arc::new(b"H: 1\n".to_vec()), path: path.clone(), offset: 2, len: 5 };
        let mut out = Vec::new();
        source.reader().unwrap().read_to_end(&mut out).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(out, b"H: 1\nBODY\n");
    }

    #[test]
    fn unknown_key_is_named() {
        let table: toml::Table = toml::from_str("timeout_ms = 5\nbogus = 1\n").unwrap();
        let err = parse_config::<Conf>("x", &table).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(err.starts_with("[plugins.x]"), "{err}");
    }
}
