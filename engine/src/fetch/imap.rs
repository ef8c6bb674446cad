//! The IMAP poller: one task per (account, mailbox), its own connection, push via IDLE.
//!
//! New messages are found by UIDVALIDITY + UID against the stored state, fetched in batches
//! with `BODY.PEEK[]` (fetching never sets `\Seen`), run through the `fetched` hook, and the
//! scripts' server actions are applied by UID set: flags first, then the state is made
//! durable, then moves (`UID MOVE`, else `UID COPY` + `\Deleted` + `UID EXPUNGE`/`EXPUNGE`)
//! and deletions — so a crash never repeats a move and never loses a message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_imap::types::{Fetch, Flag};
use async_imap::{Client, Session};
use futures::TryStreamExt;
use tokio::sync::watch;

use super::net::ClientStream;
use super::state::{self, MailboxState};
use super::{process, FetchDeps};
use crate::config::{AccountConfig, AccountTls};
use crate::message::MessageView;
use crate::script::{Action, Verdict};

type ImapSession = Session<ClientStream>;

/// Messages fetched per `UID FETCH`.
const BATCH: usize = 200;
/// IDLE is re-issued before the server's 30-minute limit (RFC 2177: 29 minutes).
const IDLE_RENEW: Duration = Duration::from_secs(25 * 60);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("IMAP: {0}")]
    Imap(#[from] async_imap::error::Error),
    #[error("{0}")]
    Other(String),
}

/// Connects, logs in, processes new mail, then waits (IDLE or poll) until shutdown or error.
/// `Ok` means shutdown was requested.
pub async fn session(
    deps: &FetchDeps,
    account: &AccountConfig,
    mailbox: &str,
    password: &str,
    shutdown: &mut watch::Receiver<bool>,
    connected: &mut bool,
) -> Result<(), ImapError> {
    let port = account.port.unwrap_or(match account.tls {
        AccountTls::Implicit => 993,
        _ => 143,
    });
    let mut stream = ClientStream::connect(&account.host, port).await?;
    if account.tls == AccountTls::Implicit {
        stream = stream.into_tls(&account.host).await?;
    }
    let mut client = Client::new(stream);
    client.read_response().await?.ok_or_else(|| ImapError::Other("connection closed before the greeting".into()))?;
    if account.tls == AccountTls::Starttls {
        client.run_command_and_check_ok("STARTTLS", None).await?;
        // Whatever the server sent before the handshake is dropped with the old client.
        let stream = client.into_inner().into_tls(&account.host).await?;
        client = Client::new(stream);
    }
    let mut session = client.login(&account.username, password).await.map_err(|(e, _)| e)?;
    let caps = session.capabilities().await?;
    let has_idle = caps.has_str("IDLE");
    let has_move = caps.has_str("MOVE");
    let has_uidplus = caps.has_str("UIDPLUS");
    *connected = true;
    tracing::info!(idle = has_idle && account.idle, "IMAP session open");
    loop {
        let selected = session.select(mailbox).await?;
        let uidvalidity = selected.uid_validity.unwrap_or(0);
        process_new(deps, account, mailbox, &mut session, uidvalidity, has_move, has_uidplus).await?;
        if *shutdown.borrow() {
            let _ = session.logout().await;
            return Ok(());
        }
        if account.idle && has_idle {
            let mut idle = session.idle();
            idle.init().await?;
            let stopped = {
                let (wait, _interrupt) = idle.wait_with_timeout(IDLE_RENEW);
                tokio::select! {
                    r = wait => { r?; false }
                    _ = shutdown.changed() => true,
                }
            };
            session = idle.done().await?;
            if stopped {
                let _ = session.logout().await;
                return Ok(());
            }
        } else {
            tokio::select! {
                _ = tokio::time::sleep(account.poll_interval) => {}
                _ = shutdown.changed() => {
                    let _ = session.logout().await;
                    return Ok(());
                }
            }
        }
    }
}

/// Processes every UID not yet done.
async fn process_new(
    deps: &FetchDeps,
    account: &AccountConfig,
    mailbox: &str,
    session: &mut ImapSession,
    uidvalidity: u32,
    has_move: bool,
    has_uidplus: bool,
) -> Result<(), ImapError> {
    let key = state::imap_key(&account.name, mailbox);
    let store = deps.store.clone();
    let key2 = key.clone();
    let mut state = tokio::task::spawn_blocking(move || state::load(&store, &key2))
        .await
        .map_err(|e| ImapError::Other(e.to_string()))?
        .map_err(ImapError::Other)?;
    let validity_changed = state.uidvalidity != 0 && state.uidvalidity != uidvalidity;
    if state.uidvalidity != uidvalidity {
        if validity_changed {
            tracing::warn!(
                old = state.uidvalidity,
                new = uidvalidity,
                "UIDVALIDITY changed: rescanning, deduplicating by Message-ID"
            );
        }
        state = MailboxState { uidvalidity, ..MailboxState::default() };
    }
    let present: BTreeSet<u32> = session
        .uid_search(format!("UID {}:*", state.watermark + 1))
        .await?
        .into_iter()
        .filter(|&u| u > state.watermark)
        .collect();
    let todo: Vec<u32> = present.iter().copied().filter(|&u| !state.is_done(u)).collect();
    if todo.is_empty() {
        return Ok(());
    }
    tracing::debug!(count = todo.len(), "new messages");
    for chunk in todo.chunks(BATCH) {
        let fetches: Vec<Fetch> =
            session.uid_fetch(uid_set(chunk), "(UID FLAGS RFC822.SIZE BODY.PEEK[])").await?.try_collect().await?;
        let plan = decide(deps, account, mailbox, &key, &mut state, &fetches, validity_changed).await;
        // Flags are idempotent: apply before the state is durable.
        for (flag, uids) in &plan.flags {
            let _: Vec<Fetch> =
                session.uid_store(uid_set(uids), format!("+FLAGS.SILENT ({flag})")).await?.try_collect().await?;
        }
        state.compact(&present);
        let (store, key2, snapshot, ids) = (deps.store.clone(), key.clone(), state.clone(), plan.message_ids.clone());
        tokio::task::spawn_blocking(move || state::save(&store, &key2, &snapshot, &ids))
            .await
            .map_err(|e| ImapError::Other(e.to_string()))?
            .map_err(ImapError::Other)?;
        for (folder, uids) in &plan.moves {
            move_to(session, folder, uids, has_move, has_uidplus).await?;
        }
        if !plan.deletes.is_empty() {
            let _: Vec<Fetch> =
                session.uid_store(uid_set(&plan.deletes), "+FLAGS.SILENT (\\Deleted)").await?.try_collect().await?;
            expunge(session, &plan.deletes, has_uidplus).await?;
        }
        tracing::info!(
            processed = plan.processed,
            moved = plan.moves.values().map(Vec::len).sum::<usize>(),
            deleted = plan.deletes.len(),
            "batch done"
        );
    }
    Ok(())
}

