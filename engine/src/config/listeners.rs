//! `[[smtp.listeners]]` (an address with a role and a TLS mode) and the `auth_users` entries
//! (a hash, or a table with the addresses that user may send as). The old `listen` and
//! `tls_listen` keys are MX listeners without and with implicit TLS.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerRole {
    /// Mail from the internet: no AUTH needed, only local domains as recipients.
    #[default]
    Mx,
    /// Mail from our own users (port 587/465): AUTH before MAIL, any recipient, DKIM-signed.
    Submission,
}

impl ListenerRole {
    /// `ctx.listener` in scripts.
    pub fn name(self) -> &'static str {
        match self {
            ListenerRole::Mx => "mx",
            ListenerRole::Submission => "submission",
        }
    }
}

/// How a listener uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerTls {
    /// Plain text only (STARTTLS is still offered when a certificate is configured).
    None,
    /// Plain text, STARTTLS offered; a submission listener requires it before AUTH.
    Starttls,
    /// TLS from the first byte (RFC 8314, port 465).
    Implicit,
}

/// `[[smtp.listeners]]`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    #[serde(default)]
    pub role: ListenerRole,
    #[serde(default = "default_tls")]
    pub tls: ListenerTls,
}

fn default_tls() -> ListenerTls {
    ListenerTls::Starttls
}

/// One `auth_users` entry: `"$argon2id$…"` or `{ hash = "…", addresses = [...] }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum AuthUser {
    Hash(String),
    Table(AuthUserTable),
}

/// The table form of an `auth_users` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthUserTable {
    pub hash: String,
    /// Envelope senders and From addresses this user may use: `me@example.org`, or
    /// `@example.org` for a whole domain. Empty: any.
    #[serde(default)]
    pub addresses: Vec<String>,
}

impl AuthUser {
    pub fn hash(&self) -> &str {
        match self {
            AuthUser::Hash(hash) => hash,
            AuthUser::Table(table) => &table.hash,
        }
    }

    /// The allowed addresses; empty means no restriction.
    pub fn addresses(&self) -> &[String] {
        match self {
            AuthUser::Hash(_) => &[],
            AuthUser::Table(table) => &table.addresses,
        }
    }

    /// Whether this user may use `address` as envelope sender or From address. The null
    /// sender is always allowed (a client may send its own bounces).
    pub fn may_send_as(&self, address: &str) -> bool {
        let allowed = self.addresses();
        if allowed.is_empty() || address.is_empty() {
            return true;
        }
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        allowed.iter().any(|a| match a.strip_prefix('@') {
            Some(d) => d.eq_ignore_ascii_case(domain),
            None => a.eq_ignore_ascii_case(address),
        })
    }
}

impl From<&str> for AuthUser {
    fn from(hash: &str) -> AuthUser {
        AuthUser::Hash(hash.to_string())
    }
}

impl From<String> for AuthUser {
    fn from(hash: String) -> AuthUser {
        AuthUser::Hash(hash)
    }
}

impl super::SmtpConfig {
    /// Every listener: `listeners`, then `listen` (MX, STARTTLS when a certificate is set) and
    /// `tls_listen` (MX, implicit TLS).
    pub fn all_listeners(&self) -> Vec<ListenerConfig> {
        let old = self.listen.iter().map(|a| (a, ListenerTls::Starttls));
        let old = old.chain(self.tls_listen.iter().map(|a| (a, ListenerTls::Implicit)));
        let old = old.map(|(address, tls)| ListenerConfig { address: *address, role: ListenerRole::Mx, tls });
        self.listeners.iter().cloned().chain(old).collect()
    }
}

/// Load-time checks of listeners and `auth_users` addresses.
pub(super) fn validate(smtp: &super::SmtpConfig) -> Result<(), String> {
    let all = smtp.all_listeners();
    if all.is_empty() {
        return Err("[smtp] listen, tls_listen and listeners are all empty: nothing to listen on".into());
    }
    if !smtp.tls_listen.is_empty() && smtp.tls_cert.is_none() {
        return Err("[smtp] tls_listen needs tls_cert and tls_key".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for listener in &all {
        if !seen.insert(listener.address) {
            return Err(format!("[smtp] listener address \"{}\" is used twice", listener.address));
        }
        if listener.tls == ListenerTls::Implicit && smtp.tls_cert.is_none() {
            return Err(format!(
                "[smtp] listener \"{}\" uses implicit TLS: set tls_cert and tls_key",
                listener.address
            ));
        }
        if listener.role == ListenerRole::Submission {
            if smtp.auth_users.is_empty() {
                return Err(format!(
                    "[smtp] listener \"{}\" is for submission but auth_users is empty",
                    listener.address
                ));
            }
            if listener.tls == ListenerTls::Starttls && smtp.tls_cert.is_none() && !smtp.allow_plain_auth {
                return Err(format!(
                    "[smtp] listener \"{}\" needs STARTTLS before AUTH: set tls_cert and tls_key",
                    listener.address
                ));
            }
        }
    }
    for (user, entry) in &smtp.auth_users {
        for address in entry.addresses() {
            let ok = match address.strip_prefix('@') {
                Some(domain) => !domain.is_empty() && !domain.contains('@'),
                None => address.contains('@'),
            };
            if !ok {
                return Err(format!("[smtp] auth_users {user:?}: address {address:?} is not me@domain or @domain"));
            }
        }
    }
    Ok(())
}
