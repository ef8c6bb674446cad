//! verify: who really sent a message (SPF, iprev, DKIM, DMARC, ARC), checked on receipt with
//! the `mail-auth` crate, and the `Authentication-Results:` header that reports it.
//!
//! Input: the client's address, HELO name and envelope sender from the SMTP session, and the
//! message bytes at the end of DATA (in memory, or mapped from the spool file for a large
//! message). Output: the verdicts of [`crate::proto::authres`], which scripts read as
//! `ctx.spf`, `ctx.iprev` and `msg.auth`, and the header text.
//!
//! Limits: each DNS lookup waits at most `dns_timeout`, and a whole check at most
//! [`CHECK_ROUNDS`] times that; past it the verdict is `temperror`. Answers are cached per
//! record type ([`cache`], `dns_cache_size` entries, each for its TTL). SPF counts its
//! lookups (10, RFC 7208 §4.6.4) and void lookups (2) inside mail-auth.
//!
//! Security: everything here is driven by untrusted input (the message, and DNS answers for
//! names the sender chose). Failures become RFC results and a log line, never an error of
//! the session: a verdict never refuses mail by itself; scripts decide.

pub mod cache;
pub mod dns;
pub mod message;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use mail_auth::spf::verify::SpfParameters;
use mail_auth::{IprevResult, MessageAuthenticator, Parameters, RecordSet, SpfResult, Txt, MX};

use crate::config::Config;
use crate::proto::authres::{IprevVerdict, MessageAuth, Outcome, Report, SpfVerdict};
use cache::BoundedCache;

/// A whole check (SPF with its includes, or all the checks of a message) may take this many
/// `dns_timeout`s before it is cut short as `temperror`.
pub const CHECK_ROUNDS: u32 = 3;

/// Setting up the checks failed (at start: a config error).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Config(String),
    #[error("[auth] {0}")]
    Resolver(String),
}

/// The answers of each record type.
struct Caches {
    txt: BoundedCache<Box<str>, Txt>,
    mx: BoundedCache<Box<str>, RecordSet<MX>>,
    ipv4: BoundedCache<Box<str>, RecordSet<Ipv4Addr>>,
    ipv6: BoundedCache<Box<str>, RecordSet<Ipv6Addr>>,
    ptr: BoundedCache<IpAddr, RecordSet<Box<str>>>,
}

/// The parameters mail-auth takes, with our caches.
type Params<'x, P> = Parameters<
    'x,
    P,
    BoundedCache<Box<str>, Txt>,
    BoundedCache<Box<str>, RecordSet<MX>>,
    BoundedCache<Box<str>, RecordSet<Ipv4Addr>>,
    BoundedCache<Box<str>, RecordSet<Ipv6Addr>>,
    BoundedCache<IpAddr, RecordSet<Box<str>>>,
>;

/// The session-level verdicts: iprev at connect, SPF at each MAIL FROM.
#[derive(Debug, Clone, Default)]
pub struct SessionChecks {
    pub iprev: IprevVerdict,
    pub spf: SpfVerdict,
}

/// The facts about the client that the message checks need.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ip: IpAddr,
    pub helo: String,
    /// The envelope sender ("" for the null sender).
    pub sender: String,
    pub spf: SpfVerdict,
}

/// The checks, shared by every session (one resolver, one cache).
pub struct Verifier {
    authenticator: MessageAuthenticator,
    caches: Caches,
    timeout: Duration,
    authserv_id: String,
    /// Our host name: SPF's `%{r}` macro.
    hostname: String,
}

impl Verifier {
    /// The checks `config` asks for; `None` when `[auth] verify` is off.
    pub fn from_config(config: &Config) -> Result<Option<Verifier>, VerifyError> {
        let auth = &config.auth;
        if !auth.verify {
            return Ok(None);
        }
        let server = auth.dns_server_addr().map_err(VerifyError::Config)?;
        let authenticator = dns::authenticator(server, auth.dns_timeout).map_err(VerifyError::Resolver)?;
        let size = auth.dns_cache_size;
        Ok(Some(Verifier {
            authenticator,
            caches: Caches {
                txt: BoundedCache::new(size),
                mx: BoundedCache::new(size),
                ipv4: BoundedCache::new(size),
                ipv6: BoundedCache::new(size),
                ptr: BoundedCache::new(size),
            },
            timeout: auth.dns_timeout,
            authserv_id: auth.authserv_id_or(&config.smtp.hostname).to_string(),
            hostname: config.smtp.hostname.clone(),
        }))
    }

    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// How long a whole check may take.
    fn deadline(&self) -> Duration {
        self.timeout * CHECK_ROUNDS
    }

