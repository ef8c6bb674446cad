//! The accept loop: one tokio task per connection, `max_connections` enforced with a
//! semaphore (a client past the limit gets `421` and is closed), stop on shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use super::session::Session;
use crate::config::Config;
use crate::script::ScriptHost;
use crate::spool::{new_id, Spool};

/// What every session shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub scripts: Arc<ScriptHost>,
    pub spool: Spool,
    /// Flips to `true` on SIGTERM/SIGINT: sessions waiting for a command answer 421.
    pub shutdown: watch::Receiver<bool>,
    /// One permit per open connection (`max_connections`); shutdown waits for all to return.
    pub connections: Arc<Semaphore>,
}

/// Accepts on `listener` until shutdown.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
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
        let _ = stream.set_nodelay(true);
        let id = new_id();
        let span = tracing::info_span!("session", id = %id, remote = %peer);
        match shared.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                tokio::spawn(
                    async move {
                        tracing::debug!("connected");
                        Session::new(stream, shared, peer.ip(), id).run().await;
                        tracing::debug!("disconnected");
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(_) => {
                let hostname = shared.config.smtp.hostname.clone();
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
