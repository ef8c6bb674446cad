//! The POP3 poller: one round per `poll_interval` over one session of [`Pop3Client`].
//!
//! Input: the account's mailbox (STAT, UIDL, LIST); output: the `fetched` hook's decisions
//! carried out (local copies, outbound mail), the state in the store, and `DELE`s that the
//! server commits at `QUIT`. Per new message: `TOP n 0` when no hook reads a body and there is
//! no local copy to write (as the IMAP poller decides), else `RETR n` — and `RETR n` after the
//! hook when its actions need the whole message (a forward, a reply) → hook → local effects →
//! journal line → `DELE n` when it is to be deleted. Then one durable commit, then `QUIT`,
//! which is when the server deletes. A round that fails after a `DELE` sends `RSET` before
//! `QUIT`, so nothing is deleted before the state saying it was processed is on disk. While a
//! hook runs long, `NOOP` every [`KEEPALIVE`] keeps the session alive.
//!
//! Security: the server's bytes are untrusted (see `client.rs`); the hook sees them as a message.

mod client;

pub use client::*;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::retry::Warned;
use super::state::{self, Done, Journal, MailboxState};
use super::{process, FetchDeps};
use crate::config::{AccountConfig, AccountTls};
use crate::message::MessageView;
use crate::script::{Action, ScriptSet, Stage};
use crate::spool::large::{Spill, Spilled, Staged};

/// A session silent this long while a hook or its effects run gets a `NOOP`. RFC 1939 lets a
/// server end a session after 10 minutes of silence, and routers and firewalls on the way
/// often drop a silent connection sooner; a `NOOP` is one short line, sent only while a hook
/// is slow (a plugin call, a scanner).
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// One POP3 round: replay the journal of an interrupted round, fetch what is new, process it
/// (journaling each message, then marking it with `DELE` when it is to be deleted), commit
/// durably, QUIT. Stops early, cleanly, when asked. `warned` remembers, across rounds, which
/// messages left on the server were reported.
pub async fn round(
    deps: &FetchDeps,
    account: &AccountConfig,
    password: &str,
    shutdown: &watch::Receiver<bool>,
    warned: &mut Warned,
) -> Result<usize, Pop3Error> {
    let port = account.port.unwrap_or(if account.tls == AccountTls::Implicit { 995 } else { 110 });
    let mut client = Pop3Client::connect(&account.host, port, account.tls, account.tls_ca.as_deref()).await?;
    match account.auth_method() {
        crate::config::AuthMethod::Password => {
            client.login(&account.username, password, account.tls != AccountTls::None).await?
        }
        oauth => {
            client.auth(&mut crate::oauth2::Sasl::new(oauth, &account.username, password, &account.host, port)).await?
        }
    }
    let result = transact(deps, account, &mut client, shutdown, warned).await;
    let (processed, deleted) = match result {
        Ok(done) => done,
        Err(e) => {
            client.abandon().await;
            return Err(e);
        }
    };
    client.quit().await?;
    if processed > 0 || deleted > 0 {
        tracing::info!(processed, deleted, "POP3 round done");
    }
    Ok(processed)
}

/// The transaction state of a round, up to (not including) `QUIT`: (processed, deleted).
async fn transact(
    deps: &FetchDeps,
    account: &AccountConfig,
    client: &mut Pop3Client,
    shutdown: &watch::Receiver<bool>,
    warned: &mut Warned,
) -> Result<(usize, usize), Pop3Error> {
    // What the server says it holds, against what UIDL lists: a listing that misses messages
    // (a server rewriting its mailbox while another session ends) is said, not silent.
    // Only a cross-check: a server whose STAT answer does not parse is still served.
    let stat = match client.stat().await {
        Ok((count, _)) => Some(count),
        Err(Pop3Error::Protocol(e)) => {
            tracing::debug!(error = %e, "STAT answer not understood; not cross-checked with UIDL");
            None
        }
        Err(e) => return Err(e),
    };
    let listing = client.uidl().await?;
    if let Some(count) = stat.filter(|&count| listing.len() != count as usize) {
        tracing::warn!(stat = count, uidl = listing.len(), "STAT and UIDL disagree on the number of messages");
    }
    // Sizes first: a message over MAX_MESSAGE would fail RETR every round; say so once a day.
    let sizes: HashMap<u32, u64> = client.list().await?.into_iter().collect();
    let key = state::pop3_key(&account.name);
    let (store, key2) = (deps.store.clone(), key.clone());
    let state = tokio::task::spawn_blocking(move || state::load(&store, &key2))
        .await
        .map_err(|e| Pop3Error::Protocol(e.to_string()))?
        .map_err(Pop3Error::Protocol)?;
    let set = deps.scripts.current();
    let mut round = Round {
        deps,
        account,
        client,
        headers_only: process::local_root(account).is_none() && !set.stage_reads_body(Stage::Fetched),
        set,
        state,
        journal: Journal::open(&deps.journal_dir, &key),
        dirs: BTreeSet::new(),
        message_ids: Vec::new(),
        processed: 0,
        deleted: 0,
    };
    let replay = round.journal.read();
    for record in &replay {
        round.dirs.extend(state::finish_copies(&record.copies)?);
        round.state.done_uidls.insert(record.uidl.clone());
        if record.act.delete {
            round.state.delete_uidls.insert(record.uidl.clone());
        }
        round.message_ids.push(record.mid.clone());
    }
    if !replay.is_empty() {
        tracing::info!(messages = replay.len(), "resuming an interrupted round from the journal");
    }
    for (n, uidl) in &listing {
        if round.state.done_uidls.contains(uidl) {
            if round.state.delete_uidls.contains(uidl) {
                // Done in an earlier round whose deletion did not complete: finish it now.
                round.delete(*n).await?;
            }
            continue;
        }
        if *shutdown.borrow() {
            break;
        }
        let size = sizes.get(n).copied();
        if let Some(size) = size.filter(|&size| size > MAX_MESSAGE as u64) {
            if warned.due(uidl, Instant::now()) {
                tracing::warn!(uidl = %uidl, size, "message larger than the fetch limit: left on the server (said once a day)");
            } else {
                tracing::debug!(uidl = %uidl, size, "message larger than the fetch limit: left on the server");
            }
            continue;
        }
        let span = tracing::info_span!("fetched", uidl = %uidl);
        tracing::Instrument::instrument(round.new_message(*n, uidl, size), span).await?;
    }
    round.commit(&listing).await?;
    Ok((round.processed, round.deleted))
}

