//! Outbound SMTP connections: opened by us with TCP_NODELAY (lettre's own transport never sets
//! it, so the 5-byte end of DATA waited ~40 ms for a delayed ACK on every message), driven by
//! lettre's SMTP client, and kept for reuse per destination. A pinned certificate
//! (`relay_cert_sha256`) replaces the CA and name checks: the handshake still proves the peer
//! holds the certificate's key, and the certificate is compared before AUTH or any mail.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;

use super::transport::SendError;

/// Connect, and each whole transaction, are bounded.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(600);
/// Idle connections kept per destination.
const MAX_IDLE: usize = 10;

/// STARTTLS policy of one destination.
#[derive(Clone, Copy, Debug)]
pub enum StartTls {
    Never,
    /// Use it when offered; `verify` = check the certificate (relay) or not (MX, like
    /// Postfix's `may`).
    Opportunistic {
        verify: bool,
    },
    Required,
    /// TLS from the first byte (`smtps://`), certificate checked.
    Implicit,
}

/// Where to send and how.
#[derive(Clone)]
pub struct Destination {
    /// Host name or IP to connect to.
    pub host: String,
    pub port: u16,
    /// The name TLS checks the certificate against.
    pub tls_name: String,
    pub starttls: StartTls,
    pub credentials: Option<Credentials>,
    /// `AUTH XOAUTH2` with a fresh token per connection (`[outbound] relay_account`).
    pub oauth2: Option<std::sync::Arc<crate::oauth2::relay::RelayLogin>>,
    /// The SHA-256 of the only certificate accepted (`relay_cert_sha256`).
    pub cert_sha256: Option<[u8; 32]>,
}

impl Destination {
    /// Idle connections are shared only between destinations that would have set them up the
    /// same way: one checked against MX name A must not carry mail for MX name B at the same
    /// address under `required`.
    fn key(&self) -> String {
        format!("{}:{} {} {:?}", self.host, self.port, self.tls_name, self.starttls)
    }
}

/// Idle connections per destination.
pub struct Pool {
    hello: ClientId,
    idle: Mutex<HashMap<String, Vec<AsyncSmtpConnection>>>,
}

impl Pool {
    pub fn new(hostname: &str) -> Pool {
        Pool { hello: ClientId::Domain(hostname.to_string()), idle: Mutex::new(HashMap::new()) }
    }

    /// One transaction to `destination`, on an idle connection when there is one (a broken
    /// idle connection is replaced once).
    pub async fn send(&self, destination: &Destination, envelope: &Envelope, body: &[u8]) -> Result<(), SendError> {
        let key = destination.key();
        if let Some(conn) = self.take(&key) {
            match self.transact(conn, envelope, body).await {
                Ok(conn) => {
                    self.put(key, conn);
                    return Ok(());
                }
                // The server answered: that is the result. Otherwise the idle connection had
                // died; try a fresh one below.
                Err(Some(error)) => return Err(error),
                Err(None) => {}
            }
        }
        let conn = self.connect(destination).await?;
        match self.transact(conn, envelope, body).await {
            Ok(conn) => {
                self.put(key, conn);
                Ok(())
            }
            Err(Some(error)) => Err(error),
            Err(None) => Err(SendError::transient(format!("connection to {key} lost during the transaction"))),
        }
    }

    /// `Err(None)`: the connection failed without an SMTP answer.
    async fn transact(
        &self,
        mut conn: AsyncSmtpConnection,
        envelope: &Envelope,
        body: &[u8],
    ) -> Result<AsyncSmtpConnection, Option<SendError>> {
        match tokio::time::timeout(TRANSACTION_TIMEOUT, send_streamed(&mut conn, envelope, body)).await {
            Ok(Ok(())) => Ok(conn),
            Ok(Err(Refused::Here(reason))) => {
                conn.abort().await;
                Err(Some(SendError::permanent(reason)))
            }
            Ok(Err(Refused::Smtp(e))) => Err(classify(&mut conn, e).await),
            Err(_) => {
                conn.abort().await;
                Err(Some(SendError::transient("SMTP transaction timed out")))
            }
        }
    }

