//! The pages that act or show the pollers: Accounts, Queue (retry, delete), Try a script.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use serde::Deserialize;

use super::auth::CsrfForm;
use super::layout::{page, span, when};
use super::pages::login;
use super::Web;
use crate::outbound::entry::{self, RcptStatus};
use crate::script::Stage;

/// Largest message pasted into "Try a script".
const MAX_TRY_MESSAGE: usize = 1024 * 1024;

pub async fn accounts(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let session = login!(web, headers);
    let config = web.deps.config.load_full();
    let status: std::collections::BTreeMap<String, crate::trace::AccountStatus> =
        crate::trace::accounts().into_iter().collect();
    let now = crate::spool::unix_now();
    let body = html! {
        h1 { "Accounts" }
        @if config.accounts.is_empty() { p.muted { "No [[accounts]] configured." } }
        @else {
            table #accounts {
                tr { th { "Account" } th { "Server" } th { "State" } th { "Last error" } th { "Next retry" } th { "Last poll (UTC)" } th.num { "Processed today" } th { "UIDVALIDITY" } }
                @for account in &config.accounts {
                    @let s = status.get(&account.name).cloned().unwrap_or_default();
                    tr {
                        td { (account.name) }
                        td { (format!("{:?}", account.protocol).to_lowercase()) " " (account.host) }
                        td class=[(s.state == crate::trace::AccountState::BackingOff).then_some("error")] { (s.state.name()) }
                        td { (s.last_error) }
                        td { @if s.state == crate::trace::AccountState::BackingOff && s.next_retry > 0 { "in " (span(s.next_retry.saturating_sub(now))) } }
                        td { (when(s.last_poll * 1000)) }
                        td.num { (s.processed_today) }
                        td { @for (mailbox, v) in &s.uidvalidity { (mailbox) "=" (v) " " } }
                    }
                }
            }
        }
    };
    page("Accounts", &session, "/accounts", body)
}

pub async fn queue(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let session = login!(web, headers);
    let dir = web.deps.queue_dir.clone();
    let entries = tokio::task::spawn_blocking(move || entry::list(&dir)).await.unwrap_or_default();
    let now = crate::spool::unix_now();
    let body = html! {
        h1 { "Queue" }
        p.muted { (entries.len()) " entries." }
        table #queue {
            tr { th { "Id" } th { "Kind" } th { "Recipients" } th.num { "Attempts" } th { "Next retry" } th { "Last error" } th { "" } }
            @for e in &entries {
                tr id={"q-" (e.id)} {
                    td { (e.id) }
                    td { (format!("{:?}", e.kind).to_lowercase()) }
                    td { @for r in e.recipients.iter().filter(|r| r.status == RcptStatus::Pending) { (r.addr) br; } }
                    td.num { (e.attempts) }
                    td.next { @if e.next_try <= now { "now" } @else { "in " (span(e.next_try - now)) } }
                    td { (e.last_error) }
                    td {
                        form method="post" action={"/queue/" (e.id) "/retry"} style="display:inline" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" name="retry" { "Retry now" }
                        }
                        " "
                        form method="post" action={"/queue/" (e.id) "/delete"} style="display:inline" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" name="delete" { "Delete" }
                        }
                    }
                }
            }
        }
    };
    page("Queue", &session, "/queue", body)
}

/// Queue ids are file names in the queue folder: letters, digits, `-` and `_` only.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub async fn retry(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    queue_change(&web, &headers, &id, &form.csrf, true).await
}

pub async fn delete(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    queue_change(&web, &headers, &id, &form.csrf, false).await
}

