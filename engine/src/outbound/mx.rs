//! Direct delivery's routing: MX records ordered by preference, equal preferences shuffled,
//! the domain itself when there is no MX (RFC 5321 §5.1), and a null MX (RFC 7505) or a
//! domain that does not exist (NXDOMAIN) as a permanent failure. SERVFAIL, REFUSED and
//! timeouts are temporary: the DNS may be fixed before the message expires.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use rand::seq::SliceRandom;

/// An MX answer: preference and exchange host (without the trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    pub exchange: String,
}

/// Why no host could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("5.1.10 domain {0} accepts no mail (null MX, RFC 7505)")]
    NullMx(String),
    /// The DNS answered that the domain does not exist: a typo no retry will fix.
    #[error("5.1.2 domain {0} does not exist (DNS: NXDOMAIN, host or domain name not found)")]
    NoSuchDomain(String),
    #[error("DNS lookup for {domain} failed: {message}")]
    Dns { domain: String, message: String },
}

/// The hosts to try for `domain`, in order, from its MX records (`records` empty: no MX).
pub fn plan(domain: &str, mut records: Vec<MxRecord>) -> Result<Vec<String>, RouteError> {
    if records.iter().any(|r| r.exchange.is_empty() || r.exchange == ".") {
        return Err(RouteError::NullMx(domain.to_string()));
    }
    if records.is_empty() {
        return Ok(vec![domain.to_string()]);
    }
    let mut rng = rand::rng();
    records.shuffle(&mut rng);
    // Stable sort keeps the shuffled order among equal preferences.
    records.sort_by_key(|r| r.preference);
    Ok(records.into_iter().map(|r| r.exchange).collect())
}

/// Looks up MX records through the system resolver, or `dns_server` when set (tests, split
/// horizons).
pub struct MxResolver {
    resolver: TokioResolver,
}

impl RouteError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, RouteError::NullMx(_) | RouteError::NoSuchDomain(_))
    }
}

impl MxResolver {
    pub fn new(dns_server: Option<SocketAddr>) -> Result<MxResolver, String> {
        let resolver = match dns_server {
            Some(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                let config = ResolverConfig::from_name_servers(vec![server]);
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default()).build()
            }
            None => TokioResolver::builder_tokio().map_err(|e| e.to_string())?.build(),
        }
        .map_err(|e| e.to_string())?;
        Ok(MxResolver { resolver })
    }

    /// MX records of `domain`; empty when the domain exists but has none. NXDOMAIN is
    /// [`RouteError::NoSuchDomain`]; any other failure (SERVFAIL, REFUSED, timeout) a
    /// temporary [`RouteError::Dns`].
    pub async fn records(&self, domain: &str) -> Result<Vec<MxRecord>, RouteError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        match self.resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::MX(mx) => Some(MxRecord {
                        preference: mx.preference,
                        exchange: mx.exchange.to_utf8().trim_end_matches('.').to_string(),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_nx_domain() => Err(RouteError::NoSuchDomain(domain.to_string())),
            Err(NetError::Dns(DnsError::NoRecordsFound(NoRecords {
                response_code: ResponseCode::NoError, ..
            }))) => Ok(Vec::new()),
            Err(e) => Err(RouteError::Dns { domain: domain.to_string(), message: e.to_string() }),
        }
    }

    /// The addresses of `host` (A and AAAA), or the host itself when it is an IP literal.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, RouteError> {
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        self.resolver
            .lookup_ip(fqdn.as_str())
            .await
            .map(|lookup| lookup.iter().collect())
            .map_err(|e| RouteError::Dns { domain: host.to_string(), message: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(preference: u16, exchange: &str) -> MxRecord {
        MxRecord { preference, exchange: exchange.to_string() }
    }

    #[test]
    fn ordered_by_preference() {
        let hosts = plan("d.example", vec![mx(20, "b"), mx(10, "a"), mx(30, "c")]).unwrap();
        assert_eq!(hosts, vec!["a", "b", "c"]);
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let hosts = plan("d.example", vec![mx(10, "a"), mx(10, "b"), mx(10, "c"), mx(5, "top")]).unwrap();
            assert_eq!(hosts[0], "top");
            firsts.insert(hosts[1].clone());
        }
        assert_eq!(firsts.len(), 3, "equal preferences always came in the same order");
    }

    #[test]
    fn no_mx_falls_back_to_the_domain() {
        assert_eq!(plan("d.example", vec![]).unwrap(), vec!["d.example"]);
    }

    #[test]
    fn null_mx_is_permanent() {
        assert_eq!(plan("d.example", vec![mx(0, "")]), Err(RouteError::NullMx("d.example".into())));
        assert_eq!(plan("d.example", vec![mx(0, ".")]), Err(RouteError::NullMx("d.example".into())));
    }
}