    /// A new connection, set up as `d` says. Opportunistic TLS without certificate checks (MX
    /// hosts) falls back to plain text once when the TLS handshake itself fails — an old server
    /// that offers STARTTLS but speaks no TLS version rustls accepts — as Postfix's `may` does;
    /// where certificates are checked or credentials follow, it never does.
    async fn connect(&self, d: &Destination) -> Result<AsyncSmtpConnection, SendError> {
        match self.connect_as(d, d.starttls).await {
            Err((error, true))
                if matches!(d.starttls, StartTls::Opportunistic { verify: false }) && d.credentials.is_none() =>
            {
                tracing::info!(host = %d.tls_name, addr = %d.host, error = %error.message, "STARTTLS failed; sending in plain text (opportunistic)");
                self.connect_as(d, StartTls::Never).await.map_err(|(error, _)| error)
            }
            other => other.map_err(|(error, _)| error),
        }
    }

    /// `Err((error, true))` when the TLS set-up was what failed.
    async fn connect_as(&self, d: &Destination, starttls: StartTls) -> Result<AsyncSmtpConnection, (SendError, bool)> {
        let target = format!("{}:{}", d.host, d.port);
        let smtp_error = |e: lettre::transport::smtp::Error| {
            let error =
                if e.is_permanent() { SendError::from_smtp(e) } else { SendError::transient(format!("{target}: {e}")) };
            (error, false)
        };
        // A failed TLS set-up is never permanent: the message waits for the peer to be fixed
        // rather than bouncing on a certificate or a missing STARTTLS.
        let label = if matches!(starttls, StartTls::Implicit) { "TLS" } else { "STARTTLS" };
        let tls_failed =
            |e: lettre::transport::smtp::Error| (SendError::transient(format!("{target}: {label}: {e}")), true);
        // A pin replaces the CA and name checks; opportunistic TLS towards MX hosts has neither.
        let verify = !matches!(starttls, StartTls::Opportunistic { verify: false }) && d.cert_sha256.is_none();
        let tls_parameters = || {
            TlsParameters::builder(d.tls_name.clone())
                .dangerous_accept_invalid_certs(!verify)
                .dangerous_accept_invalid_hostnames(!verify)
                .build_rustls()
        };
        let setup = async {
            let mut conn = if matches!(starttls, StartTls::Implicit) {
                let params = tls_parameters().map_err(tls_failed)?;
                let server = (d.host.as_str(), d.port);
                AsyncSmtpConnection::connect_tokio1(server, Some(CONNECT_TIMEOUT), &self.hello, Some(params), None)
                    .await
                    .map_err(|e| if e.is_permanent() { smtp_error(e) } else { tls_failed(e) })?
            } else {
                let tcp = tokio::net::TcpStream::connect((d.host.as_str(), d.port))
                    .await
                    .map_err(|e| (SendError::transient(format!("connecting to {target}: {e}")), false))?;
                let _ = tcp.set_nodelay(true);
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello).await.map_err(smtp_error)?
            };
            let use_tls = match starttls {
                StartTls::Never | StartTls::Implicit => false,
                StartTls::Opportunistic { .. } => conn.can_starttls(),
                StartTls::Required if !conn.can_starttls() => {
                    conn.abort().await;
                    let error = SendError::transient(format!("{target}: STARTTLS is required but not offered"));
                    return Err((error, false));
                }
                StartTls::Required => true,
            };
            if use_tls {
                let params = tls_parameters().map_err(tls_failed)?;
                conn.starttls(params, &self.hello).await.map_err(tls_failed)?;
            }
            if let Some(pin) = &d.cert_sha256 {
                if let Err(error) = check_pin(&conn, pin, &target) {
                    conn.abort().await;
                    return Err((error, false));
                }
            }
            if let Some(credentials) = &d.credentials {
                if let Err(e) = conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials).await {
                    conn.abort().await;
                    return Err((login_refused(&target, &e).unwrap_or_else(|| smtp_error(e).0), false));
                }
            }
            if let Some(login) = &d.oauth2 {
                // A refused or unobtainable token is the operator's problem: the mail waits.
                let token = login.token().await.map_err(|e| (SendError::transient(format!("{target}: {e}")), false))?;
                let credentials = Credentials::new(login.user.clone(), token.clone());
                if let Err(e) = conn.auth(&[Mechanism::Xoauth2], &credentials).await {
                    login.refused(&token);
                    conn.abort().await;
                    let error = SendError::transient(format!("{target}: AUTH XOAUTH2 refused: {e}"));
                    return Err((error, false));
                }
            }
            Ok(conn)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
            Ok(result) => result,
            Err(_) => Err((SendError::transient(format!("{target}: connecting, greeting or EHLO timed out")), false)),
        }
    }

    fn take(&self, key: &str) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(key).and_then(Vec::pop)
    }

    fn put(&self, key: String, conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE {
            list.push(conn);
        }
    }
}

