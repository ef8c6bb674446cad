//! The IMAP poller: one task per (account, mailbox), its own connection, push via IDLE.
//!
//! New messages are found by UIDVALIDITY + UID against the stored state and fetched in
//! batches with `BODY.PEEK[]` (fetching never sets `\Seen`). Per message: the `fetched` hook,
//! its local effects (local copy, queued mail), then one journal record (see
//! [`state::Journal`]) — on a thread of its own while the next batch is fetched (see
//! [`super::hooks`]). Per batch: the scripts' server actions by UID set (flags, then
//! `UID MOVE` — else `UID COPY` + `\Deleted` + `UID EXPUNGE`/`EXPUNGE` — then deletions), then
//! one durable commit of the state. A crash anywhere replays the journal at the next session:
//! finished messages are not run again and their server actions, all idempotent, are
//! re-applied — nothing is lost, nothing is done twice (except the hook of the one message
//! being processed at the crash).
//!
//! Folder names from scripts and the config use `/` for hierarchy, like the SMTP path; they
//! are translated to the server's hierarchy delimiter and to modified UTF-7 (RFC 3501 §5.1.3).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_imap::types::{Fetch, Flag, UnsolicitedResponse};
use async_imap::{Client, Session};
use base64::Engine as _;
use futures::TryStreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::hooks::{lock, Decided, Fetched, HookWorker, Outcome, Targets};
use super::imap_large;
use super::net::ClientStream;
use super::state::{self, Done, Journal, MailboxState, ServerActions};
use super::{process, FetchDeps};
use crate::config::{AccountConfig, AccountTls};
use crate::message::MessageView;
use crate::script::{ScriptSet, Stage};

pub(super) type ImapSession = Session<ClientStream>;

/// Messages fetched per `UID FETCH` of whole messages.
const BATCH: usize = 200;
/// Messages fetched per `UID FETCH` of header blocks only (a few KB each).
const HEADER_BATCH: usize = 1000;
/// Messages processed between two rounds of server actions and state commits. Each `UID MOVE`
/// costs the server a sync of the mailbox whatever its size (Dovecot: ~20 ms on a 10,000-message
/// Maildir), so moves are gathered over many fetch batches: one `UID MOVE` per target folder
/// per round. The journal keeps the round crash-safe; a crash replays at most one round's
/// server actions. 10,000 rather than 5,000: one round's commands took Dovecot 380–520 ms on
/// the bench's 10,000-message INBOX against 2 × 285–310 ms for two rounds.
const APPLY_EVERY: usize = 10_000;
/// New messages from which a second connection helps fetch them (see [`Poller::helper`]):
/// below, its login costs more than it saves.
const HELPER_FROM: usize = 2 * HEADER_BATCH;
/// How long opening a helper connection may take: past it, the fetch goes on one connection.
const HELPER_OPEN: Duration = Duration::from_secs(10);
/// How long a helper connection's `LOGOUT` may take.
const HELPER_LOGOUT: Duration = Duration::from_secs(5);
/// IDLE is re-issued before the server's 30-minute limit (RFC 2177: 29 minutes).
const IDLE_RENEW: Duration = Duration::from_secs(25 * 60);
/// Longest wait for the answer to a command: a server (or a NAT box) that silently dropped
/// the connection must not hang the poller forever.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for one batch's `UID FETCH` (up to 200 whole messages).
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

/// `fut`, or an I/O timeout error after `limit`.
pub(super) async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, async_imap::error::Error>>,
) -> Result<T, async_imap::error::Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result,
        Err(_) => Err(async_imap::error::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from the server within {} s", limit.as_secs()),
        ))),
    }
}

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

/// One mailbox's poller within a session.
struct Poller<'a> {
    deps: &'a FetchDeps,
    account: &'a AccountConfig,
    /// For the helper connection of a long fetch (see [`Poller::helper`]).
    password: &'a str,
    /// The mailbox as configured (what scripts see in `ctx.mailbox`).
    mailbox: &'a str,
    /// The mailbox's name on the server.
    server_mailbox: String,
    key: String,
    has_move: bool,
    has_uidplus: bool,
    delimiter: Option<String>,
    /// Folders this session already made sure exist.
    created: HashSet<String>,
}