async fn queue_change(web: &Web, headers: &HeaderMap, id: &str, csrf: &str, retry: bool) -> Response {
    if let Err(refused) = web.check_post(headers, csrf) {
        return *refused;
    }
    if !valid_id(id) {
        return (StatusCode::NOT_FOUND, "no such queue entry\n").into_response();
    }
    let (dir, id) = (web.deps.queue_dir.clone(), id.to_string());
    let done = tokio::task::spawn_blocking(move || {
        let mut e = entry::load(&dir, &id)?;
        if retry {
            e.next_try = 0;
            entry::save(&dir, &e)?;
            tracing::info!(queue_id = %id, "status page: retry now");
        } else {
            entry::remove(&dir, &id)?;
            tracing::info!(queue_id = %id, "status page: entry deleted");
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    match done {
        Ok(Ok(())) => Redirect::to("/queue").into_response(),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            (StatusCode::NOT_FOUND, "no such queue entry\n").into_response()
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "cannot change the queue entry\n").into_response(),
    }
}

#[derive(Deserialize, Default)]
pub struct TryForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    stage: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    message: String,
}

pub async fn try_form(State(web): State<Arc<Web>>, headers: HeaderMap) -> Response {
    let session = login!(web, headers);
    let form = TryForm {
        stage: "data".into(),
        message: "From: someone@example.com\r\nTo: me@localhost\r\nSubject: hello\r\n\r\nHi!\r\n".into(),
        to: "me@localhost".into(),
        from: "someone@example.com".into(),
        ..TryForm::default()
    };
    try_page(&session, &form, None)
}

fn try_page(session: &super::auth::Session, form: &TryForm, result: Option<(String, bool)>) -> Response {
    let body = html! {
        h1 { "Try a script" }
        p.muted { "Runs the scripts of one stage on a message, as " code { "mailflow test" } " does: nothing is sent, delivered or stored." }
        form method="post" action="/try" {
            input type="hidden" name="csrf" value=(session.csrf);
            p {
                label { "Stage " select name="stage" {
                    @for stage in Stage::ALL { option value=(stage.name()) selected[stage.name() == form.stage] { (stage.name()) } }
                } }
                " " label { "From " input name="from" value=(form.from) size="30"; }
                " " label { "To (comma-separated) " input name="to" value=(form.to) size="40"; }
            }
            p { textarea name="message" rows="12" { (form.message) } }
            button type="submit" { "Run" }
        }
        @if let Some((text, failed)) = result {
            h2 { "Result" }
            pre #try-result class=[failed.then_some("error")] { (text) }
        }
    };
    page("Try a script", session, "/try", body)
}

pub async fn try_run(State(web): State<Arc<Web>>, headers: HeaderMap, Form(form): Form<TryForm>) -> Response {
    let session = match web.check_post(&headers, &form.csrf) {
        Ok(session) => session,
        Err(refused) => return *refused,
    };
    let result = match Stage::parse(&form.stage) {
        None => (format!("unknown stage {:?}", form.stage), true),
        Some(_) if form.message.len() > MAX_TRY_MESSAGE => {
            (format!("the message is over {} KB", MAX_TRY_MESSAGE / 1024), true)
        }
        Some(stage) => {
            let config = web.deps.config.load_full();
            let (from, to, message) = (form.from.clone(), form.to.clone(), form.message.clone());
            tokio::task::spawn_blocking(move || dry_run(&config, stage, from, to, message))
                .await
                .unwrap_or_else(|e| (e.to_string(), true))
        }
    };
    try_page(&session, &form, Some(result))
}

/// `mailflow test` on the pasted message, with plugins on a throw-away store. Blocking.
fn dry_run(config: &crate::config::Config, stage: Stage, from: String, to: String, message: String) -> (String, bool) {
    let extend = match crate::state::in_memory()
        .map_err(|e| e.to_string())
        .and_then(|store| crate::plugins::hook_for(config, store).map_err(|e| e.to_string()))
    {
        Ok(extend) => extend,
        Err(e) => return (e, true),
    };
    let set = match crate::script::ScriptSet::compile(&config.scripts, extend.as_deref()) {
        Ok(set) => set,
        Err(errors) => return (errors.iter().map(|e| format!("{e}\n")).collect(), true),
    };
    // Browsers send line ends as CRLF already; a bare LF is made CRLF like a file would be read.
    let raw = message.replace("\r\n", "\n").replace('\n', "\r\n").into_bytes();
    let args = crate::cli::test::TestArgs {
        stage,
        from: from.trim().to_string(),
        to: to.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect(),
        remote_ip: "127.0.0.1".into(),
        helo: "localhost".into(),
        tls: false,
        auth_user: String::new(),
        account: String::new(),
        protocol: "imap".into(),
        mailbox: "INBOX".into(),
        uid: String::new(),
        flags: Vec::new(),
        json: false,
        message: std::path::PathBuf::new(),
    };
    crate::cli::test::dry_run(config, &set, &args, raw).unwrap_or_else(|e| (e, true))
}
