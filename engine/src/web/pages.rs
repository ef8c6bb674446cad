//! The read-only pages: Now, Recent messages (and one message's trace), Scripts.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{self, page, span, when};
use super::Web;
use crate::trace::{self, Minute, Trace};

/// Rows shown on the Recent messages page (the search runs over all of them in memory).
const SHOWN: usize = 200;

macro_rules! login {
    ($web:expr, $headers:expr) => {
        match super::auth::need_login(&$web, &$headers) {
            Ok(session) => session,
            Err(redirect) => return *redirect,
        }
    };
}
pub(super) use login;

pub async fn now(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let session = login!(web, headers);
    let body = html! {
        h1 { "Now" }
        noscript { meta http-equiv="refresh" content="10"; }
        div #now { (now_numbers(&web)) }
    };
    page("Now", &session, "/", body)
}

/// The part of "Now" the refresh script reloads.
pub async fn now_fragment(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    if web.session(&headers).is_none() {
        return layout::secure(StatusCode::FORBIDDEN, String::new());
    }
    layout::secure(StatusCode::OK, now_numbers(&web).into_string())
}

fn now_numbers(web: &Web) -> Markup {
    let deps = &web.deps;
    let in_flight = deps.max_connections.saturating_sub(deps.connections.available_permits());
    let minutes = trace::minutes();
    let this_minute = crate::trace::now_ms() / 60_000;
    let last = minutes.iter().rev().find(|m| m.at + 1 >= this_minute).copied().unwrap_or_default();
    let queue_depth = count_files(&deps.queue_dir, ".json");
    let spool_backlog = count_files(&deps.spool_dir, "");
    html! {
        div.cards {
            div.card { b #sessions { (in_flight) } "SMTP sessions in flight" }
            div.card { b { (last.received) } "received / min" }
            div.card { b { (last.delivered) } "delivered / min" }
            div.card { b { (last.forwarded) } "forwarded / min" }
            div.card { b { (last.rejected) } "rejected / min" }
            div.card { b #queue-depth { (queue_depth) } "in the outbound queue" }
            div.card { b { (spool_backlog) } "spool files (backlog)" }
            div.card { b { (span(deps.started.elapsed().as_secs())) } "uptime" }
            div.card { b { (env!("CARGO_PKG_VERSION")) } "version" }
        }
        h2 { "The last hour" }
        (chart(&minutes, this_minute))
        p.muted { "Bars per minute: " span style="color:#36c" { "received" } ", " span style="color:#393" { "delivered" } ", "
            span style="color:#c93" { "forwarded" } ", " span style="color:#c33" { "rejected" } "." }
    }
}

/// Files in `dir` whose names end with `suffix` (and do not start with a dot).
fn count_files(dir: &std::path::Path, suffix: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|read| {
            read.flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    !name.starts_with('.') && name.ends_with(suffix) && e.file_type().is_ok_and(|t| t.is_file())
                })
                .count()
        })
        .unwrap_or(0)
}

/// An SVG bar chart: four thin bars per minute, the last 60 minutes.
fn chart(minutes: &[Minute], this_minute: u64) -> Markup {
    let (width, height) = (720u64, 120u64);
    let top =
        minutes.iter().map(|m| m.received.max(m.delivered).max(m.forwarded).max(m.rejected)).max().unwrap_or(0).max(1);
    let bars: Vec<(u64, u64, &str)> = minutes
        .iter()
        .filter(|m| m.at + 60 > this_minute)
        .flat_map(|m| {
            let x = (59 - this_minute.saturating_sub(m.at).min(59)) * 12;
            [
                (x, m.received, "#36c"),
                (x + 3, m.delivered, "#393"),
                (x + 6, m.forwarded, "#c93"),
                (x + 9, m.rejected, "#c33"),
            ]
        })
        .filter(|(_, n, _)| *n > 0)
        .collect();
    html! {
        svg width=(width) height=(height) viewBox={"0 0 " (width) " " (height)} role="img" aria-label="messages per minute, last hour" {
            @for (x, n, colour) in bars {
                @let h = (n * (height - 10) / top).max(1);
                rect x=(x) y=(height - h) width="3" height=(h) fill=(colour) { title { (n) } }
            }
            text x="4" y="12" font-size="11" fill="#777" { "max " (top) "/min" }
        }
    }
}

#[derive(Deserialize, Default)]
pub struct Search {
    #[serde(default)]
    q: String,
}

pub async fn messages(State(web): State<Arc<Web>>, headers: HeaderMap, Query(search): Query<Search>) -> Response {
    let session = login!(web, headers);
    let (traces, matched) = trace::recent(&search.q, SHOWN);
    let body = html! {
        h1 { "Recent messages" }
        form method="get" action="/messages" {
            input type="search" name="q" value=(search.q) placeholder="sender, recipient, subject or queue id" size="40";
            " " button type="submit" { "Search" }
        }
        p.muted { (matched) " matching (the last " (trace::MAX_RECENT) " messages are kept in memory; older ones: mailflow trace ID)" @if matched > SHOWN { "; the newest " (SHOWN) " shown" } "." }
        table #recent {
            tr { th { "Received (UTC)" } th { "Queue id" } th { "From" } th { "To" } th { "Subject" } th { "Outcome" } }
            @for t in &traces {
                tr {
                    td { (when(t.received_at)) }
                    td { a href={"/messages/" (t.id)} { (t.id) } }
                    td { (t.sender) }
                    td { (t.recipients.join(", ")) }
                    td.subject { (t.subject) }
                    td { (t.outcome) }
                }
            }
        }
    };
    page("Recent messages", &session, "/messages", body)
}

