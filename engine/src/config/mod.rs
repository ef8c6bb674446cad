//! The configuration file (`mailflow.toml`, docs/reference/configuration.md): typed sections with built-in defaults.
//!
//! Every section refuses unknown keys (`deny_unknown_fields`), so a typo is an error naming the
//! key rather than a silently ignored setting. Relative paths are resolved against the folder
//! of the config file (the current folder when running on built-in defaults) by [`Config::load`],
//! so the rest of the daemon only ever sees absolute paths.

pub mod auth;
pub mod delivery;
pub mod duration;
pub mod listeners;
mod load;
pub mod log;
pub mod oauth2;
pub mod relay;
pub mod reload;
pub mod signing;
pub mod web;

pub use delivery::{DeliveryConfig, DeliveryMode, LmtpEndpoint};
pub use listeners::{AuthUser, ListenerConfig, ListenerRole, ListenerTls};
pub use load::{check_password_hash, load_str, ConfigError, LoadedConfig};
pub use oauth2::{AuthMethod, OAuth2Config, Provider};
pub use signing::{DkimAlgorithm, DkimConfig, SrsConfig};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use duration::{serde_duration, serde_duration_list, serde_size};

/// The whole file. Every section is optional.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub smtp: SmtpConfig,
    pub scripts: ScriptsConfig,
    pub delivery: DeliveryConfig,
    pub outbound: OutboundConfig,
    pub accounts: Vec<AccountConfig>,
    pub state: StateConfig,
    pub plugins: PluginsConfig,
    pub metrics: MetricsConfig,
    pub log: log::LogConfig,
    /// `[[dkim]]`: signing identities for what mailflow sends.
    pub dkim: Vec<DkimConfig>,
    /// `[srs]`: present means forwards are sent with SRS envelope senders.
    pub srs: Option<SrsConfig>,
    pub auth: auth::AuthConfig,
    pub web: web::WebConfig,
}

/// `[smtp]`: the receiver.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Plain (and, once configured, STARTTLS) listeners.
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners (RFC 8314), e.g. port 465.
    pub tls_listen: Vec<SocketAddr>,
    /// Listeners with a role (`mx` or `submission`) and a TLS mode, besides the two above.
    pub listeners: Vec<ListenerConfig>,
    /// Name in the greeting and in `Received:` headers.
    pub hostname: String,
    /// Mail for these domains is delivered locally; unauthenticated clients may only name
    /// recipients here (no open relay).
    pub local_domains: Vec<String>,
    pub max_message_size: usize,
    /// Bytes of message data all sessions together may hold in memory (messages over 256 KB
    /// are written to the spool as they arrive); past it a new DATA gets 451 4.3.1.
    #[serde(with = "serde_size")]
    pub max_inflight_memory: usize,
    pub max_recipients: usize,
    pub max_connections: usize,
    /// More `Received:` headers than this means a mail loop (RFC 5321 §6.3): 554 5.4.6.
    pub max_received_headers: usize,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub auth_users: BTreeMap<String, AuthUser>,
    pub allow_plain_auth: bool,
    /// Waiting for a command (RFC 5321 §4.5.3.2: at least 5 minutes).
    #[serde(with = "serde_duration")]
    pub command_timeout: Duration,
    /// Waiting for the next chunk of message data (RFC 5321: 3 minutes).
    #[serde(with = "serde_duration")]
    pub data_timeout: Duration,
    /// On shutdown, how long sessions in flight may take to finish.
    #[serde(with = "serde_duration")]
    pub shutdown_grace: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        let hostname = system_hostname();
        let mut local_domains = vec!["localhost".to_string(), "localhost.localdomain".to_string()];
        if !local_domains.contains(&hostname) {
            local_domains.push(hostname.clone());
        }
        SmtpConfig {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            tls_listen: Vec::new(),
            listeners: Vec::new(),
            hostname,
            local_domains,
            max_message_size: 26_214_400,
            max_inflight_memory: 256 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 1000,
            max_received_headers: 100,
            tls_cert: None,
            tls_key: None,
            auth_users: BTreeMap::new(),
            allow_plain_auth: false,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl SmtpConfig {
    /// Whether `domain` (any case) is one of `local_domains`.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// What a failing script means (`on_error`, docs/reference/configuration.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    Tempfail,
    Accept,
}

/// `[scripts]`: the script host.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScriptsConfig {
    pub dir: PathBuf,
    pub max_operations: u64,
    pub timeout_ms: u64,
    pub on_error: OnError,
}

impl Default for ScriptsConfig {
    fn default() -> Self {
        ScriptsConfig {
            dir: PathBuf::from("scripts"),
            max_operations: 1_000_000,
            timeout_ms: 1000,
            on_error: OnError::Tempfail,
        }
    }
}

