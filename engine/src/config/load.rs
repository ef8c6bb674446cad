//! Reading and validating the config file, and resolving its relative paths.

use std::path::{Path, PathBuf};

use super::Config;

/// A config that failed to load: what to print, `FILE:LINE:COL: message` where a position is
/// known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}:{line}:{col}: {message}")]
    Syntax { path: String, line: usize, col: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A config with every relative path made absolute, plus where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// The file it was read from; `None` on built-in defaults.
    pub source: Option<PathBuf>,
    /// The folder relative paths were resolved against.
    pub base_dir: PathBuf,
}

impl LoadedConfig {
    /// Loads `explicit` if given; else `mailflow.toml` in the current folder if present; else
    /// the built-in defaults.
    pub fn load(explicit: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let default = cwd.join("mailflow.toml");
                default.exists().then_some(default)
            }
        };
        let Some(path) = path else {
            let mut config = Config::default();
            resolve_paths(&mut config, &cwd);
            return Ok(LoadedConfig { config, source: None, base_dir: cwd });
        };
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
        let mut config = load_str(&text, &shown)?;
        let absolute = if path.is_absolute() { path.clone() } else { cwd.join(&path) };
        let base_dir = absolute.parent().map(Path::to_path_buf).unwrap_or(cwd);
        resolve_paths(&mut config, &base_dir);
        Ok(LoadedConfig { config, source: Some(absolute), base_dir })
    }
}

/// Parses and validates the text of a config file, as [`LoadedConfig::load`] does before it
/// resolves relative paths; `shown` names the source in errors.
pub fn load_str(text: &str, shown: &str) -> Result<Config, ConfigError> {
    let mut config = parse(text, shown)?;
    config.accounts.iter_mut().for_each(super::oauth2::apply_provider);
    validate(&config).map_err(|message| match locate(text, &message) {
        Some((line, col)) => ConfigError::Syntax { path: shown.to_string(), line, col, message },
        None => ConfigError::Invalid { path: shown.to_string(), message },
    })?;
    Ok(config)
}

