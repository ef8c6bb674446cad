//! `[auth]`: checking on receipt who sent a message (SPF, DKIM, DMARC, ARC, iprev) and the
//! DNS those checks ask. Plain settings and their validation; the checks live in
//! [`crate::verify`].

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::serde_duration;

/// The longest `dns_timeout` accepted: a check waits for it on every lookup, and a client
/// waits for the checks.
pub const MAX_DNS_TIMEOUT: Duration = Duration::from_secs(30);

/// `[auth]`: verification of incoming mail.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Run SPF, DKIM, DMARC, ARC and iprev for clients that did not authenticate, and add an
    /// `Authentication-Results:` header to every accepted message.
    pub verify: bool,
    /// The name in `Authentication-Results: <authserv_id>; ...`; "" means `[smtp] hostname`.
    pub authserv_id: String,
    /// A DNS server to ask instead of the system resolver: "ip:port" or "ip" (port 53).
    pub dns_server: String,
    /// How long one DNS lookup may take before it counts as a temporary error.
    #[serde(with = "serde_duration")]
    pub dns_timeout: Duration,
    /// DNS answers kept in memory (per record type), each for its TTL.
    pub dns_cache_size: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            verify: true,
            authserv_id: String::new(),
            dns_server: String::new(),
            dns_timeout: Duration::from_secs(3),
            dns_cache_size: 4096,
        }
    }
}

impl AuthConfig {
    /// The authserv-id in force: `authserv_id`, or the host name when it is empty.
    pub fn authserv_id_or<'a>(&'a self, hostname: &'a str) -> &'a str {
        match self.authserv_id.trim() {
            "" => hostname,
            id => id,
        }
    }

    /// `dns_server` as an address; `None` for the system resolver.
    pub fn dns_server_addr(&self) -> Result<Option<SocketAddr>, String> {
        let text = self.dns_server.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Some(addr));
        }
        match text.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(Some(SocketAddr::new(ip, 53))),
            Err(_) => Err(format!("[auth] dns_server {text:?}: use ip:port (for example \"127.0.0.1:53\")")),
        }
    }

    /// The checks [`super::load`] runs on this section.
    pub fn validate(&self) -> Result<(), String> {
        self.dns_server_addr()?;
        if self.dns_timeout.is_zero() || self.dns_timeout > MAX_DNS_TIMEOUT {
            return Err(format!(
                "[auth] dns_timeout = {:?} is out of range: more than 0 and at most {}s",
                self.dns_timeout,
                MAX_DNS_TIMEOUT.as_secs()
            ));
        }
        let id = self.authserv_id.trim();
        // RFC 8601 §2.5: the authserv-id is a `value` (a token here): no spaces, no `;`.
        if id.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, ';' | '(' | ')' | '"' | '\\')) {
            return Err(format!("[auth] authserv_id {id:?}: use a host name (no spaces, ';', quotes or parentheses)"));
        }
        if self.dns_cache_size > 1_000_000 {
            return Err(format!("[auth] dns_cache_size = {} is out of range 0..=1000000", self.dns_cache_size));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_verify_with_the_system_resolver() {
        let auth = AuthConfig::default();
        assert!(auth.verify);
        assert_eq!(auth.dns_server_addr(), Ok(None));
        assert_eq!(auth.authserv_id_or("mx.example.org"), "mx.example.org");
        assert!(auth.validate().is_ok());
    }

    #[test]
    fn dns_server_takes_an_address_with_or_without_port() {
        let with = |s: &str| AuthConfig { dns_server: s.into(), ..AuthConfig::default() };
        assert_eq!(with("127.0.0.1:5353").dns_server_addr(), Ok(Some("127.0.0.1:5353".parse().unwrap())));
        assert_eq!(with("::1").dns_server_addr(), Ok(Some("[::1]:53".parse().unwrap())));
        let err = with("dns.example").validate().unwrap_err();
        assert!(err.contains("[auth] dns_server \"dns.example\""), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = AuthConfig { dns_timeout: Duration::ZERO, ..AuthConfig::default() }.validate().unwrap_err();
        assert!(err.starts_with("[auth] dns_timeout"), "{err}");
        let err = AuthConfig { authserv_id: "mx example".into(), ..AuthConfig::default() }.validate().unwrap_err();
        assert!(err.starts_with("[auth] authserv_id"), "{err}");
    }
}