/// The connection's certificate against the pin: a mismatch (or no TLS at all) is a
/// temporary failure, logged as an error naming the relay and both fingerprints.
fn check_pin(conn: &AsyncSmtpConnection, pin: &[u8; 32], relay: &str) -> Result<(), SendError> {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let got = match conn.peer_certificate() {
        Ok(der) => ring::digest::digest(&ring::digest::SHA256, &der),
        Err(e) => {
            let message =
                format!("{relay}: relay_cert_sha256 is set but the connection has no certificate ({e}): is TLS on?");
            tracing::error!(relay, "{message}");
            return Err(SendError::transient(message));
        }
    };
    if got.as_ref() == pin {
        return Ok(());
    }
    let message = format!(
        "{relay}: the relay's certificate (SHA-256 {}) is not the pinned one (relay_cert_sha256 {})",
        hex(got.as_ref()),
        hex(pin)
    );
    tracing::error!(relay, "{message}");
    Err(SendError::transient(message))
}

/// A refused relay login (530, 534, 535, 538) as a temporary failure, logged as an error that
/// names the relay: wrong or rotated credentials are the operator's to fix, and bouncing every
/// queued message meanwhile would lose the mail's trail (Postfix's
/// `smtp_sasl_auth_soft_bounce = yes`). `None` for any other error.
pub(super) fn login_refused(relay: &str, e: &lettre::transport::smtp::Error) -> Option<SendError> {
    let code = e.status()?.to_string();
    if !matches!(code.as_str(), "530" | "534" | "535" | "538") {
        return None;
    }
    tracing::error!(relay, error = %e, "the relay refused the login: check relay_user and relay_password; mail stays queued");
    Some(SendError::transient(format!("relay {relay} refused the login: {e}")))
}

/// Why a streamed transaction did not go through.
enum Refused {
    /// Decided here before sending (the server lacks an extension the message needs).
    Here(String),
    Smtp(lettre::transport::smtp::Error),
}

impl From<lettre::transport::smtp::Error> for Refused {
    fn from(e: lettre::transport::smtp::Error) -> Refused {
        Refused::Smtp(e)
    }
}

/// An SMTP error of a transaction: the server's answer (4xx/5xx, or an unparsable one) is its
/// result; anything else means the connection failed (`None`).
async fn classify(conn: &mut AsyncSmtpConnection, e: lettre::transport::smtp::Error) -> Option<SendError> {
    conn.abort().await;
    if e.is_transient() || e.is_permanent() || e.is_response() {
        Some(SendError::from_smtp(e))
    } else {
        tracing::debug!(error = %e, "outbound connection failed");
        None
    }
}

/// What lettre's `AsyncSmtpConnection::send` does (MAIL with SMTPUTF8/8BITMIME as needed, RCPT,
/// DATA), but the message goes out in 64 KB pieces through the connection's dot-stuffing
/// codec: lettre's own `send` encodes the whole message into one more buffer of its size.
async fn send_streamed(conn: &mut AsyncSmtpConnection, envelope: &Envelope, body: &[u8]) -> Result<(), Refused> {
    use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
    use lettre::transport::smtp::extension::{Extension, MailBodyParameter, MailParameter};
    let mut options = Vec::new();
    let ascii = |a: &lettre::Address| AsRef::<str>::as_ref(a).is_ascii();
    let non_ascii_address = envelope.from().is_some_and(|a| !ascii(a)) || envelope.to().iter().any(|a| !ascii(a));
    if non_ascii_address {
        if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            return Err(Refused::Here(
                "envelope has non-ASCII addresses but the server does not offer SMTPUTF8".into(),
            ));
        }
        options.push(MailParameter::SmtpUtfEight);
    }
    if !body.is_ascii() {
        if !conn.server_info().supports_feature(Extension::EightBitMime) {
            return Err(Refused::Here("message has 8-bit content but the server does not offer 8BITMIME".into()));
        }
        options.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    conn.command(Mail::new(envelope.from().cloned(), options)).await?;
    for to in envelope.to() {
        conn.command(Rcpt::new(to.clone(), Vec::new())).await?;
    }
    conn.command(Data).await?;
    conn.message_iter(body.chunks(64 * 1024)).await?;
    Ok(())
}
