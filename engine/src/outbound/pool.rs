//! Outbound SMTP connections: opened by us with TCP_NODELAY (lettre's own transport never sets
//! it, so the 5-byte end of DATA waited ~40 ms for a delayed ACK on every message), driven by
//! lettre's SMTP client, and kept for reuse per destination.

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
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((d.host.as_str(), d.port)))
            .await
            .map_err(|_| (SendError::transient(format!("connecting to {target} timed out")), false))?
            .map_err(|e| (SendError::transient(format!("connecting to {target}: {e}")), false))?;
        let _ = tcp.set_nodelay(true);
        let smtp_error = |e: lettre::transport::smtp::Error| {
            let error =
                if e.is_permanent() { SendError::from_smtp(e) } else { SendError::transient(format!("{target}: {e}")) };
            (error, false)
        };
        // A failed TLS set-up is never permanent: the message waits for the peer to be fixed
        // rather than bouncing on a certificate or a missing STARTTLS.
        let tls_failed =
            |e: lettre::transport::smtp::Error| (SendError::transient(format!("{target}: STARTTLS: {e}")), true);
        let setup = async {
            let mut conn =
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello).await.map_err(smtp_error)?;
            let use_tls = match starttls {
                StartTls::Never => false,
                StartTls::Opportunistic { .. } => conn.can_starttls(),
                StartTls::Required if !conn.can_starttls() => {
                    conn.abort().await;
                    let error = SendError::transient(format!("{target}: STARTTLS is required but not offered"));
                    return Err((error, false));
                }
                StartTls::Required => true,
            };
            if use_tls {
                let verify = !matches!(starttls, StartTls::Opportunistic { verify: false });
                let params = TlsParameters::builder(d.tls_name.clone())
                    .dangerous_accept_invalid_certs(!verify)
                    .dangerous_accept_invalid_hostnames(!verify)
                    .build_rustls()
                    .map_err(tls_failed)?;
                conn.starttls(params, &self.hello).await.map_err(tls_failed)?;
            }
            if let Some(credentials) = &d.credentials {
                conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials).await.map_err(smtp_error)?;
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
            Err(_) => Err((SendError::transient(format!("{target}: greeting or EHLO timed out")), false)),
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
