//! STARTTLS (RFC 3207): upgrade the connection in place, then start over.
//!
//! Anything the client pipelined after STARTTLS in plaintext is discarded before the
//! handshake (CVE-2011-0411): it must never be read as if it came over TLS. After the
//! handshake the session forgets HELO, any transaction and any authentication.

use std::time::Duration;

use tokio_rustls::TlsAcceptor;

use super::reply::Reply;
use super::session::{Flow, Session};
use super::tls::{Stream, TlsInfo};

/// How long a client may take to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

impl Session {
    pub(super) async fn handle_starttls(&mut self) -> std::io::Result<Flow> {
        let Some(config) = self.shared.tls.load_full() else {
            self.reply(Reply::new(502, "5.5.1", "STARTTLS not available"));
            return Ok(Flow::Continue);
        };
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
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Detached) else {
            return Ok(Flow::Close);
        };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(tcp)).await {
            Ok(Ok(tls)) => {
                let info = TlsInfo::of(&tls);
                tracing::info!(version = %info.version, cipher = %info.cipher, "STARTTLS done");
                self.stream = Stream::Tls(Box::new(tls));
                self.tls = Some(info);
                self.helo = None;
                self.esmtp = false;
                self.tx = None;
                self.auth_user = None;
                Ok(Flow::Continue)
            }
            Ok(Err(e)) => {
                tracing::info!(error = %e, "TLS handshake failed");
                Ok(Flow::Close)
            }
            Err(_) => {
                tracing::info!("TLS handshake timed out");
                Ok(Flow::Close)
            }
        }
    }
}