/// Parses TOML text into a [`Config`], reporting the position of the first error.
pub fn parse(text: &str, shown: &str) -> Result<Config, ConfigError> {
    toml::from_str::<Config>(text).map_err(|e| {
        let (line, col) = e.span().map(|span| line_col(text, span.start)).unwrap_or((1, 1));
        ConfigError::Syntax { path: shown.to_string(), line, col, message: e.message().trim().to_string() }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |nl| before.len() - nl - 1) + 1;
    (line, col)
}

/// Checks an `auth_users` value when the config is loaded: it must be an argon2 PHC string (a
/// password pasted there in clear would otherwise only show up as failed logins).
pub fn check_password_hash(hash: &str) -> Result<(), String> {
    match argon2::password_hash::PasswordHash::new(hash) {
        Ok(parsed) if !parsed.algorithm.as_str().starts_with("argon2") => {
            Err(format!("hash algorithm {} is not argon2", parsed.algorithm))
        }
        Ok(parsed) if parsed.salt.is_some() && parsed.hash.is_some() && argon2::Params::try_from(&parsed).is_ok() => {
            Ok(())
        }
        Ok(_) => Err("incomplete argon2 PHC string (parameters, salt or hash missing)".to_string()),
        Err(_) => Err("not an argon2 PHC string ($argon2id$...)".to_string()),
    }
}

/// Checks that cannot be expressed as types.
fn validate(config: &Config) -> Result<(), String> {
    let smtp = &config.smtp;
    super::listeners::validate(smtp)?;
    super::signing::validate(config)?;
    super::delivery::validate(&config.delivery)?;
    if smtp.hostname.trim().is_empty() {
        return Err("[smtp] hostname is empty".into());
    }
    for (key, value) in [
        ("max_connections", smtp.max_connections),
        ("max_recipients", smtp.max_recipients),
        ("max_message_size", smtp.max_message_size),
    ] {
        if value == 0 {
            return Err(format!("[smtp] {key} must be > 0"));
        }
    }
    // One session in DATA may hold up to twice the size from which a message goes to a file
    // (256 KB, `message::stored::SPILL_AT`); a smaller cap would refuse every message.
    let floor = 512 * 1024;
    if smtp.max_inflight_memory < floor {
        return Err(format!(
            "[smtp] max_inflight_memory must be at least {} KB (what one session in DATA may hold), not {} bytes",
            floor / 1024,
            smtp.max_inflight_memory
        ));
    }
    if !config.delivery.maildir.contains("{local}") && !config.delivery.maildir.contains("{domain}") {
        // One shared Maildir for every recipient is allowed, but almost always a mistake.
        tracing::warn!(maildir = %config.delivery.maildir, "[delivery] maildir has no {{local}} or {{domain}}: every recipient shares one Maildir");
    }
    if smtp.tls_cert.is_some() != smtp.tls_key.is_some() {
        return Err("[smtp] tls_cert and tls_key must be set together".into());
    }
    for (user, entry) in &smtp.auth_users {
        check_password_hash(entry.hash())
            .map_err(|e| format!("[smtp] auth_users {user:?}: {e}; make one with `mailflow hash-password`"))?;
    }
    if !smtp.tls_listen.is_empty() && smtp.tls_cert.is_none() {
        return Err("[smtp] tls_listen needs tls_cert and tls_key".into());
    }
    let outbound = &config.outbound;
    if outbound.mode == super::OutboundMode::Relay {
        super::relay::parse_relay(outbound)?;
    }
    super::oauth2::validate_relay_account(config)?;
    if !outbound.dns_server.is_empty() && outbound.dns_server.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!("[outbound] dns_server {:?}: use ip:port", outbound.dns_server));
    }
    match outbound.forward_sender.as_str() {
        "" | "original" => {}
        fixed if crate::proto::address::parse_mailbox(fixed, true).is_ok() => {}
        fixed => return Err(format!("[outbound] forward_sender {fixed:?}: \"original\" or an address")),
    }
    if !(1..=1000).contains(&config.outbound.concurrency) {
        return Err(format!("[outbound] concurrency = {} is out of range 1..=1000", config.outbound.concurrency));
    }
    let listen = config.metrics.listen.trim();
    if !listen.is_empty() && listen.parse::<std::net::SocketAddr>().is_err() {
        return Err(format!("[metrics] listen {listen:?} is not an address:port"));
    }
    if let Some(module) = config.log.bad_filter() {
        return Err(format!("[log] filters: {module:?} is not a module name"));
    }
    config.auth.validate()?;
    let web = &config.web;
    if !web.listen.trim().is_empty() && web.listen.trim().parse::<std::net::SocketAddr>().is_err() {
        return Err(format!("[web] listen {:?} is not an address:port", web.listen));
    }
    if !web.password_hash.is_empty() {
        check_password_hash(&web.password_hash)
            .map_err(|e| format!("[web] password_hash: {e}; make one with `mailflow hash-password`"))?;
    }
    if config.scripts.timeout_ms == 0 {
        return Err("[scripts] timeout_ms must be > 0".into());
    }
    if config.scripts.max_operations == 0 {
        return Err("[scripts] max_operations must be > 0".into());
    }
    let mut names = std::collections::BTreeSet::new();
    for account in &config.accounts {
        if !names.insert(account.name.as_str()) {
            return Err(format!("[[accounts]] name {:?} is used twice", account.name));
        }
        super::oauth2::validate_account(account)?;
        if account.tls_ca.is_some() && account.tls == super::AccountTls::None {
            return Err(format!("[[accounts]] tls_ca of {:?} needs tls = \"implicit\" or \"starttls\"", account.name));
        }
    }
    Ok(())
}

/// Where the setting a [`validate`] message names (`[section] key ...`) is written, so the error
/// can be printed as `FILE:LINE:COL:` like a syntax error. Among several candidate lines (one
/// per `[[accounts]]`), the one carrying a quoted value from the message wins. `None` when the
/// key is not written in the file (a default) or the message names none.
fn locate(text: &str, message: &str) -> Option<(usize, usize)> {
    let rest = message.strip_prefix('[')?;
    let (section, rest) = rest.trim_start_matches('[').split_once(']')?;
    let key: String = rest
        .trim_start_matches(']')
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let quoted: Vec<String> =
        message.split('"').skip(1).step_by(2).filter(|q| !q.is_empty()).map(|q| format!("\"{q}\"")).collect();
    let mut current = String::new();
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(header) = trimmed.strip_prefix('[') {
            current = header.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_string();
            continue;
        }
        let in_section = current == section || current.starts_with(&format!("{section}."));
        let names_key = !key.is_empty()
            && trimmed.strip_prefix(key.as_str()).is_some_and(|after| after.trim_start().starts_with('='));
        if in_section && names_key {
            found.push((n + 1, line.len() - trimmed.len() + 1, line));
        }
    }
    let best =
        found.iter().rev().find(|(_, _, line)| quoted.iter().any(|q| line.contains(q.as_str()))).or(found.first());
    best.map(|(line, col, _)| (*line, *col))
}

