//! The Maildir++ writer every delivery uses: the SMTP path's deliverer, the outbound queue
//! (local recipients of forwards and bounces) and the pollers' local copies.
//!
//! Input: message bytes (and, for a large message, the file they continue in) and a
//! recipient. In `[delivery] mode = "lmtp"` the outbound queue's local copies go to the LMTP
//! server instead ([`DeliveryTarget::deliver_local`]); the pollers' copies stay Maildir. Output: files in `tmp/`, renamed into `new/`/`cur/` once durable ([`writer`]).
//! A leaf of the message path: it knows the config's delivery settings and nothing of the
//! stages around it.
//!
//! Security: folder names come from scripts (`file_into`): [`writer::folder_dir`] keeps them
//! inside the recipient's Maildir.

pub mod writer;

use std::path::PathBuf;

use crate::config::{Config, DeliveryMode, LmtpEndpoint};
use crate::lmtp::Outcome;
use crate::message::stored::Tail;

/// Local Maildir delivery: what the deliverer and the outbound queue (for local recipients
/// of forwards and bounces) need from the config.
#[derive(Debug, Clone)]
pub struct DeliveryTarget {
    pub maildir_template: String,
    pub hostname: String,
    pub local_domains: Vec<String>,
    /// `[delivery] mode = "lmtp"`: where [`DeliveryTarget::deliver_local`] delivers.
    pub lmtp: Option<LmtpEndpoint>,
}

/// Why [`DeliveryTarget::deliver_local`] did not deliver.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The LMTP server refused the recipient for good (5xx).
    #[error("permanent error ({code}): {text}")]
    Refused { code: u16, text: String },
    /// The LMTP server said 4xx, or could not be reached.
    #[error("{0}")]
    Deferred(String),
}

impl LocalError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, LocalError::Refused { .. })
    }
}

impl DeliveryTarget {
    pub fn from_config(config: &Config) -> DeliveryTarget {
        DeliveryTarget {
            maildir_template: config.delivery.maildir.clone(),
            hostname: config.smtp.hostname.clone(),
            local_domains: config.smtp.local_domains.clone(),
            lmtp: match config.delivery.mode {
                DeliveryMode::Maildir => None,
                DeliveryMode::Lmtp => crate::config::delivery::parse_lmtp(&config.delivery.lmtp).ok(),
            },
        }
    }

    pub fn is_local(&self, addr: &str) -> bool {
        let domain = addr.rsplit_once('@').map_or("", |(_, d)| d);
        self.local_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Delivers `body` to `rcpt`'s INBOX with a `Return-Path:` of `sender`: into its Maildir,
    /// or to the LMTP server (which adds the `Return-Path:` itself). Blocking.
    pub fn deliver_local(&self, rcpt: &str, sender: &str, body: &[u8]) -> Result<(), LocalError> {
        if let Some(endpoint) = &self.lmtp {
            return match crate::lmtp::deliver_one(endpoint, &self.hostname, sender, rcpt, body) {
                Outcome::Delivered(_) => Ok(()),
                Outcome::Deferred(reason) => Err(LocalError::Deferred(format!("LMTP: {reason}"))),
                Outcome::Failed(reply) => Err(LocalError::Refused { code: reply.code, text: reply.text }),
            };
        }
        let root = writer::root_for(&self.maildir_template, rcpt);
        let return_path = format!("Return-Path: <{sender}>\r\n");
        let mut pending = writer::SyncBatch::default();
        deliver_copies(self, &root, &[], &[return_path.as_bytes(), body], None, "", &mut pending)?;
        pending.sync()?;
        Ok(())
    }
}

/// Writes one copy per folder (`folders` empty: INBOX) under the Maildir `root`, creating the
/// folders on demand. Blocking.
pub fn deliver_copies(
    target: &DeliveryTarget,
    root: &std::path::Path,
    folders: &[&str],
    parts: &[&[u8]],
    tail: Option<&Tail>,
    flags: &str,
    pending: &mut writer::SyncBatch,
) -> std::io::Result<Vec<PathBuf>> {
    let targets: Vec<Option<&str>> =
        if folders.is_empty() { vec![None] } else { folders.iter().map(|f| Some(*f)).collect() };
    let mut paths = Vec::with_capacity(targets.len());
    for folder in targets {
        let dir = writer::folder_dir(root, folder);
        // Optimistic: the folders almost always exist, so write first and create them only
        // when the write finds one missing (saves six stat calls per delivery).
        let path = match writer::write_message(&dir, &target.hostname, parts, tail, flags, pending) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                writer::ensure(root, false)?;
                if dir != root {
                    writer::ensure(&dir, true)?;
                }
                writer::write_message(&dir, &target.hostname, parts, tail, flags, pending)?
            }
            other => other?,
        };
        paths.push(path);
    }
    Ok(paths)
}
