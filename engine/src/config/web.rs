//! `[web]`: the status page and decision traces (docs/web.md).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::serde_duration;

/// `[web]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Where the status page listens ("127.0.0.1:9426"); empty: no page.
    pub listen: String,
    /// argon2id hash from `mailflow hash-password`; empty: nobody can log in.
    pub password_hash: String,
    /// How long traces are kept in the state store; "0s" records none.
    #[serde(with = "serde_duration")]
    pub trace_retention: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            listen: String::new(),
            password_hash: String::new(),
            trace_retention: Duration::from_secs(7 * 86_400),
        }
    }
}
