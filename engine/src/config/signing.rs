//! `[[dkim]]` signing identities and `[srs]` (Sender Rewriting Scheme) settings: plain types,
//! checked when the config loads. The keys and secrets themselves are read by the outbound
//! signer and the SRS codec (a missing key file is reported by `mailflow check`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::serde_duration;

/// DKIM signature algorithms mailflow signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum DkimAlgorithm {
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
}

impl DkimAlgorithm {
    /// The name used in the config and in the `a=` tag.
    pub fn name(self) -> &'static str {
        match self {
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
        }
    }
}

/// `[[dkim]]`: one signing identity. Mail whose From domain is `domain` (or a subdomain of it)
/// is signed with `d=domain; s=selector`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DkimConfig {
    pub domain: String,
    pub selector: String,
    /// PEM, PKCS#8 (`mailflow dkim keygen` writes one).
    pub key: PathBuf,
    #[serde(default = "default_algorithm")]
    pub algorithm: DkimAlgorithm,
}

fn default_algorithm() -> DkimAlgorithm {
    DkimAlgorithm::Ed25519Sha256
}

/// `[srs]`: envelope senders of forwards and redirects are rewritten into this domain, so the
/// next hop's SPF check sees our address; bounces to them are verified and sent back.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SrsConfig {
    /// The domain of SRS addresses; empty: the first of `[smtp] local_domains`.
    pub domain: String,
    /// The HMAC secret, inline. Set this or `secret_file`; with neither, a random secret is
    /// made once in the state folder (`srs.secret`).
    pub secret: String,
    pub secret_file: Option<PathBuf>,
    /// Former secrets: addresses made with them still verify (rotation), none are made.
    pub old_secrets: Vec<String>,
    /// How long an SRS address stays valid (whole days; the timestamp has day precision).
    #[serde(with = "serde_duration")]
    pub max_age: Duration,
}

impl Default for SrsConfig {
    fn default() -> Self {
        SrsConfig {
            domain: String::new(),
            secret: String::new(),
            secret_file: None,
            old_secrets: Vec::new(),
            max_age: Duration::from_secs(21 * 86_400),
        }
    }
}

/// Load-time checks of `[[dkim]]` and `[srs]`.
pub(super) fn validate(config: &super::Config) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for dkim in &config.dkim {
        if dkim.domain.trim().is_empty() || !dkim.domain.contains('.') {
            return Err(format!("[[dkim]] domain {:?} is not a domain name", dkim.domain));
        }
        let selector_ok = !dkim.selector.is_empty()
            && dkim
                .selector
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        if !selector_ok {
            return Err(format!("[[dkim]] selector {:?} is not a DNS label", dkim.selector));
        }
        if !seen.insert(dkim.domain.to_ascii_lowercase()) {
            return Err(format!("[[dkim]] domain {:?} has two keys; one per domain", dkim.domain));
        }
    }
    if let Some(srs) = &config.srs {
        if srs.domain.is_empty() && config.smtp.local_domains.is_empty() {
            return Err("[srs] domain is empty and there are no local_domains to default to".into());
        }
        if !srs.secret.is_empty() && srs.secret_file.is_some() {
            return Err("[srs] secret and secret_file: set one of them".into());
        }
        if srs.max_age < Duration::from_secs(86_400) {
            return Err("[srs] max_age must be at least 1d (SRS timestamps count days)".into());
        }
        if srs.max_age > Duration::from_secs(1000 * 86_400) {
            return Err("[srs] max_age must be under 1000d (SRS timestamps wrap after 1024 days)".into());
        }
    }
    Ok(())
}

impl SrsConfig {
    /// The SRS domain: `domain`, else the first local domain.
    pub fn effective_domain(&self, smtp: &super::SmtpConfig) -> String {
        if self.domain.is_empty() {
            smtp.local_domains.first().cloned().unwrap_or_else(|| smtp.hostname.clone())
        } else {
            self.domain.to_ascii_lowercase()
        }
    }
}

/// The SRS codec `[srs]` describes, `None` without an `[srs]` section. Reads `secret_file`;
/// with no secret configured, uses (and on first start creates, mode 0600) `srs.secret` in
/// the state folder.
pub fn load_srs(config: &super::Config) -> Result<Option<crate::proto::srs::Srs>, String> {
    let Some(srs) = &config.srs else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("[srs] secret_file {}: {e}", path.display()))
    };
    let current = if !srs.secret.is_empty() {
        srs.secret.clone()
    } else if let Some(path) = &srs.secret_file {
        read(path)?
    } else {
        let path = config.state.dir.join("srs.secret");
        if !path.exists() {
            create_secret(&path).map_err(|e| format!("[srs] cannot create {}: {e}", path.display()))?;
        }
        read(&path)?
    };
    if current.is_empty() {
        return Err("[srs] the secret is empty".into());
    }
    let secrets: Vec<String> = std::iter::once(current).chain(srs.old_secrets.iter().cloned()).collect();
    let days = srs.max_age.as_secs() / 86_400;
    Ok(crate::proto::srs::Srs::new(&srs.effective_domain(&config.smtp), &secrets, days))
}

/// What `mailflow check` can tell about `[srs]` without creating anything: a `secret_file`
/// must be readable and not empty.
pub fn check_srs(config: &super::Config) -> Result<(), String> {
    match config.srs.as_ref().and_then(|srs| srs.secret_file.as_ref()) {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Ok(()),
            Ok(_) => Err(format!("[srs] secret_file {}: empty", path.display())),
            Err(e) => Err(format!("[srs] secret_file {}: {e}", path.display())),
        },
        None => Ok(()),
    }
}

/// A random 32-character secret, written to a temp name with mode 0600 and renamed.
fn create_secret(path: &std::path::Path) -> std::io::Result<()> {
    use rand::distr::{Alphanumeric, SampleString};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let secret = Alphanumeric.sample_string(&mut rand::rng(), 32);
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