/// Connects, logs in, processes new mail, then waits (IDLE or poll) until shutdown or error.
/// `Ok` means shutdown was requested. `good_round` is set once a round of new mail completed:
/// only then does the caller's backoff start again at its shortest wait.
pub async fn session(
    deps: &FetchDeps,
    account: &AccountConfig,
    mailbox: &str,
    password: &str,
    shutdown: &mut watch::Receiver<bool>,
    good_round: &mut bool,
) -> Result<(), ImapError> {
    let mut session = login(account, password).await?;
    let caps = timed(COMMAND_TIMEOUT, session.capabilities()).await?;
    let has_idle = caps.has_str("IDLE");
    let delimiter = {
        let names: Vec<_> =
            timed(COMMAND_TIMEOUT, async { session.list(None, None).await?.try_collect().await }).await?;
        names.first().and_then(|n| n.delimiter().map(str::to_string))
    };
    let mut poller = Poller {
        deps,
        account,
        password,
        mailbox,
        server_mailbox: server_name(mailbox, delimiter.as_deref()),
        key: state::imap_key(&account.name, mailbox),
        has_move: caps.has_str("MOVE"),
        has_uidplus: caps.has_str("UIDPLUS"),
        delimiter,
        created: HashSet::new(),
    };
    tracing::info!(idle = has_idle && account.idle, "IMAP session open");
    // Empties the unsolicited-responses channel; true when it held an EXISTS (new mail) or was
    // full (async-imap then drops responses, maybe an EXISTS among them).
    let unsolicited = session.unsolicited_responses.clone();
    let drain = || {
        let full = unsolicited.is_full();
        let mut exists = false;
        while let Ok(response) = unsolicited.try_recv() {
            exists |= matches!(response, UnsolicitedResponse::Exists(_));
        }
        exists || full
    };
    loop {
        drain();
        let selected = timed(COMMAND_TIMEOUT, session.select(&poller.server_mailbox)).await?;
        let uidvalidity = selected.uid_validity.unwrap_or(0);
        let retry_pending = poller.process_new(&mut session, uidvalidity, selected.uid_next, shutdown).await?;
        // Only now is the session good: a missing folder, or a server that answers the login
        // and then garbage, keeps backing off like a bad login.
        *good_round = true;
        if *shutdown.borrow() {
            let _ = timed(COMMAND_TIMEOUT, session.logout()).await;
            return Ok(());
        }
        // Mail that arrived while this round ran was announced (EXISTS) in the replies to its
        // commands, not to the IDLE below: look again now. An overflowing channel may have
        // dropped an EXISTS: look again too.
        if drain() {
            continue;
        }
        // A message whose hook failed is retried after `poll_interval`, even while idling.
        let wait = if retry_pending { account.poll_interval.min(IDLE_RENEW) } else { IDLE_RENEW };
        if account.idle && has_idle {
            let mut idle = session.idle();
            timed(COMMAND_TIMEOUT, idle.init()).await?;
            // An EXISTS sent right at the start of IDLE is routed to the channel, not to wait().
            let early = drain();
            let stopped = if early {
                false
            } else {
                let (wait, _interrupt) = idle.wait_with_timeout(wait);
                tokio::select! {
                    r = wait => { r?; false }
                    _ = shutdown.changed() => true,
                }
            };
            session = timed(COMMAND_TIMEOUT, idle.done()).await?;
            if stopped {
                let _ = timed(COMMAND_TIMEOUT, session.logout()).await;
                return Ok(());
            }
        } else {
            tokio::select! {
                _ = tokio::time::sleep(account.poll_interval.min(wait)) => {}
                _ = shutdown.changed() => {
                    let _ = timed(COMMAND_TIMEOUT, session.logout()).await;
                    return Ok(());
                }
            }
        }
    }
}

/// `UID FETCH` of `uids` on `session`, every answer collected.
async fn fetch_uids(
    session: &mut ImapSession,
    uids: &[u32],
    query: &str,
) -> Result<Vec<Fetch>, async_imap::error::Error> {
    timed(FETCH_TIMEOUT, async { session.uid_fetch(uid_set(uids), query).await?.try_collect().await }).await
}

