//! What happens to one fetched message after the `fetched` hook: the parts that do not touch
//! the server (a local copy for accounts with `deliver`, outbound mail for `forward`,
//! `redirect`, `reply`, `vacation`). Server-side actions are the protocol modules' job.

use std::path::{Path, PathBuf};

use crate::config::AccountConfig;
use crate::deliver::{actions, maildir, Deliverer};
use crate::message::stored::Tail;
use crate::message::MessageView;
use crate::script::{apply, Action, Context, Decision, ScriptCtx, ScriptSet, Stage, Verdict};

/// A message the hook and its local effects are done with.
pub struct Handled {
    pub decision: Decision,
    /// Local copies written to `tmp/` (file fsynced), to be moved into place with
    /// [`super::state::finish_copies`] once the message is in the journal.
    pub copies: Vec<(PathBuf, PathBuf)>,
}

/// The hook, then the local effects: `Ok` when both succeeded; `Err` means the message stays
/// untouched for the next round.
pub async fn handle(
    deps: &super::FetchDeps,
    set: &ScriptSet,
    account: &AccountConfig,
    protocol: &str,
    mailbox: &str,
    uid: &str,
    view: &MessageView,
) -> Result<Handled, String> {
    let decision = hook(set, account, protocol, mailbox, uid, view)?;
    effects(deps, account, uid, view, decision).await
}

/// Runs the `fetched` stage on a message: `Err` when it failed (error or `tempfail`: retry
/// next round).
pub fn hook(
    set: &ScriptSet,
    account: &AccountConfig,
    protocol: &str,
    mailbox: &str,
    uid: &str,
    view: &MessageView,
) -> Result<Decision, String> {
    let ctx = ScriptCtx::new(Context {
        account: account.name.clone(),
        protocol: protocol.to_string(),
        mailbox: mailbox.to_string(),
        uid: uid.to_string(),
        sender: envelope_sender(view),
        recipients: account_address(account, view).into_iter().collect(),
        ..Context::default()
    });
    let id = format!("{}/{}/{}", account.name, mailbox, uid);
    let started = std::time::Instant::now();
    let decision = set.call_blocking(Stage::Fetched, &ctx, Some(view), &id);
    record(account, uid, &ctx, view, &decision, started.elapsed());
    if failed(&decision) {
        return Err(decision.error.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "tempfail".into()));
    }
    Ok(decision)
}

/// The message's trace (see [`crate::trace`]): its id is `account:uid`, as for its outbound mail.
fn record(
    account: &AccountConfig,
    uid: &str,
    ctx: &ScriptCtx,
    view: &MessageView,
    decision: &Decision,
    elapsed: std::time::Duration,
) {
    if crate::trace::installed().is_none() {
        return;
    }
    let id = format!("{}:{}", account.name, uid);
    crate::trace::stage(&id, decision.trace_step(Stage::Fetched, elapsed));
    let context = &ctx.0;
    let summary = crate::trace::Summary {
        source: &format!("fetched {}", account.name),
        sender: &context.sender,
        recipients: &context.recipients,
        head: view.head(),
        size: view.size() as u64,
    };
    match &decision.verdict {
        Some(Verdict::Tempfail { .. }) => crate::trace::refused(&id, None, &summary, "retry next round"),
        Some(Verdict::Discard) => crate::trace::refused(&id, None, &summary, "discarded"),
        Some(Verdict::Reject { .. }) => crate::trace::refused(&id, None, &summary, "rejected"),
        _ => crate::trace::received(&id, None, &summary),
    }
    crate::trace::account(&account.name, |s| s.processed_today += 1);
}

/// The local effects of a decision the hook made (see [`local_effects`]); `view` must be the
/// whole message when [`has_local_effects`] says there are any.
pub async fn effects(
    deps: &super::FetchDeps,
    account: &AccountConfig,
    uid: &str,
    view: &MessageView,
    decision: Decision,
) -> Result<Handled, String> {
    if !has_local_effects(account, &decision) {
        return Ok(Handled { decision, copies: Vec::new() });
    }
    let (deliverer, account, view, snapshot, uid) =
        (deps.deliverer.clone(), account.clone(), view.clone(), decision.clone(), uid.to_string());
    let busy = deps.busy_guard();
    let copies = tokio::task::spawn_blocking(move || {
        let _busy = busy;
        local_effects(&deliverer, &account, &uid, &view, &snapshot)
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))?;
    Ok(Handled { decision, copies })
}

/// Whether `discard()` or `reject()` decided: the message counts as processed, with no actions.
pub fn dropped(decision: &Decision) -> bool {
    matches!(decision.verdict, Some(Verdict::Discard) | Some(Verdict::Reject { .. }))
}

/// Whether carrying out `decision` needs the whole message: a local copy or outbound mail.
pub fn has_local_effects(account: &AccountConfig, decision: &Decision) -> bool {
    !dropped(decision) && (local_root(account).is_some() || decision.actions.iter().any(Action::is_outbound))
}