/// `[outbound]`: the sender (forward, redirect, replies). Parsed and validated now; carried out
/// by the outbound queue.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundConfig {
    pub mode: OutboundMode,
    pub relay: String,
    pub relay_user: String,
    pub relay_password: String,
    /// Log in to the relay with `AUTH XOAUTH2` and the OAuth2 token of this `[[accounts]]`
    /// entry (its user name unless `relay_user` is set).
    pub relay_account: String,
    pub starttls: StartTlsPolicy,
    /// Pins the relay's certificate: hex SHA-256 of its DER form (colons allowed). When set,
    /// that certificate is accepted whoever signed it (a self-signed one too) and no other.
    pub relay_cert_sha256: String,
    #[serde(with = "serde_duration_list")]
    pub retry: Vec<Duration>,
    #[serde(with = "serde_duration")]
    pub max_age: Duration,
    pub forward_sender: String,
    /// `mx` mode: a DNS server to ask instead of the system resolver ("ip:port"; tests, split
    /// horizons).
    pub dns_server: String,
    /// `mx` mode: the port MX hosts are contacted on (25; other values are for tests).
    pub mx_port: u16,
    /// Delivery attempts in flight at once (SMTP connections to the relay or MX hosts).
    pub concurrency: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        OutboundConfig {
            mode: OutboundMode::Relay,
            relay: "smtp://127.0.0.1:2526".to_string(),
            relay_user: String::new(),
            relay_password: String::new(),
            relay_account: String::new(),
            starttls: StartTlsPolicy::Opportunistic,
            relay_cert_sha256: String::new(),
            retry: vec![minutes(1), minutes(5), minutes(15), minutes(60), minutes(240)],
            max_age: Duration::from_secs(5 * 86_400),
            forward_sender: "original".to_string(),
            dns_server: String::new(),
            mx_port: 25,
            concurrency: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboundMode {
    Relay,
    Mx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTlsPolicy {
    Never,
    Opportunistic,
    Required,
}

/// `[[accounts]]`: one POP3 or IMAP mailbox to poll.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub name: String,
    pub protocol: AccountProtocol,
    /// Required unless `provider` fills it.
    #[serde(default)]
    pub host: String,
    pub port: Option<u16>,
    #[serde(default = "default_account_tls")]
    pub tls: AccountTls,
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_command: Option<String>,
    #[serde(default)]
    pub mailbox: Option<String>,
    #[serde(default)]
    pub mailboxes: Vec<String>,
    #[serde(default = "default_true")]
    pub idle: bool,
    #[serde(default = "default_poll_interval", with = "serde_duration")]
    pub poll_interval: Duration,
    #[serde(default)]
    pub delete_after_fetch: bool,
    #[serde(default)]
    pub deliver: String,
    /// A PEM file of CA certificates the server's certificate must chain to, instead of the
    /// system's trust store (a self-hosted server with a private CA).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// How to log in; unset: `password`, or what `provider` and `[accounts.oauth2]` imply.
    #[serde(default)]
    pub auth: Option<AuthMethod>,
    /// A mail service whose host, port, TLS, auth method and folder names are filled in.
    #[serde(default)]
    pub provider: Option<Provider>,
    /// The built-in OAuth2 refresh-token flow (`mailflow oauth2 authorize`).
    #[serde(default)]
    pub oauth2: Option<OAuth2Config>,
    /// Folder names scripts use → the server's names (`provider` fills the special folders:
    /// Gmail's `Junk` is `[Gmail]/Spam`).
    #[serde(default)]
    pub folders: BTreeMap<String, String>,
}

impl AccountConfig {
    /// The login method, after `provider` and `[accounts.oauth2]` were taken into account.
    pub fn auth_method(&self) -> AuthMethod {
        self.auth.unwrap_or_default()
    }
}

fn default_account_tls() -> AccountTls {
    AccountTls::Implicit
}
fn default_true() -> bool {
    true
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountProtocol {
    Imap,
    Pop3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountTls {
    Implicit,
    Starttls,
    None,
}

/// `[state]`: the embedded store.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { dir: PathBuf::from("data/state") }
    }
}

/// The plugins compiled into this binary: the names `[plugins] enabled` may list (each has a
/// table of its own below).
pub const AVAILABLE_PLUGINS: [&str; 5] = ["kv", "http", "exec", "rspamd", "spamd"];

/// `[plugins]`: which compiled-in plugins scripts may use, and each one's own table.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    pub enabled: Vec<String>,
    pub kv: Option<toml::Table>,
    pub http: Option<toml::Table>,
    pub exec: Option<toml::Table>,
    pub rspamd: Option<toml::Table>,
    pub spamd: Option<toml::Table>,
}

/// `[metrics]`: Prometheus text exposition.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub listen: String,
}

/// The machine's host name, for the greeting when the config names none.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
