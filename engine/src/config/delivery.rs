//! `[delivery]`: where local recipients' mail goes — Maildir++ files written by mailflow
//! (`mode = "maildir"`, the default), or a mail store's LMTP server (`mode = "lmtp"`, RFC 2033:
//! Dovecot, Cyrus) at `lmtp = "unix:/run/dovecot/lmtp"` or `"127.0.0.1:24"`.
//!
//! Input: the parsed TOML section. Output: plain types, and [`LmtpEndpoint`] checked when the
//! config is loaded (`mailflow check` and `run` both go through [`validate`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[delivery]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// How local recipients' mail is stored.
    pub mode: DeliveryMode,
    /// Maildir++ root per local recipient; `{local}` and `{domain}` are lower-cased. Also where
    /// the outbound queue's local copies and the pollers' `deliver` copies go in `lmtp` mode.
    pub maildir: String,
    /// `mode = "lmtp"`: the server, `unix:/path/to/socket` or `host:port`.
    pub lmtp: String,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            mode: DeliveryMode::Maildir,
            maildir: "data/mail/{local}@{domain}".to_string(),
            lmtp: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryMode {
    #[default]
    Maildir,
    Lmtp,
}

/// Where the LMTP server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LmtpEndpoint {
    Unix(PathBuf),
    /// `host:port`, resolved at each connection.
    Tcp(String),
}

impl std::fmt::Display for LmtpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LmtpEndpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            LmtpEndpoint::Tcp(addr) => f.write_str(addr),
        }
    }
}

/// Parses `[delivery] lmtp`: `unix:/path` (absolute) or `host:port` (IPv6 as `[::1]:24`).
pub fn parse_lmtp(text: &str) -> Result<LmtpEndpoint, String> {
    let text = text.trim();
    if let Some(path) = text.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(format!("[delivery] lmtp {text:?}: a socket path must be absolute (unix:/run/dovecot/lmtp)"));
        }
        return Ok(LmtpEndpoint::Unix(PathBuf::from(path)));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("[delivery] lmtp {text:?}: use unix:/path/to/socket or host:port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match port.parse::<u16>() {
        Ok(p) if p > 0 && !host.is_empty() => Ok(LmtpEndpoint::Tcp(text.to_string())),
        _ => Err(format!("[delivery] lmtp {text:?}: use unix:/path/to/socket or host:port")),
    }
}

/// Checks the section: `mode = "lmtp"` needs a valid `lmtp`.
pub fn validate(config: &DeliveryConfig) -> Result<(), String> {
    match config.mode {
        DeliveryMode::Lmtp if config.lmtp.trim().is_empty() => {
            Err("[delivery] mode = \"lmtp\" needs lmtp = \"unix:/path\" or \"host:port\"".into())
        }
        DeliveryMode::Lmtp => parse_lmtp(&config.lmtp).map(|_| ()),
        DeliveryMode::Maildir if !config.lmtp.is_empty() => parse_lmtp(&config.lmtp).map(|_| ()),
        DeliveryMode::Maildir => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(parse_lmtp("unix:/run/dovecot/lmtp"), Ok(LmtpEndpoint::Unix("/run/dovecot/lmtp".into())));
        assert_eq!(parse_lmtp("127.0.0.1:24"), Ok(LmtpEndpoint::Tcp("127.0.0.1:24".into())));
        assert_eq!(parse_lmtp("[::1]:24"), Ok(LmtpEndpoint::Tcp("[::1]:24".into())));
        assert_eq!(parse_lmtp("store.internal:2424"), Ok(LmtpEndpoint::Tcp("store.internal:2424".into())));
        for bad in ["unix:run/lmtp", "127.0.0.1", "127.0.0.1:0", ":24", "host:port", ""] {
            assert!(parse_lmtp(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lmtp_mode_needs_a_server() {
        let mut config = DeliveryConfig { mode: DeliveryMode::Lmtp, ..DeliveryConfig::default() };
        assert!(validate(&config).unwrap_err().contains("needs lmtp"));
        config.lmtp = "unix:/run/dovecot/lmtp".into();
        assert!(validate(&config).is_ok());
        assert!(validate(&DeliveryConfig::default()).is_ok());
    }
}