/// Whether the hook failed in a way that means "leave it, retry next round": `tempfail()`, or
/// a script error under `on_error = "tempfail"` (which [`ScriptSet::call`] turns into a
/// tempfail). Under `on_error = "accept"` an error leaves no verdict and no actions: the
/// message is processed as if no script had acted, as at the SMTP stages.
///
/// [`ScriptSet::call`]: crate::script::ScriptSet::call
pub fn failed(decision: &Decision) -> bool {
    matches!(decision.verdict, Some(Verdict::Tempfail { .. }))
}

/// The Return-Path, else the From address: who an auto-reply answers.
pub fn envelope_sender(view: &MessageView) -> String {
    let return_path = view.header("Return-Path");
    let trimmed = return_path.trim().trim_start_matches('<').trim_end_matches('>').trim();
    if !return_path.is_empty() {
        return trimmed.to_string();
    }
    view.from().to_string()
}

/// The account's own address: its username when that is an address, else the first To.
fn account_address(account: &AccountConfig, view: &MessageView) -> Option<String> {
    if account.username.contains('@') {
        return Some(account.username.clone());
    }
    view.to().first().cloned()
}

/// The local Maildir root of an account with `deliver` set (relative paths were resolved when
/// the config was loaded).
pub fn local_root(account: &AccountConfig) -> Option<PathBuf> {
    (!account.deliver.is_empty()).then(|| {
        let (local, domain) = account.username.rsplit_once('@').unwrap_or((&account.username, ""));
        PathBuf::from(
            account
                .deliver
                .replace("{local}", &local.to_lowercase())
                .replace("{domain}", &domain.to_lowercase())
                .replace("{account}", &account.name),
        )
    })
}

/// The local copy (with `file_into` folders and flags, when `deliver` is set; none after a
/// `redirect`) and the outbound actions. Blocking. Returns the staged copies (see
/// [`Handled::copies`]). An error means: not done, retry next round.
pub fn local_effects(
    deliverer: &Deliverer,
    account: &AccountConfig,
    uid: &str,
    view: &MessageView,
    decision: &Decision,
) -> Result<Vec<(PathBuf, PathBuf)>, String> {
    if dropped(decision) {
        return Ok(Vec::new());
    }
    // Header edits (set_header, set_subject, exec::rewrite...) shape the local copy and what is
    // sent; the message on the server stays as it is.
    // A large message stays in its file: edits rewrite only its header block.
    let (body, tail) = apply::edited_message(view, &decision.actions).map_err(|e| format!("message file: {e}"))?;
    let mut copies = Vec::new();
    if let Some(root) = local_root(account).filter(|_| !apply::redirected(&decision.actions)) {
        let flags = maildir::info_flags(apply::flags(&decision.actions));
        let folders = apply::folders(&decision.actions);
        copies = stage_copies(&deliverer.target.hostname, &root, &folders, &body, tail.as_ref(), &flags)
            .map_err(|e| format!("local copy: {e}"))?;
        let into = if folders.is_empty() { "INBOX".to_string() } else { folders.join(", ") };
        crate::trace::event(&format!("{}:{}", account.name, uid), "delivered", format!("copy in {into}"), "");
    }
    let outbound: Vec<Action> = decision.actions.iter().filter(|a| a.is_outbound()).cloned().collect();
    if !outbound.is_empty() {
        let me = account_address(account, view);
        let id = format!("{}:{}", account.name, uid);
        let sender = envelope_sender(view);
        let message = actions::Outgoing {
            id: &id,
            sender: &sender,
            recipients: &[],
            actions: &outbound,
            body: &body,
            tail: tail.as_ref(),
            auth_user: "",
            remote_ip: "",
        };
        let outcome = actions::carry_out(deliverer, &message, view, me.as_deref());
        if !outcome.queued_ok {
            for (tmp, _) in &copies {
                let _ = std::fs::remove_file(tmp);
            }
            return Err("outbound queue unavailable".into());
        }
    }
    Ok(copies)
}

/// Writes the message into `tmp/` of each target folder (INBOX of `root` when `folders` is
/// empty), fsynced, and returns (tmp path, final path) pairs: `new/NAME`, or `cur/NAME:2,FLAGS`.
/// The rename comes later, after the message is in the journal, so a crash in between
/// neither loses nor duplicates the copy.
fn stage_copies(
    hostname: &str,
    root: &Path,
    folders: &[&str],
    raw: &[u8],
    tail: Option<&Tail>,
    flags: &str,
) -> std::io::Result<Vec<(PathBuf, PathBuf)>> {
    maildir::ensure(root, false)?;
    let targets: Vec<Option<&str>> =
        if folders.is_empty() { vec![None] } else { folders.iter().map(|f| Some(*f)).collect() };
    let mut out = Vec::with_capacity(targets.len());
    for folder in targets {
        let dir = maildir::folder_dir(root, folder);
        if dir != root {
            maildir::ensure(&dir, true)?;
        }
        match maildir::stage_file(&dir, hostname, &[raw], tail, flags) {
            Ok(pair) => out.push(pair),
            Err(e) => {
                for (t, _) in &out {
                    let _ = std::fs::remove_file(t);
                }
                return Err(e);
            }
        }
    }
    Ok(out)
}
