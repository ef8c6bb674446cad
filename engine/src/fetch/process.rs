//! What happens to one fetched message after the `fetched` hook: the parts that do not touch
//! the server (a local copy for accounts with `deliver`, outbound mail for `forward`,
//! `redirect`, `reply`, `vacation`). Server-side actions are the protocol modules' job.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::AccountConfig;
use crate::deliver::{actions, deliver_copies, maildir, Deliverer};
use crate::message::MessageView;
use crate::script::{apply, Action, Context, Decision, ScriptCtx, ScriptSet, Stage, Verdict};
use crate::spool::{Envelope, SpoolRecord, SpooledMessage};

/// Runs the `fetched` stage on a message (blocking: the caller runs it where it may block).
pub fn run_hook(
    set: &ScriptSet,
    account: &AccountConfig,
    protocol: &str,
    mailbox: &str,
    uid: &str,
    view: &MessageView,
) -> Decision {
    let ctx = ScriptCtx::new(Context {
        account: account.name.clone(),
        protocol: protocol.to_string(),
        mailbox: mailbox.to_string(),
        uid: uid.to_string(),
        sender: envelope_sender(view),
        recipients: account_address(account, view).into_iter().collect(),
        ..Context::default()
    });
    set.call(Stage::Fetched, &ctx, Some(view), &format!("{}/{}/{}", account.name, mailbox, uid))
}

/// The hook, then the local effects: `Ok(decision)` when both succeeded; `Err` means the
/// message stays untouched for the next round.
pub async fn handle(
    deps: &super::FetchDeps,
    set: &ScriptSet,
    account: &AccountConfig,
    protocol: &str,
    mailbox: &str,
    uid: &str,
    view: &MessageView,
) -> Result<Decision, String> {
    let decision = tokio::task::block_in_place(|| run_hook(set, account, protocol, mailbox, uid, view));
    if failed(&decision) {
        return Err(decision.error.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "tempfail".into()));
    }
    let (deliverer, account, view, snapshot, uid) =
        (deps.deliverer.clone(), account.clone(), view.clone(), decision.clone(), uid.to_string());
    tokio::task::spawn_blocking(move || local_effects(&deliverer, &account, &uid, &view, &snapshot))
        .await
        .unwrap_or_else(|e| Err(e.to_string()))?;
    Ok(decision)
}

/// Whether the hook failed in a way that means "leave it, retry next round".
pub fn failed(decision: &Decision) -> bool {
    decision.error.is_some() || matches!(decision.verdict, Some(Verdict::Tempfail { .. }))
}

/// The Return-Path, else the From address: who an auto-reply answers.
pub fn envelope_sender(view: &MessageView) -> String {
    let return_path = view.header("Return-Path");
    let trimmed = return_path.trim().trim_start_matches('<').trim_end_matches('>').trim();
    if !return_path.is_empty() {
        return trimmed.to_string();
    }
    view.parsed().from.clone()
}

/// The account's own address: its username when that is an address, else the first To.
fn account_address(account: &AccountConfig, view: &MessageView) -> Option<String> {
    if account.username.contains('@') {
        return Some(account.username.clone());
    }
    view.parsed().to.first().cloned()
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

/// The local copy (with `file_into` folders and flags, when `deliver` is set) and the
/// outbound actions. Blocking. An error means: not done, retry next round.
pub fn local_effects(
    deliverer: &Deliverer,
    account: &AccountConfig,
    uid: &str,
    view: &MessageView,
    decision: &Decision,
) -> Result<(), String> {
    if matches!(decision.verdict, Some(Verdict::Discard) | Some(Verdict::Reject { .. })) {
        return Ok(());
    }
    if let Some(root) = local_root(account) {
        let flags = maildir::info_flags(apply::flags(&decision.actions));
        deliver_copies(&deliverer.target, &root, &apply::folders(&decision.actions), &[view.raw().as_slice()], &flags)
            .map_err(|e| format!("local copy: {e}"))?;
    }
    let outbound: Vec<Action> = decision.actions.iter().filter(|a| a.is_outbound()).cloned().collect();
    if !outbound.is_empty() {
        let me = account_address(account, view);
        let message = SpooledMessage {
            record: SpoolRecord {
                id: format!("{}:{}", account.name, uid),
                envelope: Envelope { sender: envelope_sender(view), ..Envelope::default() },
                actions: outbound,
                deliver_locally: false,
                received_at: crate::spool::unix_now(),
            },
            body: Arc::clone(view.raw()),
        };
        let outcome = actions::carry_out(deliverer, &message, me.as_deref());
        if !outcome.queued_ok {
            return Err("outbound queue unavailable".into());
        }
    }
    Ok(())
}
