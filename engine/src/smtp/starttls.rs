//! STARTTLS (RFC 3207): end the plaintext session, make a TLS one over the same connection.
//!
//! Input: the STARTTLS command of a plaintext session. Output: `220`, then the handshake;
//! [`Session::into_tls`] consumes the plaintext session and returns the TLS one with HELO,
//! any transaction and any authentication forgotten (RFC 3207 §4.2).
//!
//! Security: anything the client pipelined after STARTTLS in plaintext is discarded before
//! the handshake (CVE-2011-0411): it must never be read as if it came over TLS. The handshake
//! is timed ([`HANDSHAKE_TIMEOUT`]).

use std::time::Duration;

use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::reply::Reply;
use super::session::{Flow, Session, SessionStream, State};
use super::tls::TlsInfo;

/// How long a client may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

impl<S: SessionStream> Session<S> {
    pub(super) async fn handle_starttls(&mut self) -> std::io::Result<Flow> {
        if self.shared.tls.load().is_none() {
            self.reply(Reply::new(502, "5.5.1", "STARTTLS not available"));
            return Ok(Flow::Continue);
        }
        if self.tls.is_some() {
            self.reply(Reply::new(503, "5.5.1", "Already in TLS"));
            return Ok(Flow::Continue);
        }
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        self.flush().await?;
        let discarded = self.inbuf_mut().len();
        if discarded > 0 {
            tracing::warn!(bytes = discarded, "plaintext pipelined after STARTTLS discarded (CVE-2011-0411)");
        }
        self.inbuf_mut().clear();
        Ok(Flow::StartTls)
    }

    /// Turns this session, whose `220 Ready to start TLS` went out, into the TLS session over
    /// the same connection. `None` when the handshake failed or timed out: the connection
    /// is closed.
    pub async fn into_tls(mut self) -> Option<Session<TlsStream<S>>> {
        let config = self.shared.tls.load_full()?;
        // Nothing read before the handshake may be taken as TLS input.
        self.inbuf_mut().clear();
        let (stream, session) = self.split_stream();
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream)).await {
            Ok(Ok(tls)) => {
                let info = TlsInfo::of(&tls);
                tracing::info!(version = %info.version, cipher = %info.cipher, "STARTTLS done");
                let mut session = session.with_stream(tls);
                session.tls = Some(info);
                session.state = State::Command;
                Some(session)
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::info!("TLS handshake timed out");
                None
            }
        }
    }
}
