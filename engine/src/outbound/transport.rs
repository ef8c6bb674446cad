//! Sending one message to one recipient: through the smarthost (`relay`) or straight to the
//! recipient domain's MX (`mx`). lettre speaks SMTP; mailflow hands it the stored bytes (with
//! CRLF line ends) and an explicit envelope, so nothing is re-encoded.

use std::net::SocketAddr;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::PoolConfig;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::mx::{self, MxResolver};
use super::pool::{Destination, Pool, StartTls};
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
    pub(super) fn transient(message: impl Into<String>) -> SendError {
        SendError { permanent: false, message: message.into() }
    }

    pub(super) fn permanent(message: impl Into<String>) -> SendError {
        SendError { permanent: true, message: message.into() }
    }

    pub(super) fn from_smtp(e: lettre::transport::smtp::Error) -> SendError {
        SendError { permanent: e.is_permanent(), message: e.to_string() }
    }
}

/// Where outbound mail goes.
pub enum Transport {
    /// `smtps://`: lettre's own transport (implicit TLS from the first byte).
    RelayImplicitTls(Box<Smtp>),
    /// `smtp://`: our pooled connections.
    Relay(Box<(Pool, Destination)>),
    Mx(Box<MxTransport>),
}

/// Direct delivery: resolver, port and one pooled transport per destination address (a
/// connection is reused for every recipient behind the same MX).
pub struct MxTransport {
    resolver: MxResolver,
    port: u16,
    pool: Pool,
    starttls: StartTls,
}

