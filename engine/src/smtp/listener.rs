//! The accept loop: one tokio task per connection, `max_connections` enforced with a
//! semaphore (a client past the limit gets `421` and is closed), stop on shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::credentials::FailureLimiter;
use super::session::Session;
use super::starttls::HANDSHAKE_TIMEOUT;
use super::tls::TlsInfo;
use crate::config::{Config, ListenerConfig, ListenerTls};
use crate::script::ScriptHost;
use crate::spool::{new_id, Spool};

/// What every session shares.
pub struct Shared {
    /// The running config; SIGHUP swaps in a new one (see [`crate::config::reload`]). A
    /// session takes a snapshot when it starts.
    pub config: ArcSwap<Config>,
    pub scripts: Arc<ScriptHost>,
    pub spool: Spool,
    /// Flips to `true` on SIGTERM/SIGINT: sessions waiting for a command answer 421.
    pub shutdown: watch::Receiver<bool>,
    /// One permit per open connection (`max_connections`); shutdown waits for all to return.
    pub connections: Arc<Semaphore>,
    /// TLS server configuration when `tls_cert`/`tls_key` are set; swapped on SIGHUP.
    pub tls: ArcSwapOption<rustls::ServerConfig>,
    /// Recent AUTH failures per client address.
    pub auth_failures: FailureLimiter,
    /// `[srs]`: bounces to SRS addresses are verified at RCPT and sent back.
    pub srs: Option<Arc<crate::proto::srs::Srs>>,
    /// SPF, DKIM, DMARC, ARC and iprev checks, when `[auth] verify` is on.
    pub verifier: crate::verify::SharedVerifier,
}

/// Accepts on `listener` until shutdown. With implicit TLS every connection starts with a
/// TLS handshake (RFC 8314, port 465); `spec.role` decides the session's policy.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, spec: ListenerConfig) {
    let implicit_tls = spec.tls == ListenerTls::Implicit;
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (mut stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // An IPv4 client of a dual-stack `[::]` listener is 1.2.3.4, not ::ffff:1.2.3.4.
        let peer = std::net::SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let _ = stream.set_nodelay(true);
        let id = new_id();
        let span = tracing::info_span!("session", id = %id, remote = %peer);
        match shared.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                crate::prometheus::smtp_connection(true);
                let shared = shared.clone();
                tokio::spawn(
                    async move {
                        tracing::debug!("connected");
                        // Boxed, so that each connection's task is not sized for the TLS
                        // session's future.
                        if implicit_tls {
                            if let Some((stream, tls)) = Box::pin(handshake(&shared, stream)).await {
                                let session = Session::new(stream, shared, peer.ip(), id, Some(tls));
                                Box::pin(session.with_listener(&spec).run_tls()).await;
                            }
                        } else {
                            Session::new(stream, shared, peer.ip(), id, None).with_listener(&spec).run().await;
                        }
                        tracing::debug!("disconnected");
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(_) => {
                crate::prometheus::smtp_connection(false);
                let hostname = shared.config.load().smtp.hostname.clone();
                tokio::spawn(
                    async move {
                        tracing::warn!("connection limit reached: 421");
                        let line = format!("421 4.7.0 {hostname} Too many connections, try again later\r\n");
                        let _ = stream.write_all(line.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    }
                    .instrument(span),
                );
            }
        }
    }
}

/// The TLS handshake of an implicit-TLS connection; `None` when it failed.
async fn handshake(shared: &Shared, stream: TcpStream) -> Option<(TlsStream<TcpStream>, TlsInfo)> {
    let config = shared.tls.load_full()?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream)).await {
        Ok(Ok(tls)) => {
            let info = TlsInfo::of(&tls);
            tracing::debug!(version = %info.version, cipher = %info.cipher, "implicit TLS");
            Some((tls, info))
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
