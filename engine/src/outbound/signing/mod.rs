//! DKIM signatures (RFC 6376, RFC 8463) and ARC seals (RFC 8617) on what mailflow sends, with
//! the `mail-auth` crate and the `[[dkim]]` keys.
//!
//! Input: a queued message's bytes (the file mapped, never copied). Output: header lines to put
//! in front of it. A message is DKIM-signed by the identity whose domain is its From domain or
//! a parent of it (relaxed DMARC alignment); forwards are ARC-sealed with the RSA identity of
//! our own domain (RFC 8617 allows rsa-sha256 only). Limits: a key that failed to load signs nothing; each message that needed it
//! logs an error and goes out unsigned (never dropped).
//!
//! Security: the message is untrusted; it only decides which of our keys signs it (by its
//! From domain), and callers sign only what we wrote or an authenticated client sent.

mod arc;
pub mod keys;

use std::net::IpAddr;

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

use crate::config::{Config, DkimConfig};
use keys::{DkimKey, KeyError};

/// Headers signed when present. From is signed twice (over-signed) so no second From can be
/// added without breaking the signature.
const SIGNED_HEADERS: [&str; 16] = [
    "From",
    "From",
    "Reply-To",
    "Sender",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Auto-Submitted",
    "List-Unsubscribe",
];

/// What a queued message gets before it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seal {
    /// Sent as is (mail of others: forwards without ARC, unauthenticated relay).
    None,
    /// DKIM-signed when its From domain has a key (replies, notices, bounces, submissions).
    Dkim,
    /// ARC-sealed with our key, carrying our verdicts on the message as received from
    /// `remote_ip` (forwards and redirects).
    Arc { remote_ip: Option<IpAddr> },
}

enum KeyedSigner {
    Ed25519(DkimSigner<Ed25519Key, Done>),
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
}

/// One `[[dkim]]` identity, or why it cannot sign.
struct Identity {
    domain: String,
    signer: Result<KeyedSigner, String>,
    sealer: Option<arc::KeyedSealer>,
}

/// Every signing identity, loaded once at start. Only RSA identities can seal (ARC).
pub struct Signer {
    identities: Vec<Identity>,
    /// The identity that seals forwards: the one of the SRS domain or the host name, else
    /// the first.
    arc: Option<usize>,
    /// Our authserv-id: the `Authentication-Results` header of ours that ARC carries on.
    authserv_id: String,
}

impl Signer {
    /// Loads every key of `config`; the ones that fail are returned (and sign nothing).
    pub fn from_config(config: &Config) -> (Signer, Vec<KeyError>) {
        let mut errors = Vec::new();
        let identities: Vec<Identity> = config
            .dkim
            .iter()
            .map(|dkim| {
                let loaded = keys::load(dkim).and_then(|key| Ok((dkim_signer(dkim, key), keys::load(dkim)?)));
                match loaded {
                    Ok((signer, second)) => Identity {
                        domain: dkim.domain.to_ascii_lowercase(),
                        signer: Ok(signer),
                        // RFC 8617 defines rsa-sha256 only: receivers reject ed25519 ARC sets.
                        sealer: matches!(second, DkimKey::Rsa(_)).then(|| arc::sealer(dkim, second)),
                    },
                    Err(e) => {
                        let message = e.to_string();
                        errors.push(e);
                        Identity { domain: dkim.domain.to_ascii_lowercase(), signer: Err(message), sealer: None }
                    }
                }
            })
            .collect();
        let srs_domain = config.srs.as_ref().map(|s| s.effective_domain(&config.smtp)).unwrap_or_default();
        let hostname = config.smtp.hostname.to_ascii_lowercase();
        let sealing = |i: &usize| identities[*i].sealer.is_some();
        let arc = best_match(&identities, &srs_domain)
            .filter(sealing)
            .or_else(|| best_match(&identities, &hostname).filter(sealing))
            .or_else(|| identities.iter().position(|id| id.sealer.is_some()));
        (Signer { identities, arc, authserv_id: config.smtp.hostname.clone() }, errors)
    }

    /// Whether any identity is configured.
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    /// The header lines `seal` asks for on `message`; empty when there is nothing to add.
    /// Never fails: a problem is logged and the message goes out as it is.
    pub fn headers_for(&self, seal: Seal, message: &[u8]) -> Vec<u8> {
        match seal {
            Seal::None => Vec::new(),
            Seal::Dkim => self.dkim_header(message).unwrap_or_default().into_bytes(),
            Seal::Arc { remote_ip } => {
                let Some(sealer) = self.arc.and_then(|i| self.identities[i].sealer.as_ref()) else {
                    return Vec::new();
                };
                arc::seal(sealer, message, &self.authserv_id, remote_ip).unwrap_or_default().into_bytes()
            }
        }
    }

    /// A `DKIM-Signature:` header line for `message`, when its From domain has a usable key.
    pub fn dkim_header(&self, message: &[u8]) -> Option<String> {
        let from = from_domain(message)?;
        let identity = &self.identities[best_match(&self.identities, &from)?];
        let signer = match &identity.signer {
            Ok(signer) => signer,
            Err(error) => {
                tracing::error!(domain = %identity.domain, error = %error, "DKIM key unusable: message sent unsigned");
                return None;
            }
        };
        let signed = match signer {
            KeyedSigner::Ed25519(s) => s.sign(message),
            KeyedSigner::Rsa(s) => s.sign(message),
        };
        match signed {
            Ok(signature) => Some(signature.to_header()),
            Err(e) => {
                tracing::error!(domain = %identity.domain, error = %e, "DKIM signing failed: message sent unsigned");
                None
            }
        }
    }
}

fn dkim_signer(config: &DkimConfig, key: DkimKey) -> KeyedSigner {
    macro_rules! build {
        ($key:expr) => {
            DkimSigner::from_key($key)
                .domain(config.domain.to_ascii_lowercase())
                .selector(config.selector.clone())
                .headers(SIGNED_HEADERS)
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed)
        };
    }
    match key {
        DkimKey::Ed25519(key) => KeyedSigner::Ed25519(build!(key)),
        DkimKey::Rsa(key) => KeyedSigner::Rsa(build!(key)),
    }
}

/// The identity for `domain`: its own, else the one of its closest parent domain.
fn best_match(identities: &[Identity], domain: &str) -> Option<usize> {
    let domain = domain.to_ascii_lowercase();
    identities
        .iter()
        .enumerate()
        .filter(|(_, id)| domain == id.domain || domain.ends_with(&format!(".{}", id.domain)))
        .max_by_key(|(_, id)| id.domain.len())
        .map(|(i, _)| i)
}

/// The domain of the first address in the message's From header.
fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let address = parsed.from()?.first()?.address()?.to_string();
    address.rsplit_once('@').map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase())
}