    fn params<P>(&self, params: P) -> Params<'_, P> {
        Parameters::new(params)
            .with_txt_cache(&self.caches.txt)
            .with_mx_cache(&self.caches.mx)
            .with_ipv4_cache(&self.caches.ipv4)
            .with_ipv6_cache(&self.caches.ipv6)
            .with_ptr_cache(&self.caches.ptr)
    }

    /// iprev: does `ip` have a name that resolves back to it?
    pub async fn iprev(&self, ip: IpAddr) -> IprevVerdict {
        let check = self.authenticator.verify_iprev(self.params(ip));
        let verdict = match tokio::time::timeout(self.deadline(), check).await {
            Ok(output) => IprevVerdict {
                result: match output.result() {
                    IprevResult::Pass => Outcome::Pass,
                    IprevResult::Fail(_) => Outcome::Fail,
                    IprevResult::TempError(_) => Outcome::TempError,
                    IprevResult::PermError(_) => Outcome::PermError,
                    IprevResult::None => Outcome::None,
                },
                name: output
                    .ptr
                    .as_ref()
                    .and_then(|names| names.first())
                    .map(|name| name.trim_end_matches('.').to_string())
                    .unwrap_or_default(),
            },
            Err(_) => IprevVerdict { result: Outcome::TempError, name: String::new() },
        };
        tracing::debug!(iprev = %verdict.result, name = %verdict.name, "iprev checked");
        verdict
    }

    /// SPF of the MAIL FROM identity, or of the HELO identity for the null sender (RFC 7208
    /// §2.3, §2.4).
    pub async fn spf(&self, ip: IpAddr, helo: &str, sender: &str) -> SpfVerdict {
        let helo_identity = sender.is_empty();
        let params = if helo_identity {
            SpfParameters::verify_ehlo(ip, helo, &self.hostname)
        } else {
            SpfParameters::verify_mail_from(ip, helo, &self.hostname, sender)
        };
        let check = self.authenticator.verify_spf(self.params(params));
        let fallback_domain = || {
            if helo_identity {
                helo.to_string()
            } else {
                sender.rsplit_once('@').map_or(helo, |(_, d)| d).to_string()
            }
        };
        let verdict = match tokio::time::timeout(self.deadline(), check).await {
            Ok(output) => {
                let domain = output.domain();
                SpfVerdict {
                    result: spf_outcome(output.result()),
                    domain: if domain.is_empty() { fallback_domain() } else { domain.to_ascii_lowercase() },
                    helo_identity,
                }
            }
            Err(_) => SpfVerdict { result: Outcome::TempError, domain: fallback_domain(), helo_identity },
        };
        let level_info = matches!(verdict.result, Outcome::TempError | Outcome::PermError);
        if level_info {
            tracing::info!(spf = %verdict.result, domain = %verdict.domain, "SPF could not be evaluated");
        } else {
            tracing::debug!(spf = %verdict.result, domain = %verdict.domain, "SPF checked");
        }
        verdict
    }

    /// The `Authentication-Results:` header for a message of this session.
    pub fn report_header(
        &self,
        checks: &SessionChecks,
        remote_ip: &str,
        helo: &str,
        auth_user: Option<&str>,
        message: &MessageAuth,
    ) -> String {
        Report {
            authserv_id: &self.authserv_id,
            remote_ip,
            auth_user,
            iprev: &checks.iprev,
            spf: &checks.spf,
            helo,
            message,
        }
        .header()
    }
}

pub(crate) fn spf_outcome(result: SpfResult) -> Outcome {
    match result {
        SpfResult::Pass => Outcome::Pass,
        SpfResult::Fail => Outcome::Fail,
        SpfResult::SoftFail => Outcome::SoftFail,
        SpfResult::Neutral => Outcome::Neutral,
        SpfResult::TempError => Outcome::TempError,
        SpfResult::PermError => Outcome::PermError,
        SpfResult::None => Outcome::None,
    }
}

/// What the session holds: the checks when `[auth] verify` is on.
pub type SharedVerifier = Option<Arc<Verifier>>;

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A real socket that never answers: every lookup times out.
    fn silent_server() -> (std::net::UdpSocket, Config) {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut config = Config::default();
        config.auth.dns_server = silent.local_addr().unwrap().to_string();
        config.auth.dns_timeout = Duration::from_millis(200);
        (silent, config)
    }

    #[tokio::test]
    async fn a_silent_dns_server_gives_temperror_within_the_deadline() {
        let (_socket, config) = silent_server();
        let verifier = Verifier::from_config(&config).unwrap().unwrap();
        let limit = Duration::from_millis(200) * CHECK_ROUNDS + Duration::from_millis(300);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();

        let started = Instant::now();
        let spf = verifier.spf(ip, "client.example", "a@sender.example").await;
        assert_eq!((spf.result, spf.domain.as_str()), (Outcome::TempError, "sender.example"));
        assert!(started.elapsed() < limit, "{:?}", started.elapsed());

        let started = Instant::now();
        assert_eq!(verifier.iprev(ip).await.result, Outcome::TempError);
        assert!(started.elapsed() < limit, "{:?}", started.elapsed());

        let started = Instant::now();
        let peer = Peer { ip, helo: "client.example".into(), sender: "a@sender.example".into(), spf };
        let auth = verifier.check_message(b"From: <a@sender.example>\r\nSubject: x\r\n\r\nbody\r\n", &peer).await;
        assert_eq!(auth.dmarc.result, Outcome::TempError);
        assert!(auth.dkim.is_empty());
        assert!(started.elapsed() < limit, "{:?}", started.elapsed());
    }

    #[test]
    fn off_means_no_verifier_and_the_id_defaults_to_the_hostname() {
        let mut config = Config::default();
        config.smtp.hostname = "mx.example.org".into();
        config.auth.dns_server = "127.0.0.1:53".into();
        let verifier = Verifier::from_config(&config).unwrap().unwrap();
        assert_eq!(verifier.authserv_id(), "mx.example.org");
        config.auth.verify = false;
        assert!(Verifier::from_config(&config).unwrap().is_none());
    }
}
