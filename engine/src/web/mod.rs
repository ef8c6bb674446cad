//! The status page (`[web] listen`, docs/web.md): server-rendered HTML over HTTP/1.1.
//!
//! Input: requests from a browser; what the daemon knows (recorder in [`crate::trace`], the
//! script host, the outbound queue folder, the connection limit). Output: pages, and the few
//! changes an operator may make (retry or delete a queue entry; "Try a script" runs a dry run
//! and sends nothing).
//!
//! Security: every page but `/login` needs a session (cookie HttpOnly, SameSite=Strict, Secure
//! when the request came over HTTPS through a proxy); every state-changing request is a POST
//! carrying the session's CSRF token; all text is escaped by maud; a Content-Security-Policy
//! allows scripts from this origin only (the refresh script), never inline ones. The page
//! serves plain HTTP: bind it to loopback, or put a TLS proxy in front (a warning says so).

mod admin;
mod auth;
mod layout;
mod pages;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::script::ScriptHost;

/// What the pages read and act on.
pub struct WebDeps {
    /// The running config (SIGHUP may change `password_hash`).
    pub config: Arc<ArcSwap<Config>>,
    pub scripts: Arc<ScriptHost>,
    /// The SMTP connection limit: permits taken are sessions in flight.
    pub connections: Arc<Semaphore>,
    pub max_connections: usize,
    pub queue_dir: PathBuf,
    pub spool_dir: PathBuf,
    pub started: Instant,
}

pub(crate) struct Web {
    deps: WebDeps,
    sessions: auth::Sessions,
}

/// Starts the page when `[web] listen` is set; returns the bound address.
pub async fn start(deps: WebDeps) -> anyhow::Result<Option<SocketAddr>> {
    let listen = deps.config.load().web.listen.trim().to_string();
    if listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} ([web] listen): {e}"))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(addr = %addr, "[web] listens beyond loopback without TLS: passwords and cookies cross the network in clear; put a TLS proxy in front");
    }
    if deps.config.load().web.password_hash.is_empty() {
        tracing::warn!("[web] password_hash is not set: nobody can log in to the status page");
    }
    let app = router(Arc::new(Web { deps, sessions: auth::Sessions::default() }));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "status page stopped");
        }
    });
    Ok(Some(addr))
}

pub(crate) fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(pages::now))
        .route("/now", get(pages::now_fragment))
        .route("/messages", get(pages::messages))
        .route("/messages/{id}", get(pages::message))
        .route("/scripts", get(pages::scripts))
        .route("/accounts", get(admin::accounts))
        .route("/queue", get(admin::queue))
        .route("/queue/{id}/retry", post(admin::retry))
        .route("/queue/{id}/delete", post(admin::delete))
        .route("/try", get(admin::try_form).post(admin::try_run))
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/app.js", get(layout::script))
        .fallback(layout::not_found)
        .with_state(web)
}
