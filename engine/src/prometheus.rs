//! Metrics (`[metrics] listen`, docs/reference/configuration.md): counters named after the stages a message passes,
//! served as Prometheus text at `GET /metrics`.
//!
//! Stages count through the `metrics` facade, which does nothing until a recorder is installed:
//! `mailflow test`, `mailflow check` and a daemon without `[metrics] listen` pay one relaxed
//! load per count. With it set, `metrics-exporter-prometheus` keeps the values and renders the
//! text, and the small listener below answers scrapes (one request per connection, HTTP/1.x),
//! so no HTTP server crate enters the graph for one fixed page.
//!
//! What is counted (every name starts with `mailflow_`), by stage:
//!
//! | metric | labels | counts |
//! |---|---|---|
//! | `smtp_connections_total` | `result` = accepted, refused (over `max_connections`) | TCP connections |
//! | `smtp_messages_total` | `result` = accepted (250), tempfailed (4xx), rejected (5xx) | ends of DATA |
//! | `script_calls_total` | `stage`, `verdict` = none, accept, reject, tempfail, discard | stage calls that ran a script |
//! | `script_errors_total` | `stage` | failed script calls (`on_error` applied) |
//! | `script_reloads_total` | `result` = ok, error | reloads of the scripts folder |
//! | `spool_segments_total`, `spool_messages_total` | | durable spool writes (group commits) and the messages in them |
//! | `spool_sync_seconds` | | time to write and sync one segment (summary) |
//! | `delivered_total` | `result` = delivered, failed | messages through local delivery |
//! | `outbound_recipients_total` | `result` = sent, deferred, failed, expired | outbound attempts per recipient |
//! | `fetched_total` | `protocol` = imap, pop3; `result` = done, failed, skipped | messages taken from a mailbox |

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long one scrape may take in all (request, page, close).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more connections are closed at once, so a flood of them cannot
/// use up the file descriptors the SMTP side needs.
const MAX_SCRAPES: usize = 16;
/// Longest request head read; a scrape is a few hundred bytes.
const MAX_REQUEST: usize = 8192;
/// Summaries are rolled over this often.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Errors starting the exporter.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("[metrics] listen {0:?} is not an address:port")]
    Address(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("metrics recorder: {0}")]
    Recorder(String),
}

/// Checks `[metrics] listen` ("" = off) when the config is loaded.
pub fn parse_listen(listen: &str) -> Result<Option<SocketAddr>, MetricsError> {
    if listen.trim().is_empty() {
        return Ok(None);
    }
    listen.trim().parse().map(Some).map_err(|_| MetricsError::Address(listen.to_string()))
}

/// Binds `listen` and installs the recorder, first thing at start so that nothing the stages
/// count is lost, then serves `/metrics`; `Ok(None)` when off.
pub async fn start(listen: &str) -> Result<Option<SocketAddr>, MetricsError> {
    let Some(addr) = parse_listen(listen)? else { return Ok(None) };
    let listener = TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    let handle = PrometheusBuilder::new().install_recorder().map_err(|e| MetricsError::Recorder(e.to_string()))?;
    ON.store(true, Ordering::Relaxed);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(serve(listener, handle));
    Ok(Some(bound))
}

async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let handle = handle.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, handle)).await;
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One scrape: the request head, then the page (or 404/405/400) and close.
/// Bounded by the caller's [`REQUEST_TIMEOUT`].
async fn answer(mut stream: TcpStream, handle: PrometheusHandle) {
    let mut head = Vec::with_capacity(512);
    let complete = async {
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
            if head.len() > MAX_REQUEST {
                return false;
            }
        }
        true
    }
    .await;
    let response = if complete { respond(&head, &handle) } else { status(400, "Bad Request") };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

fn respond(head: &[u8], handle: &PrometheusHandle) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return status(404, "Not Found");
    }
    if method != "GET" && method != "HEAD" {
        return status(405, "Method Not Allowed");
    }
    let body = handle.render();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method == "GET" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn status(code: u16, text: &str) -> Vec<u8> {
    format!("HTTP/1.1 {code} {text}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
}

// --- the counts, one function per place that counts ----------------------------------------

/// Whether a recorder is installed. Without one the `metrics` macros still build each count's
/// key and labels (≈ 500 instructions, 1.7 % of a message's script work): skip them.
static ON: AtomicBool = AtomicBool::new(false);

fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

pub fn smtp_connection(accepted: bool) {
    if !on() {
        return;
    }
    metrics::counter!("mailflow_smtp_connections_total", "result" => if accepted { "accepted" } else { "refused" })
        .increment(1);
}

/// The reply given at the end of DATA.
pub fn smtp_message(code: u16) {
    if !on() {
        return;
    }
    let result = match code {
        200..=299 => "accepted",
        400..=499 => "tempfailed",
        _ => "rejected",
    };
    metrics::counter!("mailflow_smtp_messages_total", "result" => result).increment(1);
}

/// A stage call that ran at least one script: the stage's name, its verdict (`none`, `accept`,
/// `reject`, `tempfail`, `discard`) and whether a script failed.
pub fn script_call(stage: &'static str, verdict: &'static str, failed: bool) {
    if !on() {
        return;
    }
    metrics::counter!("mailflow_script_calls_total", "stage" => stage, "verdict" => verdict).increment(1);
    if failed {
        metrics::counter!("mailflow_script_errors_total", "stage" => stage).increment(1);
    }
}

pub fn script_reload(ok: bool) {
    if !on() {
        return;
    }
    metrics::counter!("mailflow_script_reloads_total", "result" => if ok { "ok" } else { "error" }).increment(1);
}

pub fn spool_segment(messages: usize, took: Duration) {
    if !on() {
        return;
    }
    metrics::counter!("mailflow_spool_segments_total").increment(1);
    metrics::counter!("mailflow_spool_messages_total").increment(messages as u64);
    metrics::histogram!("mailflow_spool_sync_seconds").record(took.as_secs_f64());
}

pub fn delivered(ok: bool) {
    if !on() {
        return;
    }
    metrics::counter!("mailflow_delivered_total", "result" => if ok { "delivered" } else { "failed" }).increment(1);
}

/// One recipient's outbound attempt: "sent", "deferred", "failed" or "expired".
pub fn outbound(result: &'static str) {
    if !on() {
        return;
    }
    metrics::counter!("mailflow_outbound_recipients_total", "result" => result).increment(1);
}

/// One message taken from a mailbox: "done", "failed" (retried next round) or "skipped".
pub fn fetched(protocol: &'static str, result: &'static str) {
    if !on() {
        return;
    }
    metrics::counter!("mailflow_fetched_total", "protocol" => protocol, "result" => result).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_is_off_when_empty_and_checked_otherwise() {
        assert!(parse_listen("").unwrap().is_none());
        assert_eq!(parse_listen("127.0.0.1:9425").unwrap(), Some("127.0.0.1:9425".parse().unwrap()));
        assert!(matches!(parse_listen("localhost"), Err(MetricsError::Address(_))));
    }

    #[test]
    fn only_get_or_head_of_the_metrics_path_is_served() {
        let handle = PrometheusBuilder::new().build_recorder().handle();
        let text = |head: &str| String::from_utf8(respond(head.as_bytes(), &handle)).unwrap();
        let get = text("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(get.starts_with("HTTP/1.1 200 OK\r\n") && get.contains("text/plain; version=0.0.4"), "{get}");
        assert!(text("GET /metrics?x=1 HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 200"));
        let head = text("HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(text("GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(text("POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(text("\r\n\r\n").starts_with("HTTP/1.1 404"));
    }
}
