//! Running as a system service: systemd's readiness protocol and the open-files limit.
//!
//! Input: `NOTIFY_SOCKET` (set by systemd for `Type=notify` units; absent, notifications are
//! skipped) and the process's `RLIMIT_NOFILE`. Output: `READY=1`, `RELOADING=1` and
//! `STOPPING=1` datagrams, and a soft open-files limit raised to the hard one. Limits: the
//! file estimate is an estimate; past the limit an SMTP client waits in the backlog instead of
//! getting the 421 of `max_connections`, hence the warning.
//! Security: nothing here reads untrusted bytes.

use crate::config::{AccountProtocol, Config};

/// What the daemon tells systemd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The listeners are bound: start units ordered after this one.
    Ready,
    /// SIGHUP: reloading; `Ready` follows when done.
    Reloading,
    /// Shutting down.
    Stopping,
}

/// Sends `state` to systemd when running under it; a failure is logged, never fatal.
pub fn notify(state: Readiness) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let result = match state {
        Readiness::Ready => sd_notify::notify(false, &[sd_notify::NotifyState::Ready]),
        Readiness::Reloading => match sd_notify::NotifyState::monotonic_usec_now() {
            // systemd 253+ wants the time of the reload with RELOADING=1.
            Ok(now) => sd_notify::notify(false, &[sd_notify::NotifyState::Reloading, now]),
            Err(_) => sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]),
        },
        Readiness::Stopping => sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, state = ?state, "cannot notify systemd");
    }
}

/// The open-files limit before and after [`raise_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    pub before: u64,
    /// The soft limit now in force.
    pub soft: u64,
}

/// Files the daemon keeps open besides its SMTP sessions and pollers: listeners, the state
/// store, spool and queue files, the script watcher, log and metrics sockets.
const FILE_MARGIN: u64 = 64;
/// The soft limit used when the hard one is unlimited (the kernel refuses "unlimited").
const UNLIMITED_FALLBACK: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (the default soft limit, often 1024 or
/// less, is far below what `max_connections` promises). Returns the limit in force.
pub fn raise_file_limit() -> FileLimit {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    let target = match limit.maximum {
        Some(hard) => hard,
        None => std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(UNLIMITED_FALLBACK),
    };
    if before >= target {
        return FileLimit { before, soft: before };
    }
    match setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: limit.maximum }) {
        Ok(()) => FileLimit { before, soft: target },
        Err(e) => {
            tracing::warn!(error = %e, soft = before, hard = target, "cannot raise the open files limit");
            FileLimit { before, soft: before }
        }
    }
}

/// Files the config may need at once: a socket per SMTP session, two per poller (its
/// connection and the message it is storing), one per outbound attempt, and a margin.
pub fn files_needed(config: &Config) -> u64 {
    let pollers: usize = config
        .accounts
        .iter()
        .map(|a| match a.protocol {
            AccountProtocol::Imap => crate::fetch::mailboxes(a).len(),
            AccountProtocol::Pop3 => 1,
        })
        .sum();
    let count = config.smtp.max_connections + 2 * pollers + config.outbound.concurrency;
    u64::try_from(count).unwrap_or(u64::MAX).saturating_add(FILE_MARGIN)
}

/// Raises the limit, logs it, and warns when the config may need more.
pub fn check_file_limit(config: &Config) {
    let limit = raise_file_limit();
    let needed = files_needed(config);
    if limit.soft != limit.before {
        tracing::info!(limit = limit.soft, was = limit.before, "open files limit raised to the hard limit");
    } else {
        tracing::info!(limit = limit.soft, "open files limit");
    }
    if needed > limit.soft {
        tracing::warn!(
            limit = limit.soft,
            needed,
            max_connections = config.smtp.max_connections,
            "open files limit below what max_connections, the accounts and the outbound queue may need: \
             clients past it wait unanswered instead of getting 421; raise LimitNOFILE or lower max_connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_counts_sessions_pollers_and_outbound_attempts() {
        let mut config = Config::default();
        config.smtp.max_connections = 100;
        config.outbound.concurrency = 5;
        assert_eq!(files_needed(&config), 100 + 5 + FILE_MARGIN);
        let account: crate::config::AccountConfig = toml::from_str(
            "name = \"a\"\nprotocol = \"imap\"\nhost = \"h\"\nusername = \"u\"\npassword = \"p\"\nmailboxes = [\"INBOX\", \"Lists\"]\n",
        )
        .unwrap();
        config.accounts.push(account);
        assert_eq!(files_needed(&config), 100 + 2 * 2 + 5 + FILE_MARGIN);
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let limit = raise_file_limit();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, Some(limit.soft));
        assert!(limit.soft >= limit.before);
        if let Some(hard) = now.maximum {
            assert_eq!(limit.soft, hard);
        }
    }
}