/// Connects (TLS as configured) and logs in.
async fn login(account: &AccountConfig, password: &str) -> Result<ImapSession, ImapError> {
    let port = account.port.unwrap_or(match account.tls {
        AccountTls::Implicit => 993,
        _ => 143,
    });
    let mut stream = ClientStream::connect(&account.host, port).await?;
    if account.tls == AccountTls::Implicit {
        stream = stream.into_tls(&account.host).await?;
    }
    let mut client = Client::new(stream);
    timed(COMMAND_TIMEOUT, async { Ok(client.read_response().await?) })
        .await?
        .ok_or_else(|| ImapError::Other("connection closed before the greeting".into()))?;
    if account.tls == AccountTls::Starttls {
        timed(COMMAND_TIMEOUT, client.run_command_and_check_ok("STARTTLS", None)).await?;
        // Whatever the server sent before the handshake is dropped with the old client.
        let stream = client.into_inner().into_tls(&account.host).await?;
        client = Client::new(stream);
    }
    Ok(timed(COMMAND_TIMEOUT, async { client.login(&account.username, password).await.map_err(|(e, _)| e) }).await?)
}

/// The server actions of a batch, grouped by target so each is one command per UID set.
#[derive(Default)]
struct Plan {
    flags: BTreeMap<String, Vec<u32>>,
    moves: BTreeMap<String, Vec<u32>>,
    deletes: Vec<u32>,
}

/// What has been processed since the last state commit.
#[derive(Default)]
struct Round {
    plan: Plan,
    pending: Pending,
    /// Messages whose state changed: journal records written (processed, skipped, given up)
    /// and failed attempts counted.
    records: usize,
    processed: usize,
    headers_only: bool,
    /// Connections the fetch used: 2 with a helper (see [`Poller::helper`]).
    fetch_connections: usize,
    fetch: Duration,
    hooks: Duration,
}

impl Plan {
    fn add(&mut self, uid: u32, actions: &ServerActions) {
        for flag in &actions.flags {
            self.flags.entry(flag.clone()).or_default().push(uid);
        }
        if let Some(folder) = &actions.move_to {
            self.moves.entry(folder.clone()).or_default().push(uid);
        }
        if actions.delete {
            self.deletes.push(uid);
        }
    }

    fn is_empty(&self) -> bool {
        self.flags.is_empty() && self.moves.is_empty() && self.deletes.is_empty()
    }
}

/// What a batch leaves for the durable commit.
#[derive(Default)]
struct Pending {
    message_ids: Vec<String>,
    dirs: BTreeSet<PathBuf>,
}

