//! Sending one message to one recipient: through the smarthost (`relay`) or straight to the
//! recipient domain's MX (`mx`). lettre speaks SMTP; mailflow hands it the stored bytes (with
//! CRLF line ends) and an explicit envelope, so nothing is re-encoded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::PoolConfig;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::mx::{self, MxResolver};
use crate::config::{OutboundConfig, OutboundMode, StartTlsPolicy};

type Smtp = AsyncSmtpTransport<Tokio1Executor>;

/// Per-command timeout towards remote servers.
const SMTP_TIMEOUT: Duration = Duration::from_secs(60);

/// A failed attempt: permanent (5xx, null MX, bad address) or worth retrying.
#[derive(Debug, Clone)]
pub struct SendError {
    pub permanent: bool,
    pub message: String,
}

impl SendError {
    fn transient(message: impl Into<String>) -> SendError {
        SendError { permanent: false, message: message.into() }
    }

    fn permanent(message: impl Into<String>) -> SendError {
        SendError { permanent: true, message: message.into() }
    }

    fn from_smtp(e: lettre::transport::smtp::Error) -> SendError {
        SendError { permanent: e.is_permanent(), message: e.to_string() }
    }
}

/// Where outbound mail goes.
pub enum Transport {
    Relay(Box<Smtp>),
    Mx(Box<MxTransport>),
}

/// Direct delivery: resolver, port and one pooled transport per destination address (a
/// connection is reused for every recipient behind the same MX).
pub struct MxTransport {
    resolver: MxResolver,
    port: u16,
    hello: String,
    transports: Mutex<HashMap<SocketAddr, Smtp>>,
}

impl Transport {
    pub fn from_config(config: &OutboundConfig, hostname: &str) -> Result<Transport, String> {
        match config.mode {
            OutboundMode::Relay => relay(config, hostname).map(|t| Transport::Relay(Box::new(t))),
            OutboundMode::Mx => {
                let dns = if config.dns_server.is_empty() {
                    None
                } else {
                    Some(config.dns_server.parse::<SocketAddr>().map_err(|e| format!("[outbound] dns_server: {e}"))?)
                };
                Ok(Transport::Mx(Box::new(MxTransport {
                    resolver: MxResolver::new(dns)?,
                    port: config.mx_port,
                    hello: hostname.to_string(),
                    transports: Mutex::new(HashMap::new()),
                })))
            }
        }
    }

    /// Sends `message` from `sender` ("" = null sender) to `rcpt`.
    pub async fn send(&self, sender: &str, rcpt: &str, message: &[u8]) -> Result<(), SendError> {
        let from = if sender.is_empty() {
            None
        } else {
            Some(sender.parse::<Address>().map_err(|e| SendError::permanent(format!("sender <{sender}>: {e}")))?)
        };
        let to = rcpt.parse::<Address>().map_err(|e| SendError::permanent(format!("recipient <{rcpt}>: {e}")))?;
        let envelope = Envelope::new(from, vec![to]).map_err(|e| SendError::permanent(e.to_string()))?;
        let message = wire_body(message);
        match self {
            Transport::Relay(smtp) => smtp.send_raw(&envelope, message).await.map(|_| ()).map_err(SendError::from_smtp),
            Transport::Mx(mx_transport_state) => {
                let MxTransport { resolver, port, hello, transports } = mx_transport_state.as_ref();
                let domain = rcpt.rsplit_once('@').map_or(rcpt, |(_, d)| d);
                let records = resolver.records(domain).await.map_err(|e| SendError::transient(e.to_string()))?;
                let hosts = mx::plan(domain, records).map_err(|e| SendError::permanent(e.to_string()))?;
                let mut last = SendError::transient(format!("no usable MX host for {domain}"));
                for host in hosts {
                    let addresses = match resolver.addresses(&host).await {
                        Ok(addresses) => addresses,
                        Err(e) => {
                            last = SendError::transient(e.to_string());
                            continue;
                        }
                    };
                    for ip in addresses {
                        let addr = SocketAddr::new(ip, *port);
                        let smtp = match mx_transport(transports, addr, &host, hello) {
                            Ok(smtp) => smtp,
                            Err(e) => {
                                last = SendError::transient(e);
                                continue;
                            }
                        };
                        match smtp.send_raw(&envelope, message).await {
                            Ok(_) => return Ok(()),
                            Err(e) => {
                                let error = SendError::from_smtp(e);
                                // A 5xx from a reachable MX is the domain's answer: stop.
                                if error.permanent {
                                    return Err(error);
                                }
                                tracing::info!(host = %host, addr = %addr, error = %error.message, "MX attempt failed; trying the next");
                                last = error;
                            }
                        }
                    }
                }
                Err(last)
            }
        }
    }
}

