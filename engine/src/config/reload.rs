//! SIGHUP: which settings a running daemon takes from a re-read config file, and which wait
//! for a restart.
//!
//! Taken at once (new connections see them; a session keeps the config it started with, as it
//! keeps its scripts): the `[smtp]` policy — size, memory and recipient limits, `max_received_headers`,
//! `auth_users`, `allow_plain_auth`, the certificate paths, timeouts, `shutdown_grace` — and
//! `[scripts]` limits (`timeout_ms`, `max_operations`, `on_error`), and `[[accounts]]`.
//! Everything else names a socket, a folder or a component built once at start (listeners,
//! `[[smtp.listeners]]`, `[[dkim]]` keys and `[srs]`, `hostname` and `local_domains`, which the deliverer and the outbound queue also hold,
//! `max_connections`, the scripts `dir`, `[delivery]`, `[outbound]`, `[state]`, `[plugins]`,
//! `[metrics]`, `[auth]`, `[log]`): a change there is logged as "needs a restart" and the running value stays,
//! so the daemon never runs half on the old settings and half on the new.

use serde::Serialize;

use super::Config;

/// What a reload settles on: the config to run with from now, and the changed settings that
/// were left at their running value.
#[derive(Debug)]
pub struct Reloaded {
    pub config: Config,
    pub need_restart: Vec<&'static str>,
}

/// Merges the reloadable part of `fresh` into a copy of `running`.
pub fn merge(running: &Config, fresh: Config) -> Reloaded {
    let mut need_restart = Vec::new();
    let mut check = |name: &'static str, changed: bool| {
        if changed {
            need_restart.push(name);
        }
    };
    let (old, new) = (&running.smtp, &fresh.smtp);
    check("smtp.listen", old.listen != new.listen);
    check("smtp.tls_listen", old.tls_listen != new.tls_listen);
    check("smtp.listeners", differs(&old.listeners, &new.listeners));
    check("dkim", differs(&running.dkim, &fresh.dkim));
    check("srs", differs(&running.srs, &fresh.srs));
    check("smtp.hostname", old.hostname != new.hostname);
    check("smtp.local_domains", old.local_domains != new.local_domains);
    check("smtp.max_connections", old.max_connections != new.max_connections);
    check("scripts.dir", running.scripts.dir != fresh.scripts.dir);
    check("delivery", differs(&running.delivery, &fresh.delivery));
    check("outbound", differs(&running.outbound, &fresh.outbound));
    check("state", differs(&running.state, &fresh.state));
    check("plugins", differs(&running.plugins, &fresh.plugins));
    check("metrics", differs(&running.metrics, &fresh.metrics));
    check("log", running.log != fresh.log);
    check("auth", differs(&running.auth, &fresh.auth));
    check("web.listen", running.web.listen != fresh.web.listen);
    check("web.trace_retention", running.web.trace_retention != fresh.web.trace_retention);

    let mut config = running.clone();
    config.web.password_hash = fresh.web.password_hash.clone();
    let smtp = &mut config.smtp;
    let new = fresh.smtp;
    smtp.max_message_size = new.max_message_size;
    smtp.max_inflight_memory = new.max_inflight_memory;
    smtp.max_recipients = new.max_recipients;
    smtp.max_received_headers = new.max_received_headers;
    smtp.auth_users = new.auth_users;
    smtp.allow_plain_auth = new.allow_plain_auth;
    smtp.command_timeout = new.command_timeout;
    smtp.data_timeout = new.data_timeout;
    smtp.shutdown_grace = new.shutdown_grace;
    // An implicit-TLS listener cannot lose its certificate without a restart.
    let implicit = config.smtp.all_listeners().iter().any(|l| l.tls == super::ListenerTls::Implicit);
    if new.tls_cert.is_some() || !implicit {
        config.smtp.tls_cert = new.tls_cert;
        config.smtp.tls_key = new.tls_key;
    } else if config.smtp.tls_cert.is_some() {
        need_restart.push("smtp.tls_cert");
    }
    config.scripts = super::ScriptsConfig { dir: running.scripts.dir.clone(), ..fresh.scripts };
    config.accounts = fresh.accounts;
    Reloaded { config, need_restart }
}

fn differs<T: Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_string(a).ok() != serde_json::to_string(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_is_taken_and_sockets_wait_for_a_restart() {
        let running = Config::default();
        let mut fresh = Config::default();
        fresh.smtp.max_message_size = 1000;
        fresh.smtp.auth_users.insert("me".into(), "hash".into());
        fresh.smtp.local_domains.push("new.example".into());
        fresh.smtp.listen = vec!["127.0.0.1:2626".parse().unwrap()];
        fresh.outbound.concurrency = 3;

        let reloaded = merge(&running, fresh);
        assert_eq!(reloaded.config.smtp.max_message_size, 1000);
        assert!(reloaded.config.smtp.auth_users.contains_key("me"));
        assert_eq!(reloaded.config.smtp.local_domains, running.smtp.local_domains);
        assert_eq!(reloaded.config.smtp.listen, running.smtp.listen);
        assert_eq!(reloaded.config.outbound.concurrency, running.outbound.concurrency);
        assert_eq!(reloaded.need_restart, vec!["smtp.listen", "smtp.local_domains", "outbound"]);
    }

    #[test]
    fn an_implicit_tls_listener_keeps_its_certificate() {
        let mut running = Config::default();
        running.smtp.tls_listen = vec!["127.0.0.1:4465".parse().unwrap()];
        running.smtp.tls_cert = Some("cert.pem".into());
        running.smtp.tls_key = Some("key.pem".into());
        let mut fresh = running.clone();
        fresh.smtp.tls_cert = None;
        fresh.smtp.tls_key = None;

        let reloaded = merge(&running, fresh);
        assert_eq!(reloaded.config.smtp.tls_cert, running.smtp.tls_cert);
        assert_eq!(reloaded.need_restart, vec!["smtp.tls_cert"]);
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let running = Config::default();
        let reloaded = merge(&running, running.clone());
        assert!(reloaded.need_restart.is_empty());
        assert!(!differs(&reloaded.config, &running));
    }
}