fn resolve_paths(config: &mut Config, base: &Path) {
    let abs = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    abs(&mut config.scripts.dir);
    abs(&mut config.state.dir);
    if let Some(p) = config.smtp.tls_cert.as_mut() {
        abs(p);
    }
    if let Some(p) = config.smtp.tls_key.as_mut() {
        abs(p);
    }
    for dkim in &mut config.dkim {
        abs(&mut dkim.key);
    }
    if let Some(path) = config.srs.as_mut().and_then(|srs| srs.secret_file.as_mut()) {
        abs(path);
    }
    let maildir = PathBuf::from(&config.delivery.maildir);
    if maildir.is_relative() {
        config.delivery.maildir = base.join(maildir).to_string_lossy().into_owned();
    }
    // `[plugins.exec.commands] name = ["./classify.sh", ...]`: a program named by a relative path
    // (one with a `/`) is found beside the config file; a bare name is looked up in PATH.
    let commands = config.plugins.exec.as_mut().and_then(|t| t.get_mut("commands")).and_then(|c| c.as_table_mut());
    for (_, argv) in commands.into_iter().flat_map(|c| c.iter_mut()) {
        let Some(first) = argv.as_array_mut().and_then(|a| a.first_mut()) else { continue };
        if let Some(program) = first.as_str().filter(|p| p.contains('/') && Path::new(p).is_relative()) {
            *first = toml::Value::String(base.join(program).to_string_lossy().into_owned());
        }
    }
    for account in &mut config.accounts {
        if !account.deliver.is_empty() && PathBuf::from(&account.deliver).is_relative() {
            account.deliver = base.join(&account.deliver).to_string_lossy().into_owned();
        }
        if let Some(p) = account.tls_ca.as_mut() {
            abs(p);
        }
    }
}

impl Config {
    /// Where the outbound queue lives: beside the spool.
    pub fn queue_dir(&self) -> PathBuf {
        self.spool_dir().with_file_name("queue")
    }

    /// Where the spool (accepted, not yet delivered messages) lives: beside the state store.
    pub fn spool_dir(&self) -> PathBuf {
        self.state.dir.parent().map(|p| p.join("spool")).unwrap_or_else(|| PathBuf::from("data/spool"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named_with_position() {
        let err = parse("[smtp]\nhostname = \"x\"\nlisten_typo = 1\n", "m.toml").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("m.toml:3:1:"), "{text}");
        assert!(text.contains("listen_typo"), "{text}");
    }

    #[test]
    fn a_bad_value_is_located_in_the_file() {
        let text =
            "[smtp]\nhostname = \"x\"\n  max_recipients = 0\n[[accounts]]\nname = \"a\"\n[[accounts]]\nname = \"b\"\n";
        assert_eq!(locate(text, "[smtp] max_recipients must be > 0"), Some((3, 3)));
        assert_eq!(locate(text, "[[accounts]] name \"b\" is used twice"), Some((7, 1)));
        let names = "[[accounts]]\nname = \"alpha\"\n[[accounts]]\nname = \"a\"\n";
        assert_eq!(locate(names, "[[accounts]] name \"a\" is used twice"), Some((4, 1)));
        assert_eq!(locate(text, "[smtp] max_connections must be > 0"), None);
        assert_eq!(locate(text, "no section named"), None);
        let auth = "[smtp.auth_users]\nme = \"x\"\n[smtp]\nauth_users = { me = \"y\" }\n";
        assert_eq!(locate(auth, "[smtp] auth_users \"me\": not a hash"), Some((4, 1)));
    }

    #[test]
    fn spec_example_parses() {
        let text = r#"
[smtp]
listen = ["127.0.0.1:2525"]
hostname = "mx.example.org"
local_domains = ["example.org"]
max_message_size = 1000
[scripts]
dir = "scripts"
on_error = "accept"
[delivery]
maildir = "data/mail/{local}@{domain}"
[outbound]
mode = "mx"
retry = ["1m", "5m"]
max_age = "5d"
[[accounts]]
name = "work"
protocol = "imap"
host = "imap.example.org"
port = 993
tls = "implicit"
username = "me"
password = "x"
[plugins]
enabled = ["kv"]
[plugins.http]
allow = ["https://hooks.example/"]
"#;
        let config = parse(text, "m.toml").unwrap();
        assert_eq!(config.smtp.max_message_size, 1000);
        assert_eq!(config.accounts.len(), 1);
        assert_eq!(config.outbound.retry.len(), 2);
        assert!(validate(&config).is_ok());
    }

    #[test]
    fn bad_enum_value_is_an_error() {
        assert!(parse("[scripts]\non_error = \"explode\"\n", "m.toml").is_err());
    }
}