/// The bytes to hand to lettre: it terminates DATA with `<CRLF>.<CRLF>` itself, so the
/// message's own final CRLF must go, or every message would arrive with an extra empty line.
fn wire_body(message: &[u8]) -> &[u8] {
    message.strip_suffix(b"\r\n").unwrap_or(message)
}

fn relay(config: &OutboundConfig, hostname: &str) -> Result<Smtp, String> {
    let (implicit_tls, rest) = if let Some(rest) = config.relay.strip_prefix("smtps://") {
        (true, rest)
    } else if let Some(rest) = config.relay.strip_prefix("smtp://") {
        (false, rest)
    } else {
        return Err(format!("[outbound] relay {:?}: use smtp://host:port or smtps://host:port", config.relay));
    };
    let (host, port) = host_port(rest.trim_end_matches('/'), if implicit_tls { 465 } else { 25 })?;
    if host.is_empty() {
        return Err("[outbound] relay: no host".into());
    }
    let params = || TlsParameters::new_rustls(host.clone()).map_err(|e| format!("[outbound] relay TLS: {e}"));
    let tls = if implicit_tls {
        Tls::Wrapper(params()?)
    } else {
        match config.starttls {
            StartTlsPolicy::Never => Tls::None,
            StartTlsPolicy::Opportunistic => Tls::Opportunistic(params()?),
            StartTlsPolicy::Required => Tls::Required(params()?),
        }
    };
    let mut builder = Smtp::builder_dangerous(host.as_str())
        .port(port)
        .tls(tls)
        .timeout(Some(SMTP_TIMEOUT))
        .hello_name(ClientId::Domain(hostname.to_string()))
        .pool_config(PoolConfig::new().max_size(10));
    if !config.relay_user.is_empty() {
        builder = builder.credentials(Credentials::new(config.relay_user.clone(), config.relay_password.clone()));
    }
    Ok(builder.build())
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, with `default` when no port is given.
fn host_port(rest: &str, default: u16) -> Result<(String, u16), String> {
    let port = |p: &str| p.parse::<u16>().map_err(|_| format!("[outbound] relay: bad port {p:?}"));
    if let Some(inner) = rest.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("[outbound] relay: no ']' after the IPv6 address in {rest:?}"))?;
        return match after {
            "" => Ok((host.to_string(), default)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host.to_string(), port(p)?)),
                None => Err(format!("[outbound] relay: unexpected {after:?} after the IPv6 address")),
            },
        };
    }
    match rest.rsplit_once(':') {
        Some((host, p)) => Ok((host.to_string(), port(p)?)),
        None => Ok((rest.to_string(), default)),
    }
}

/// The pooled transport for one MX address; opportunistic STARTTLS without certificate
/// checks, as MX-to-MX TLS is (Postfix's `may` level).
fn mx_transport(
    cache: &Mutex<HashMap<SocketAddr, Smtp>>,
    addr: SocketAddr,
    host: &str,
    hello: &str,
) -> Result<Smtp, String> {
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(smtp) = cache.get(&addr) {
        return Ok(smtp.clone());
    }
    let params = TlsParameters::builder(host.to_string())
        .dangerous_accept_invalid_certs(true)
        .dangerous_accept_invalid_hostnames(true)
        .build_rustls()
        .map_err(|e| e.to_string())?;
    let smtp = Smtp::builder_dangerous(addr.ip().to_string())
        .port(addr.port())
        .tls(Tls::Opportunistic(params))
        .timeout(Some(SMTP_TIMEOUT))
        .hello_name(ClientId::Domain(hello.to_string()))
        .pool_config(PoolConfig::new().max_size(4))
        .build();
    cache.insert(addr, smtp.clone());
    Ok(smtp)
}

#[cfg(test)]
mod tests {
    use super::{host_port, wire_body};

    #[test]
    fn relay_host_and_port() {
        assert_eq!(host_port("smtp.example:587", 25), Ok(("smtp.example".into(), 587)));
        assert_eq!(host_port("smtp.example", 25), Ok(("smtp.example".into(), 25)));
        assert_eq!(host_port("[::1]:2526", 25), Ok(("::1".into(), 2526)));
        assert_eq!(host_port("[::1]", 465), Ok(("::1".into(), 465)));
        assert!(host_port("smtp.example:x", 25).is_err());
        assert!(host_port("[::1", 25).is_err());
        assert!(host_port("[::1]x", 25).is_err());
    }

    #[test]
    fn the_final_crlf_is_left_to_the_data_terminator() {
        assert_eq!(wire_body(b"a\r\nb\r\n"), b"a\r\nb");
        assert_eq!(wire_body(b"a\r\n\r\n"), b"a\r\n");
        assert_eq!(wire_body(b"a"), b"a");
    }
}