pub async fn message(State(web): State<Arc<Web>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let session = login!(web, headers);
    let Some(t) = trace::find(&id) else {
        let body = html! { h1 { "Not found" } p { "No trace of " code { (id) } " in memory; try " code { "mailflow trace " (id) } "." } };
        let mut response = page("Not found", &session, "/messages", body);
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    };
    page(&format!("Message {}", t.id), &session, "/messages", trace_view(&t))
}

fn trace_view(t: &Trace) -> Markup {
    html! {
        h1 { "Message " (t.id) }
        table.facts {
            tr { th { "Received" } td { (when(t.received_at)) " UTC, " (t.source) } }
            tr { th { "Message-ID" } td { (t.message_id) } }
            tr { th { "From" } td { (t.sender) } }
            tr { th { "To" } td { (t.recipients.join(", ")) } }
            tr { th { "Subject" } td #subject { (t.subject) } }
            tr { th { "Size" } td { (t.size) " bytes" } }
            tr { th { "Outcome" } td #outcome { (t.outcome) } }
        }
        h2 { "Stages" }
        table #stages {
            tr { th { "Stage" } th { "Verdict" } th { "Decided by" } th { "Actions" } th.num { "Time" } }
            @if t.steps.is_empty() { tr { td colspan="5" .muted { "No script stage ran." } } }
            @for s in &t.steps {
                tr {
                    td { (s.stage) }
                    td { (s.verdict) @if let Some(e) = &s.error { br; span.error { (e) } } }
                    td { (s.decided_by.as_deref().unwrap_or("— (default)")) }
                    td { @for a in &s.actions { code { (a) } br; } }
                    td.num { (s.micros) " µs" }
                }
            }
        }
        h2 { "What was done" }
        table #events {
            tr { th { "When" } th { "What" } th { "Details" } th { "Queue entry" } }
            @if t.events.is_empty() { tr { td colspan="4" .muted { "Nothing yet." } } }
            @for e in &t.events {
                tr {
                    td { (trace::text::offset(t, e.at)) }
                    td { (e.kind) }
                    td { (e.detail) }
                    td { (e.queue_id) }
                }
            }
        }
    }
}

pub async fn scripts(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let session = login!(web, headers);
    let host = &web.deps.scripts;
    let status = host.status();
    let set = host.current();
    let dir = host.config().dir.clone();
    let stats = trace::stage_stats();
    let body = html! {
        h1 { "Scripts" }
        p { "Folder " code { (dir.display()) } "; the live set was loaded " (when(status.loaded_at)) " UTC." }
        @if status.errors.is_empty() {
            p.ok #reload-result { "Last reload: " @if status.attempted_at == 0 { "none since the start." } @else { "succeeded at " (when(status.attempted_at)) " UTC." } }
        } @else {
            div #reload-result {
                p.error { "Last reload failed at " (when(status.attempted_at)) " UTC; the previous set stays live:" }
                @for e in &status.errors {
                    pre.error { (e.to_string()) "\n" (source_line(&dir, &e.file, e.line, e.col)) }
                }
            }
        }
        h2 { "Live files" }
        table #files {
            tr { th { "File" } th { "Modified (UTC)" } }
            @for name in set.file_names() {
                tr { td { (name) } td { (modified(&dir.join(name))) } }
            }
        }
        h2 { "Stage calls since the start" }
        table #stage-stats {
            tr { th { "Stage" } th.num { "Calls" } th.num { "Errors" } th.num { "Total time" } th.num { "Mean" } }
            @for (stage, s) in &stats {
                tr {
                    td { (stage) } td.num { (s.calls) } td.num { (s.errors) }
                    td.num { (s.micros / 1000) " ms" }
                    td.num { (s.micros / s.calls.max(1)) " µs" }
                }
            }
        }
    };
    page("Scripts", &session, "/scripts", body)
}

/// The line an error points at, with a caret under its column.
fn source_line(dir: &std::path::Path, file: &str, line: usize, col: usize) -> String {
    // Only plain file names of the folder: never a path from elsewhere.
    if line == 0 || file.contains('/') || file.contains("..") {
        return String::new();
    }
    let Ok(text) = std::fs::read_to_string(dir.join(file)) else { return String::new() };
    let Some(source) = text.lines().nth(line - 1) else { return String::new() };
    let source: String = source.chars().take(300).collect();
    format!("{line:>4} | {source}\n     | {}^", " ".repeat(col.saturating_sub(1).min(300)))
}

fn modified(path: &std::path::Path) -> String {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(|| "—".into(), |d| when(d.as_millis() as u64))
}