impl Poller<'_> {
    /// Replays what an interrupted run left in the journal, then processes every UID not yet
    /// done. Returns whether failed messages wait for a retry.
    async fn process_new(
        &mut self,
        session: &mut ImapSession,
        uidvalidity: u32,
        uid_next: Option<u32>,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<bool, ImapError> {
        let (store, key) = (self.deps.store.clone(), self.key.clone());
        let mut state = tokio::task::spawn_blocking(move || state::load(&store, &key))
            .await
            .map_err(|e| ImapError::Other(e.to_string()))?
            .map_err(ImapError::Other)?;
        let journal = Arc::new(Mutex::new(Journal::open(&self.deps.journal_dir, &self.key)));
        let replay = lock(&journal).read();
        let mut pending = Pending::default();
        let mut previous = state.uidvalidity;
        for record in &replay {
            pending.dirs.extend(state::finish_copies(&record.copies)?);
            pending.message_ids.push(record.mid.clone());
            if previous == 0 {
                previous = record.v;
            }
        }
        let mut dirty = !replay.is_empty();
        if previous != uidvalidity {
            state = MailboxState { uidvalidity, ..MailboxState::default() };
            if previous != 0 {
                // Everything now in the mailbox may be an old message under a new UID.
                state.dedupe_below = uid_next.map_or(u32::MAX, |n| n.saturating_sub(1));
                tracing::warn!(
                    old = previous,
                    new = uidvalidity,
                    "UIDVALIDITY changed: rescanning, skipping messages whose Message-ID was processed"
                );
            }
            dirty = true;
        }
        if !replay.is_empty() {
            let mut plan = Plan::default();
            for record in replay.iter().filter(|r| r.v == uidvalidity) {
                state.done.insert(record.uid);
                plan.add(record.uid, &record.act);
            }
            tracing::info!(messages = replay.len(), "resuming an interrupted batch from the journal");
            self.apply(session, &plan).await?;
        }
        if dirty {
            self.commit(&state, std::mem::take(&mut pending), &journal).await?;
        }

        let search = format!("UID {}:*", state.watermark.saturating_add(1));
        let present: BTreeSet<u32> = timed(COMMAND_TIMEOUT, session.uid_search(search))
            .await?
            .into_iter()
            .filter(|&u| u > state.watermark)
            .collect();
        let todo: Vec<u32> = present.iter().copied().filter(|&u| !state.is_done(u)).collect();
        if !todo.is_empty() {
            tracing::debug!(count = todo.len(), "new messages");
        }
        let headers_only =
            |set: &ScriptSet| process::local_root(self.account).is_none() && !set.stage_reads_body(Stage::Fetched);
        let batch = if headers_only(&self.deps.scripts.current()) { HEADER_BATCH } else { BATCH };
        let mut round = Round::default();
        let worker = Arc::new(HookWorker {
            account: self.account.clone(),
            mailbox: self.mailbox.to_string(),
            deliverer: self.deps.deliverer.clone(),
            journal: journal.clone(),
            uidvalidity,
            targets: Targets {
                local_mode: process::local_root(self.account).is_some(),
                delimiter: self.delimiter.clone(),
                polled: self.server_mailbox.clone(),
            },
            dedupe_below: state.dedupe_below,
            store: self.deps.store.clone(),
            key: self.key.clone(),
            done_ids: Mutex::default(),
            stop: shutdown.clone(),
            busy: self.deps.busy.clone(),
        });
        // The hooks of one batch run on a blocking thread while the next batch is fetched; the
        // thread's results are booked here before the next batch goes to it.
        let mut deciding: Option<(JoinHandle<Decided>, Arc<ScriptSet>)> = None;
        let mut helper = if todo.len() >= HELPER_FROM { self.helper().await } else { None };
        let mut chunks = todo.chunks(if helper.is_some() { 2 * batch } else { batch });
        loop {
            let chunk = if *shutdown.borrow() { None } else { chunks.next() };
            // One script set per batch: it decides whether headers are enough.
            let set = self.deps.scripts.current();
            let headers_only = headers_only(&set);
            let fetch = async {
                let Some(chunk) = chunk else { return (Ok(None), Duration::ZERO) };
                let query =
                    if headers_only { "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER])" } else { imap_large::BODY_QUERY };
                let started = Instant::now();
                // With a helper, the second half of the chunk comes over the helper meanwhile.
                let (mine, theirs) = match helper {
                    Some(_) => chunk.split_at(chunk.len().div_ceil(2)),
                    None => (chunk, &[][..]),
                };
                let (fetches, more) = tokio::join!(fetch_uids(session, mine, query), async {
                    match helper.as_mut() {
                        Some(helper) if !theirs.is_empty() => fetch_uids(helper, theirs, query).await,
                        _ => Ok(Vec::new()),
                    }
                });
                // A helper that fails is dropped and its half fetched here: a server that will not
                // serve a second connection must not stop the poller from getting anywhere.
                let more = match more {
                    Err(e) if fetches.is_ok() => {
                        let error = super::retry::short_error(&e.to_string());
                        tracing::info!(%error, "helper connection failed; fetching on one connection");
                        helper = None;
                        fetch_uids(session, theirs, query).await
                    }
                    more => more,
                };
                let fetches = fetches.and_then(|mut fetches| {
                    fetches.extend(more?);
                    Ok(fetches)
                });
                (fetches.map(Some), started.elapsed())
            };
            let previous = async {
                match deciding.take() {
                    Some((hooks, set)) => Some((hooks.await, set)),
                    None => None,
                }
            };
            let ((fetched, fetch_time), previous) = tokio::join!(fetch, previous);
            round.fetch += fetch_time;
            // After a failed fetch the connection is of no more use: what the thread journaled
            // is replayed by the next session.
            let fetched = fetched?;
            if let Some((decided, set)) = previous {
                let decided = decided.map_err(|e| ImapError::Other(e.to_string()))?;
                self.act(session, &worker, &set, decided, &mut state, &mut round).await?;
                if round.records >= APPLY_EVERY {
                    self.finish_round(session, &mut state, &present, std::mem::take(&mut round), &journal).await?;
                }
            }
            let Some(fetches) = fetched else { break };
            round.headers_only = headers_only;
            round.fetch_connections = 1 + usize::from(helper.is_some());
            let (mut items, partial) = Self::prepare(&fetches, headers_only, &state);
            drop(fetches);
            for (uid, first, flags) in partial {
                // A message over 256 KB: the rest in pieces, into a file.
                match imap_large::rest(session, uid, &first, flags, &self.deps.journal_dir).await? {
                    Some((view, file)) => {
                        let message_id = view.message_id().to_string();
                        items.push(Fetched { uid, view, message_id, decision: None, file });
                    }
                    None => tracing::info!(uid, "message vanished from the server while fetched"),
                }
            }
            items.sort_by_key(|item| item.uid);
            deciding = Some((worker.spawn(set.clone(), items), set));
        }
        if let Some(mut helper) = helper {
            let _ = timed(HELPER_LOGOUT, helper.logout()).await;
        }
        if round.records > 0 {
            self.finish_round(session, &mut state, &present, round, &journal).await?;
        }
        Ok(state.attempts.keys().any(|k| k.parse::<u32>().is_ok_and(|u| !state.is_done(u))))
    }

    /// A second connection for a long fetch, the mailbox opened read-only (`EXAMINE`): the
    /// server answers each connection's `FETCH` on one process (Dovecot: ≈ 30 µs per header
    /// block, most of a core), so two connections fetch a backlog on two of its cores — 10,000
    /// header blocks in 0.20 s instead of 0.28 s (bench/results/findings.md, eleventh pass).
    /// `None` when it cannot be had: the fetch then goes on one connection, as without it.
    async fn helper(&self) -> Option<ImapSession> {
        let opened = async {
            let mut helper = login(self.account, self.password).await?;
            timed(COMMAND_TIMEOUT, helper.examine(&self.server_mailbox)).await?;
            Ok::<_, ImapError>(helper)
        };
        match tokio::time::timeout(HELPER_OPEN, opened)
            .await
            .unwrap_or_else(|_| Err(ImapError::Other("timed out".into())))
        {
            Ok(helper) => Some(helper),
            Err(e) => {
                let error = super::retry::short_error(&e.to_string());
                tracing::debug!(%error, "no helper connection for the fetch; fetching on one");
                None
            }
        }
    }

    /// Carries out a round's server actions (one command per target folder and flag), then
    /// commits the state durably and empties the journal.
    async fn finish_round(
        &mut self,
        session: &mut ImapSession,
        state: &mut MailboxState,
        present: &BTreeSet<u32>,
        round: Round,
        journal: &Mutex<Journal>,
    ) -> Result<(), ImapError> {
        let started = Instant::now();
        self.apply(session, &round.plan).await?;
        let applied_at = Instant::now();
        state.compact(present);
        let (moved, deleted) = (round.plan.moves.values().map(Vec::len).sum::<usize>(), round.plan.deletes.len());
        self.commit(state, round.pending, journal).await?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::info!(
            processed = round.processed,
            moved,
            deleted,
            headers_only = round.headers_only,
            fetch_connections = round.fetch_connections,
            fetch_ms = ms(round.fetch),
            hooks_ms = ms(round.hooks),
            server_ms = ms(applied_at - started),
            commit_ms = ms(applied_at.elapsed()),
            "batch done"
        );
        Ok(())
    }

    /// Turns a batch's answers into messages for the hook, leaving out the UIDs already done;
    /// and the messages of which only the first part came (uid, that part, flags).
    #[allow(clippy::type_complexity)]
    fn prepare(
        fetches: &[Fetch],
        headers_only: bool,
        state: &MailboxState,
    ) -> (Vec<Fetched>, Vec<(u32, Vec<u8>, Vec<String>)>) {
        let mut items = Vec::with_capacity(fetches.len());
        let mut partial = Vec::new();
        for fetch in fetches {
            let raw = if headers_only { fetch.header() } else { fetch.body() };
            let (Some(uid), Some(raw)) = (fetch.uid, raw) else { continue };
            if state.is_done(uid) {
                continue;
            }
            let flags: Vec<String> = fetch.flags().map(|f| flag_name(&f)).collect();
            let view = if headers_only {
                let size = fetch.size.map_or(raw.len(), |s| s as usize);
                MessageView::headers_only(Arc::new(raw.to_vec()), flags, size)
            } else if imap_large::too_large(fetch, uid) {
                continue;
            } else if imap_large::is_partial(raw.len()) {
                partial.push((uid, raw.to_vec(), flags));
                continue;
            } else {
                MessageView::with_flags(Arc::new(raw.to_vec()), flags)
            };
            let message_id = view.message_id().to_string();
            items.push(Fetched { uid, view, message_id, decision: None, file: None });
        }
        (items, partial)
    }

    /// Books what the hook thread finished, and carries on where it stopped: a message whose
    /// effects need the whole message (only its header was fetched) gets it fetched here, then
    /// the thread goes on with it and the rest. That part waits for the thread: it is the rare
    /// case (a forward, an auto-reply).
    async fn act(
        &self,
        session: &mut ImapSession,
        worker: &Arc<HookWorker>,
        set: &Arc<ScriptSet>,
        mut decided: Decided,
        state: &mut MailboxState,
        round: &mut Round,
    ) -> Result<(), ImapError> {
        loop {
            round.hooks += decided.took;
            for outcome in decided.outcomes.drain(..) {
                book(outcome, worker, state, round)?;
            }
            if let Some(error) = decided.error {
                return Err(error.into());
            }
            if decided.stopped {
                return Ok(());
            }
            let mut next = decided.rest;
            match decided.waiting {
                Some(waiting) => match self.whole(session, waiting).await? {
                    Ok(item) => next.insert(0, item),
                    Err(outcome) => book(outcome, worker, state, round)?,
                },
                None if next.is_empty() => return Ok(()),
                None => {}
            }
            decided = worker.spawn(set.clone(), next).await.map_err(|e| ImapError::Other(e.to_string()))?;
        }
    }

    /// `item` with the whole message in place of its header, or its failure when the message
    /// left the server meanwhile. The outer error is the connection's.
    async fn whole(&self, session: &mut ImapSession, item: Fetched) -> Result<Result<Fetched, Outcome>, ImapError> {
        let uid_text = item.uid.to_string();
        let fetches: Vec<Fetch> = timed(FETCH_TIMEOUT, async {
            session.uid_fetch(&uid_text, imap_large::WHOLE_QUERY).await?.try_collect().await
        })
        .await?;
        let vanished = || {
            let error = "message vanished from the server before its body was fetched".to_string();
            Ok(Err(Outcome::Failed { uid: item.uid, message_id: item.message_id.clone(), error }))
        };
        let Some(fetch) = fetches.iter().find(|f| f.uid == Some(item.uid)) else { return vanished() };
        let Some(body) = fetch.body() else { return vanished() };
        let flags = item.view.flags().to_vec();
        let (view, file) = if imap_large::is_partial(body.len()) {
            match imap_large::rest(session, item.uid, body, flags, &self.deps.journal_dir).await? {
                Some(whole) => whole,
                None => return vanished(),
            }
        } else {
            imap_large::in_memory(body.to_vec(), flags)
        };
        Ok(Ok(Fetched { view, file, ..item }))
    }

    /// Makes a batch durable: local copies' folders fsynced, state and Message-IDs committed,
    /// then the journal emptied.
    async fn commit(&self, state: &MailboxState, pending: Pending, journal: &Mutex<Journal>) -> Result<(), ImapError> {
        let (store, key, snapshot) = (self.deps.store.clone(), self.key.clone(), state.clone());
        let busy = self.deps.busy_guard();
        tokio::task::spawn_blocking(move || {
            let _busy = busy;
            state::sync_dirs(&pending.dirs).map_err(|e| format!("local copies: {e}"))?;
            let ids: Vec<String> = pending.message_ids.into_iter().filter(|m| !m.is_empty()).collect();
            state::save(&store, &key, &snapshot, &ids)
        })
        .await
        .map_err(|e| ImapError::Other(e.to_string()))?
        .map_err(ImapError::Other)?;
        lock(journal).clear()?;
        Ok(())
    }

    /// Applies a batch's server actions. A refusal (NO/BAD: a folder that cannot be created, a
    /// flag the server rejects) is logged and skipped — retrying would not help; a lost
    /// connection is an error, and the journal replays the actions at the next session.
    async fn apply(&mut self, session: &mut ImapSession, plan: &Plan) -> Result<(), ImapError> {
        if plan.is_empty() {
            return Ok(());
        }
        // Flags first: a moved message keeps them.
        for (flag, uids) in &plan.flags {
            let result: Result<Vec<Fetch>, _> = timed(COMMAND_TIMEOUT, async {
                session.uid_store(uid_set(uids), format!("+FLAGS.SILENT ({flag})")).await?.try_collect().await
            })
            .await;
            refused_is_ok(result.map(|_| ()), "setting a flag", flag)?;
        }
        for (folder, uids) in &plan.moves {
            let result = timed(COMMAND_TIMEOUT * 2, self.move_to(session, folder, uids)).await;
            refused_is_ok(result, "moving messages", folder)?;
        }
        if !plan.deletes.is_empty() {
            let result: Result<Vec<Fetch>, _> = timed(COMMAND_TIMEOUT, async {
                session.uid_store(uid_set(&plan.deletes), "+FLAGS.SILENT (\\Deleted)").await?.try_collect().await
            })
            .await;
            refused_is_ok(result.map(|_| ()), "deleting messages", "")?;
            let result = timed(COMMAND_TIMEOUT, expunge(session, &plan.deletes, self.has_uidplus)).await;
            refused_is_ok(result, "expunging", "")?;
        }
        Ok(())
    }

    async fn move_to(
        &mut self,
        session: &mut ImapSession,
        folder: &str,
        uids: &[u32],
    ) -> Result<(), async_imap::error::Error> {
        if !self.created.contains(folder) {
            // CREATE fails when the folder exists: that is fine.
            if let Err(e) = session.create(folder).await {
                tracing::trace!(folder, error = %e, "CREATE (folder probably exists)");
            }
            self.created.insert(folder.to_string());
        }
        let set = uid_set(uids);
        if self.has_move {
            session.uid_mv(&set, folder).await?;
        } else {
            session.uid_copy(&set, folder).await?;
            let _: Vec<Fetch> = session.uid_store(&set, "+FLAGS.SILENT (\\Deleted)").await?.try_collect().await?;
            expunge(session, uids, self.has_uidplus).await?;
        }
        Ok(())
    }
}