/// The server actions of a batch, grouped by target so each is one command per UID set.
#[derive(Default)]
struct Plan {
    flags: BTreeMap<String, Vec<u32>>,
    moves: BTreeMap<String, Vec<u32>>,
    deletes: Vec<u32>,
    message_ids: Vec<String>,
    processed: usize,
}

/// Runs the hook on each fetched message and marks the successful ones done in `state`.
async fn decide(
    deps: &FetchDeps,
    account: &AccountConfig,
    mailbox: &str,
    key: &str,
    state: &mut MailboxState,
    fetches: &[Fetch],
    validity_changed: bool,
) -> Plan {
    let set = deps.scripts.current();
    let local_mode = process::local_root(account).is_some();
    let mut plan = Plan::default();
    for fetch in fetches {
        let (Some(uid), Some(body)) = (fetch.uid, fetch.body()) else { continue };
        let flags: Vec<String> = fetch.flags().map(|f| flag_name(&f)).collect();
        let view = MessageView::with_flags(Arc::new(body.to_vec()), flags);
        let message_id = view.parsed().message_id.clone();
        let span = tracing::info_span!("fetched", uid, message_id = %message_id);
        let _enter = span.enter();
        if validity_changed && state::seen_message_id(&deps.store, key, &message_id) {
            tracing::info!("already processed before the UIDVALIDITY change: skipped");
            state.done.insert(uid);
            continue;
        }
        let uid_text = uid.to_string();
        let decision = match process::handle(deps, &set, account, "imap", mailbox, &uid_text, &view).await {
            Ok(decision) => decision,
            Err(error) => {
                if state.failed(uid_text.clone(), &error) {
                    state.done.insert(uid);
                }
                continue;
            }
        };
        if !matches!(decision.verdict, Some(Verdict::Discard) | Some(Verdict::Reject { .. })) {
            let mut moved = false;
            for action in &decision.actions {
                match action {
                    Action::FileInto { folder } if !local_mode && !moved => {
                        plan.moves.entry(folder.clone()).or_default().push(uid);
                        moved = true;
                    }
                    Action::Flag { flag } => plan.flags.entry(flag.clone()).or_default().push(uid),
                    Action::MarkSeen => plan.flags.entry("\\Seen".to_string()).or_default().push(uid),
                    Action::Delete => plan.deletes.push(uid),
                    _ => {}
                }
            }
        }
        state.done.insert(uid);
        plan.message_ids.push(message_id);
        plan.processed += 1;
    }
    plan
}

async fn move_to(
    session: &mut ImapSession,
    folder: &str,
    uids: &[u32],
    has_move: bool,
    has_uidplus: bool,
) -> Result<(), ImapError> {
    // CREATE fails when the folder exists: that is fine.
    if let Err(e) = session.create(folder).await {
        tracing::trace!(folder, error = %e, "CREATE (folder probably exists)");
    }
    let set = uid_set(uids);
    if has_move {
        session.uid_mv(&set, folder).await?;
    } else {
        session.uid_copy(&set, folder).await?;
        let _: Vec<Fetch> = session.uid_store(&set, "+FLAGS.SILENT (\\Deleted)").await?.try_collect().await?;
        expunge(session, uids, has_uidplus).await?;
    }
    Ok(())
}

async fn expunge(session: &mut ImapSession, uids: &[u32], has_uidplus: bool) -> Result<(), ImapError> {
    if has_uidplus {
        let _: Vec<u32> = session.uid_expunge(uid_set(uids)).await?.try_collect().await?;
    } else {
        let _: Vec<u32> = session.expunge().await?.try_collect().await?;
    }
    Ok(())
}

fn flag_name(flag: &Flag<'_>) -> String {
    match flag {
        Flag::Seen => "\\Seen".into(),
        Flag::Answered => "\\Answered".into(),
        Flag::Flagged => "\\Flagged".into(),
        Flag::Deleted => "\\Deleted".into(),
        Flag::Draft => "\\Draft".into(),
        Flag::Recent => "\\Recent".into(),
        Flag::MayCreate => "\\*".into(),
        Flag::Custom(name) => name.to_string(),
    }
}

/// `1:3,5,7:9` for sorted or unsorted UIDs.
pub fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end { start.to_string() } else { format!("{start}:{end}") });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::uid_set;

    #[test]
    fn uid_sets() {
        assert_eq!(uid_set(&[5, 1, 2, 3, 9, 7, 8]), "1:3,5,7:9");
        assert_eq!(uid_set(&[4]), "4");
        assert_eq!(uid_set(&[2, 2]), "2");
    }
}
