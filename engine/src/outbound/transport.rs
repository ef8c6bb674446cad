//! Sending one message to one recipient: through the smarthost (`relay`) or straight to the
//! recipient domain's MX (`mx`). lettre speaks SMTP; mailflow hands it the stored bytes (with
//! CRLF line ends) and an explicit envelope, so nothing is re-encoded.

use std::net::SocketAddr;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::Address;

use super::mx::{self, MxResolver};
use super::pool::{Destination, Pool, StartTls};
use crate::config::relay::{parse_relay, RelayUrl};
use crate::config::{OutboundConfig, OutboundMode, StartTlsPolicy};

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

    pub(super) fn from_route(e: &mx::RouteError) -> SendError {
        SendError { permanent: e.is_permanent(), message: e.to_string() }
    }

    pub(super) fn from_smtp(e: lettre::transport::smtp::Error) -> SendError {
        SendError { permanent: e.is_permanent(), message: e.to_string() }
    }
}

/// Where outbound mail goes.
pub enum Transport {
    /// `smtp://` or `smtps://`: our pooled connections.
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
            Transport::Relay(relay) => relay.0.send(&relay.1, &envelope, message).await,
            Transport::Mx(mx_transport_state) => {
                let MxTransport { resolver, port, pool, starttls } = mx_transport_state.as_ref();
                let domain = rcpt.rsplit_once('@').map_or(rcpt, |(_, d)| d);
                let records = resolver.records(domain).await.map_err(|e| SendError::from_route(&e))?;
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
                            oauth2: None,
                            cert_sha256: None,
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

impl Transport {
    /// Makes the relay log in with XOAUTH2 (`[outbound] relay_account`).
    pub fn with_relay_login(mut self, login: Option<std::sync::Arc<crate::oauth2::relay::RelayLogin>>) -> Transport {
        if let (Transport::Relay(relay), Some(login)) = (&mut self, login) {
            relay.1.oauth2 = Some(login);
        }
        self
    }
}

fn relay(config: &OutboundConfig, hostname: &str) -> Result<Transport, String> {
    let RelayUrl { implicit_tls, host, port, credentials, cert_sha256 } = parse_relay(config)?;
    let credentials = credentials.map(|(user, password)| Credentials::new(user, password));
    let starttls = match config.starttls {
        _ if implicit_tls => StartTls::Implicit,
        StartTlsPolicy::Never => StartTls::Never,
        StartTlsPolicy::Opportunistic => StartTls::Opportunistic { verify: true },
        StartTlsPolicy::Required => StartTls::Required,
    };
    let destination =
        Destination { host: host.clone(), port, tls_name: host, starttls, credentials, cert_sha256, oauth2: None };
    Ok(Transport::Relay(Box::new((Pool::new(hostname), destination))))
}

#[cfg(test)]
mod tests {
    use super::wire_body;

    #[test]
    fn the_final_crlf_is_left_to_the_data_terminator() {
        assert_eq!(wire_body(b"a\r\nb\r\n"), b"a\r\nb");
        assert_eq!(wire_body(b"a\r\n\r\n"), b"a\r\n");
        assert_eq!(wire_body(b"a"), b"a");
    }
}