/// Books one message the hook thread finished: its server actions join the round's plan. A
/// failure counts an attempt; after too many the message is given up (journaled as done).
fn book(outcome: Outcome, worker: &HookWorker, state: &mut MailboxState, round: &mut Round) -> Result<(), ImapError> {
    match outcome {
        Outcome::Done { record, dirs } => {
            round.pending.dirs.extend(dirs);
            state.done.insert(record.uid);
            state.attempts.remove(&record.uid.to_string());
            round.plan.add(record.uid, &record.act);
            round.pending.message_ids.push(record.mid);
            round.processed += 1;
            crate::prometheus::fetched("imap", "done");
        }
        Outcome::Skipped { uid } => {
            state.done.insert(uid);
            crate::prometheus::fetched("imap", "skipped");
        }
        Outcome::Failed { uid, message_id, error } => {
            crate::prometheus::fetched("imap", "failed");
            let _span = tracing::info_span!("fetched", uid, message_id = %message_id).entered();
            if state.failed(uid.to_string(), &error) {
                lock(&worker.journal).append(&Done { v: worker.uidvalidity, uid, ..Done::default() })?;
                state.done.insert(uid);
            }
        }
    }
    // Either way the state changed (done, or an attempt counted): it must be committed.
    round.records += 1;
    Ok(())
}