/// One round's work in progress.
struct Round<'a> {
    deps: &'a FetchDeps,
    account: &'a AccountConfig,
    client: &'a mut Pop3Client,
    set: Arc<ScriptSet>,
    /// Fetch new messages with `TOP n 0` (see the module doc); off for the rest of the round
    /// once the server refuses `TOP` (it is optional in RFC 1939).
    headers_only: bool,
    state: MailboxState,
    journal: Journal,
    /// Folders of local copies moved into place, to fsync before the commit.
    dirs: BTreeSet<PathBuf>,
    message_ids: Vec<String>,
    processed: usize,
    deleted: usize,
}

/// A fetched message; `_file` (a large message's file) lives until the message is handled.
struct Fetched {
    view: MessageView,
    _file: Option<Staged>,
}

impl Round<'_> {
    /// Fetch, hook, local effects, journal line, `DELE`. A hook or effect that fails leaves the
    /// message for the next round; an `Err` ends the round.
    async fn new_message(&mut self, n: u32, uidl: &str, size: Option<u64>) -> Result<(), Pop3Error> {
        let mut message = self.fetch(n, size).await?;
        let hook = {
            let (set, account, view, uid) =
                (self.set.clone(), self.account.clone(), message.view.clone(), uidl.to_string());
            let (busy, span) = (self.deps.busy_guard(), tracing::Span::current());
            tokio::task::spawn_blocking(move || {
                let _busy = busy;
                span.in_scope(|| {
                    crate::script::runner::on_blocking_thread(|| {
                        process::hook(&set, &account, "pop3", "INBOX", &uid, &view)
                    })
                })
            })
        };
        let (decided, lost) = keepalive(self.client, hook).await;
        if let Some(e) = lost {
            // Nothing of the hook's is carried out: it runs again next round, as after a crash.
            return Err(e);
        }
        let decision = match decided.unwrap_or_else(|e| Err(format!("hook task: {e}"))) {
            Ok(decision) => decision,
            Err(error) => return self.failed(uidl, &error),
        };
        if process::has_local_effects(self.account, &decision) && message.view.is_headers_only() {
            // A forward or a reply sends the whole message: only the header block is here.
            message = self.whole(n).await?;
        }
        let effects = process::effects(self.deps, self.account, uidl, &message.view, decision);
        let (handled, lost) = keepalive(self.client, effects).await;
        let handled = match handled {
            Ok(handled) => handled,
            Err(error) => {
                self.failed(uidl, &error)?;
                return lost.map_or(Ok(()), Err);
            }
        };
        let scripted_delete = !process::dropped(&handled.decision)
            && handled.decision.actions.iter().any(|a| matches!(a, Action::Delete));
        let mut record = Done { uidl: uidl.to_string(), mid: message.view.message_id().to_string(), ..Done::default() };
        record.act.delete = self.account.delete_after_fetch || scripted_delete;
        record.copies = handled.copies;
        // Its effects are done: journaled before anything else can fail, so they are not
        // repeated; the round may end after that.
        self.journal.append(&record)?;
        self.dirs.extend(state::finish_copies(&record.copies)?);
        self.state.done_uidls.insert(uidl.to_string());
        self.state.attempts.remove(uidl);
        self.message_ids.push(record.mid);
        self.processed += 1;
        crate::prometheus::fetched("pop3", "done");
        if let Some(e) = lost {
            return Err(e);
        }
        if record.act.delete {
            self.state.delete_uidls.insert(uidl.to_string());
            self.delete(n).await?;
        }
        Ok(())
    }

    /// The header block (`TOP n 0`) when that is enough, else the whole message.
    async fn fetch(&mut self, n: u32, size: Option<u64>) -> Result<Fetched, Pop3Error> {
        if !self.headers_only {
            return self.whole(n).await;
        }
        match self.client.top(n, 0).await {
            Ok(header) => {
                // `msg.size` is the whole message's size, as LIST gave it.
                let size = size.map_or(header.len(), |s| s as usize);
                Ok(Fetched { view: MessageView::headers_only(Arc::new(header), Vec::new(), size), _file: None })
            }
            Err(Pop3Error::Negative(e)) => {
                tracing::info!(error = %e, "the server refused TOP: fetching whole messages with RETR");
                self.headers_only = false;
                self.whole(n).await
            }
            Err(e) => Err(e),
        }
    }

    /// `RETR n`, held in memory or, when large, in a file.
    async fn whole(&mut self, n: u32) -> Result<Fetched, Pop3Error> {
        let mut spill = Spill::new(&self.deps.journal_dir);
        self.client.retr_into(n, &mut spill).await?;
        Ok(match spill.finish()? {
            Spilled::Memory(raw) => Fetched { view: MessageView::new(Arc::new(raw)), _file: None },
            Spilled::File(file) => Fetched {
                view: MessageView::from_file(Arc::new(Vec::new()), file.tail(), Vec::new())?,
                _file: Some(file),
            },
        })
    }

    /// A failed hook or effect: counted; on the last attempt, journaled as done (skipped,
    /// never deleted: it stays on the server untouched).
    fn failed(&mut self, uidl: &str, error: &str) -> Result<(), Pop3Error> {
        crate::prometheus::fetched("pop3", "failed");
        if self.state.failed(uidl.to_string(), error) {
            self.journal.append(&Done { uidl: uidl.to_string(), ..Done::default() })?;
            self.state.done_uidls.insert(uidl.to_string());
        }
        Ok(())
    }

    async fn delete(&mut self, n: u32) -> Result<(), Pop3Error> {
        self.client.dele(n).await?;
        self.deleted += 1;
        Ok(())
    }

    /// Forgets UIDLs the server no longer has, then makes the state durable (the local copies'
    /// folders first) and empties the journal: only now may `QUIT` commit the `DELE`s.
    async fn commit(&mut self, listing: &[(u32, String)]) -> Result<(), Pop3Error> {
        let present: BTreeSet<&String> = listing.iter().map(|(_, u)| u).collect();
        self.state.done_uidls.retain(|u| present.contains(u));
        self.state.delete_uidls.retain(|u| present.contains(u));
        self.state.attempts.retain(|u, _| present.contains(u));
        let key = state::pop3_key(&self.account.name);
        let (store, snapshot, dirs) = (self.deps.store.clone(), self.state.clone(), std::mem::take(&mut self.dirs));
        let ids: Vec<String> = std::mem::take(&mut self.message_ids).into_iter().filter(|m| !m.is_empty()).collect();
        let busy = self.deps.busy_guard();
        let save = tokio::task::spawn_blocking(move || {
            let _busy = busy;
            state::sync_dirs(&dirs).map_err(|e| format!("local copies: {e}"))?;
            state::save(&store, &key, &snapshot, &ids)
        });
        // A session lost meanwhile shows at QUIT; the commit stands either way.
        let (saved, _) = keepalive(self.client, save).await;
        saved.map_err(|e| Pop3Error::Protocol(e.to_string()))?.map_err(Pop3Error::Protocol)?;
        self.journal.clear()?;
        Ok(())
    }
}

/// Awaits `work`, sending `NOOP` whenever the session has been silent for [`KEEPALIVE`]
/// meanwhile. Returns what `work` gave and, when a `NOOP` failed (the server or a router
/// dropped the session), that error: no more `NOOP`s are sent then, and `work` still ends.
async fn keepalive<T>(client: &mut Pop3Client, work: impl Future<Output = T>) -> (T, Option<Pop3Error>) {
    tokio::pin!(work);
    let mut lost = None;
    loop {
        let due = KEEPALIVE.saturating_sub(client.silent_for());
        tokio::select! {
            out = &mut work => return (out, lost),
            _ = tokio::time::sleep(due), if lost.is_none() => {
                tracing::debug!("still working on the message: NOOP keeps the session alive");
                if let Err(e) = client.noop().await {
                    lost = Some(e);
                }
            }
        }
    }
}