impl Transport {
    pub fn from_config(config: &OutboundConfig, hostname: &str) -> Result<Transport, String> {
        match config.mode {
            OutboundMode::Relay => relay(config, hostname),
            OutboundMode::Mx => {
                let dns = if config.dns_server.is_empty() {
                    None
                } else {
                    Some(config.dns_server.parse::<SocketAddr>().map_err(|e| format!("[outbound] dns_server: {e}"))?)
                };
                // Opportunistic towards MX hosts does not verify: their certificates are often
                // self-signed or name another host, and refusing them would only fall back to
                // plain text (Postfix's `may`). `required` verifies against the MX host name.
                let starttls = match config.starttls {
                    StartTlsPolicy::Never => StartTls::Never,
                    StartTlsPolicy::Opportunistic => StartTls::Opportunistic { verify: false },
                    StartTlsPolicy::Required => StartTls::Required,
                };
                Ok(Transport::Mx(Box::new(MxTransport {
                    resolver: MxResolver::new(dns)?,
                    port: config.mx_port,
                    pool: Pool::new(hostname),
                    starttls,
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
            Transport::RelayImplicitTls(smtp) => {
                smtp.send_raw(&envelope, message).await.map(|_| ()).map_err(SendError::from_smtp)
            }
            Transport::Relay(relay) => relay.0.send(&relay.1, &envelope, message).await,
            Transport::Mx(mx_transport_state) => {
                let MxTransport { resolver, port, pool, starttls } = mx_transport_state.as_ref();
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
                        let destination = Destination {
                            host: ip.to_string(),
                            port: *port,
                            tls_name: host.clone(),
                            starttls: *starttls,
                            credentials: None,
                        };
                        match pool.send(&destination, &envelope, message).await {
                            Ok(()) => return Ok(()),
                            Err(error) => {
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

/// `[outbound] relay` taken apart: `smtp[s]://[user[:password]@]host[:port]`.
#[derive(Debug, PartialEq, Eq)]
pub struct RelayUrl {
    pub implicit_tls: bool,
    pub host: String,
    pub port: u16,
    /// From the URL (percent-decoded) or else `relay_user`/`relay_password`.
    pub credentials: Option<(String, String)>,
}

/// Parses and checks `[outbound] relay` with `relay_user`/`relay_password`; `mailflow check`
/// and `run` both go through it.
pub fn parse_relay(config: &OutboundConfig) -> Result<RelayUrl, String> {
    let url = config.relay.as_str();
    let (implicit_tls, rest) = if let Some(rest) = url.strip_prefix("smtps://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("smtp://") {
        (false, rest)
    } else {
        return Err(format!("[outbound] relay {:?}: use smtp://host:port or smtps://host:port", redacted(url)));
    };
    let rest = rest.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, rest),
    };
    let (host, port) = host_port(hostport, if implicit_tls { 465 } else { 25 })?;
    if host.is_empty() {
        return Err("[outbound] relay: no host".into());
    }
    let credentials = match userinfo {
        Some(_) if !config.relay_user.is_empty() => {
            return Err("[outbound] relay: credentials both in the URL and in relay_user; keep one".into())
        }
        Some(userinfo) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            Some((percent_decode(user)?, percent_decode(password)?))
        }
        None if config.relay_user.is_empty() => None,
        None => Some((config.relay_user.clone(), config.relay_password.clone())),
    };
    Ok(RelayUrl { implicit_tls, host, port, credentials })
}

/// `url` with whatever stands before an `@` (user and password) replaced, for messages.
fn redacted(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((before, after)) => {
            let scheme = before.split_once("://").map_or("", |(s, _)| s);
            format!("{scheme}://…@{after}")
        }
        None => url.to_string(),
    }
}

/// `%XX` escapes of a URL's user or password (RFC 3986 §2.1), so `@`, `:` and `/` can be used.
fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| "[outbound] relay: a '%' in the user or password must start %XX".to_string())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "[outbound] relay: the user or password is not UTF-8".to_string())
}

fn relay(config: &OutboundConfig, hostname: &str) -> Result<Transport, String> {
    let RelayUrl { implicit_tls, host, port, credentials } = parse_relay(config)?;
    let credentials = credentials.map(|(user, password)| Credentials::new(user, password));
    if !implicit_tls {
        let starttls = match config.starttls {
            StartTlsPolicy::Never => StartTls::Never,
            StartTlsPolicy::Opportunistic => StartTls::Opportunistic { verify: true },
            StartTlsPolicy::Required => StartTls::Required,
        };
        let destination = Destination { host: host.clone(), port, tls_name: host, starttls, credentials };
        return Ok(Transport::Relay(Box::new((Pool::new(hostname), destination))));
    }
    let params = TlsParameters::new_rustls(host.clone()).map_err(|e| format!("[outbound] relay TLS: {e}"))?;
    let mut builder = Smtp::builder_dangerous(host.as_str())
        .port(port)
        .tls(Tls::Wrapper(params))
        .timeout(Some(SMTP_TIMEOUT))
        .hello_name(ClientId::Domain(hostname.to_string()))
        .pool_config(PoolConfig::new().max_size(10));
    if let Some(credentials) = credentials {
        builder = builder.credentials(credentials);
    }
    Ok(Transport::RelayImplicitTls(Box::new(builder.build())))
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

#[cfg(test)]
mod tests {
    use super::{host_port, parse_relay, wire_body, RelayUrl};
    use crate::config::OutboundConfig;

    fn relay(url: &str, user: &str) -> Result<RelayUrl, String> {
        let config = OutboundConfig {
            relay: url.into(),
            relay_user: user.into(),
            relay_password: "pw".into(),
            ..Default::default()
        };
        parse_relay(&config)
    }

    #[test]
    fn relay_url_with_and_without_credentials() {
        let plain = relay("smtp://smtp.example:587/", "").unwrap();
        assert_eq!(
            (plain.implicit_tls, plain.host.as_str(), plain.port, plain.credentials),
            (false, "smtp.example", 587, None)
        );
        let fields = relay("smtps://smtp.example", "me").unwrap();
        assert_eq!((fields.port, fields.credentials), (465, Some(("me".into(), "pw".into()))));
        let inline = relay("smtp://me%40home:p%3Ass@w0rd@[::1]:2526", "").unwrap();
        assert_eq!(inline.host, "::1");
        assert_eq!(inline.credentials, Some(("me@home".into(), "p:ss@w0rd".into())));
        assert!(relay("smtp://me:pw@smtp.example", "other").is_err());
        assert!(relay("smtp://me:%zz@smtp.example", "").is_err());
        assert!(relay("smtp://me:%+A@smtp.example", "").is_err());
        let shown = relay("submission://me:secret@smtp.example", "").unwrap_err();
        assert!(!shown.contains("secret") && shown.contains("smtp.example"), "{shown}");
        assert!(relay("foo://smtp.example", "").is_err());
        assert!(relay("smtp://", "").is_err());
    }

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