/// A NO or BAD answer becomes a logged error and `Ok`; anything else stays an error.
fn refused_is_ok(result: Result<(), async_imap::error::Error>, what: &str, target: &str) -> Result<(), ImapError> {
    use async_imap::error::Error;
    match result {
        Ok(()) => Ok(()),
        Err(Error::No(text)) | Err(Error::Bad(text)) => {
            tracing::error!(target_name = target, server = %text, "the server refused {what}: skipped");
            Ok(())
        }
        Err(Error::Validate(e)) => {
            tracing::error!(target_name = target, error = %e, "cannot send {what}: skipped");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

async fn expunge(session: &mut ImapSession, uids: &[u32], has_uidplus: bool) -> Result<(), async_imap::error::Error> {
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

/// A flag as it may be sent: a system flag (`\Seen`, any case) or a keyword atom (RFC 3501
/// `flag-keyword`: no space, parenthesis, brace, quote, backslash, `%`, `*`, `]` or control).
/// Anything else (a flag built from message text, say) is refused rather than sent raw.
pub fn valid_flag(flag: &str) -> Option<String> {
    const SYSTEM: [&str; 5] = ["\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"];
    if let Some(system) = SYSTEM.iter().find(|s| s.eq_ignore_ascii_case(flag)) {
        return Some(system.to_string());
    }
    let atom = !flag.is_empty()
        && flag.len() <= 200
        && flag.bytes().all(|b| b > 0x20 && b < 0x7f && !b"(){%*\"\\]".contains(&b));
    atom.then(|| flag.to_string())
}

/// A folder name as the server spells it: `/` becomes the server's hierarchy delimiter, and
/// the result is in modified UTF-7. `INBOX` in any case is `INBOX`.
pub fn server_name(folder: &str, delimiter: Option<&str>) -> String {
    if folder.eq_ignore_ascii_case("INBOX") {
        return "INBOX".into();
    }
    let folder = match delimiter {
        Some(d) if d != "/" => folder.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(d),
        _ => folder.to_string(),
    };
    mutf7(&folder)
}

pub(super) fn same_mailbox(a: &str, b: &str) -> bool {
    a == b || (a.eq_ignore_ascii_case("INBOX") && b.eq_ignore_ascii_case("INBOX"))
}

/// Modified UTF-7 (RFC 3501 §5.1.3): printable ASCII as is (`&` as `&-`), everything else as
/// `&` + base64 of UTF-16BE with `,` for `/` + `-`.
pub fn mutf7(name: &str) -> String {
    fn flush(units: &mut Vec<u16>, out: &mut String) {
        if units.is_empty() {
            return;
        }
        let bytes: Vec<u8> = units.iter().flat_map(|u| u.to_be_bytes()).collect();
        out.push('&');
        out.push_str(&base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes).replace('/', ","));
        out.push('-');
        units.clear();
    }
    let mut out = String::with_capacity(name.len());
    let mut units = Vec::new();
    for c in name.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut units, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut buf = [0u16; 2];
            units.extend_from_slice(c.encode_utf16(&mut buf));
        }
    }
    flush(&mut units, &mut out);
    out
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
    use super::*;

    #[test]
    fn uid_sets() {
        assert_eq!(uid_set(&[5, 1, 2, 3, 9, 7, 8]), "1:3,5,7:9");
        assert_eq!(uid_set(&[4]), "4");
        assert_eq!(uid_set(&[2, 2]), "2");
    }

    #[test]
    fn modified_utf7() {
        assert_eq!(mutf7("Archive"), "Archive");
        assert_eq!(mutf7("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(mutf7("R&D"), "R&-D");
        assert_eq!(mutf7("日本語"), "&ZeVnLIqe-");
        assert_eq!(mutf7("~peter/mail/台北/日本語"), "~peter/mail/&U,BTFw-/&ZeVnLIqe-");
    }

    #[test]
    fn folder_names_follow_the_server_delimiter() {
        assert_eq!(server_name("Lists/rust", Some(".")), "Lists.rust");
        assert_eq!(server_name("Lists/rust", Some("/")), "Lists/rust");
        assert_eq!(server_name("Lists/rust", None), "Lists/rust");
        assert_eq!(server_name("inbox", Some(".")), "INBOX");
        assert_eq!(server_name("Büro/2026", Some(".")), "B&APw-ro.2026");
    }

    #[test]
    fn flags_are_validated() {
        assert_eq!(valid_flag("\\flagged").as_deref(), Some("\\Flagged"));
        assert_eq!(valid_flag("$Label1").as_deref(), Some("$Label1"));
        assert_eq!(valid_flag("Junk").as_deref(), Some("Junk"));
        assert_eq!(valid_flag("a b"), None);
        assert_eq!(valid_flag("x) A1 DELETE INBOX"), None);
        assert_eq!(valid_flag("\\Recent"), None);
        assert_eq!(valid_flag(""), None);
    }
}
