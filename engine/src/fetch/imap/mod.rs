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
//!
//! Here: the connection, login, IDLE and the session loop. The fetch pipeline is in
//! `pipeline.rs`, a round's server actions and commit in `plan.rs`, large messages in
//! `large.rs`, names, flags and UID sets in `names.rs`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_imap::types::{Fetch, Flag, Mailbox, UnsolicitedResponse};
use async_imap::{Client, Session};
use base64::Engine as _;
use futures::TryStreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod large;
mod names;
mod pipeline;
mod plan;
mod untagged;

use names::flag_name;
pub(crate) use names::same_mailbox;
pub use names::{mutf7, server_name, uid_set, valid_flag};
use plan::{book, Pending, Plan, Round};

use super::hooks::{lock, Decided, Fetched, HookWorker, Outcome, Targets};
use super::net::ClientStream;
use super::state::{self, Done, Journal, MailboxState, ServerActions};
use super::{process, FetchDeps};
use crate::config::{AccountConfig, AccountTls};
use crate::message::MessageView;
use crate::script::{ScriptSet, Stage};

/// The connection under async-imap: responses its parser does not know are filtered out.
pub(super) type ImapStream = untagged::Filtered<ClientStream>;
pub(super) type ImapSession = Session<ImapStream>;

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
    /// The server refused the login (an OAuth2 token is then refreshed and tried once more).
    #[error("login refused: {0}")]
    LoginRefused(String),
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
        poller.process_new(&mut session, &selected, shutdown).await?;
        crate::trace::account(&account.name, |s| {
            s.state = crate::trace::AccountState::Connected;
            s.last_poll = crate::spool::unix_now();
            s.uidvalidity.insert(mailbox.to_string(), selected.uid_validity.unwrap_or(0));
        });
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
        // Even while idling the mailbox is checked every `poll_interval`: some servers never
        // push during IDLE (GNU Mailutils imap4d) or push late, and a message whose hook failed
        // is retried after `poll_interval` too.
        let wait = account.poll_interval.min(IDLE_RENEW);
        if account.idle && has_idle {
            let mut idle = session.idle();
            timed(COMMAND_TIMEOUT, idle.init()).await?;
            crate::trace::account(&account.name, |s| s.state = crate::trace::AccountState::Idle);
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
                _ = tokio::time::sleep(wait) => {}
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
        stream = stream.into_tls(&account.host, account.tls_ca.as_deref()).await?;
    }
    let mut client = Client::new(untagged::Filtered::new(stream));
    timed(COMMAND_TIMEOUT, async { Ok(client.read_response().await?) })
        .await?
        .ok_or_else(|| ImapError::Other("connection closed before the greeting".into()))?;
    if account.tls == AccountTls::Starttls {
        timed(COMMAND_TIMEOUT, client.run_command_and_check_ok("STARTTLS", None)).await.map_err(|e| {
            ImapError::Other(format!(
                "the server refused STARTTLS ({e}); tls = \"starttls\" never falls back to plain text"
            ))
        })?;
        // Whatever the server sent before the handshake is dropped with the old client.
        let stream = client.into_inner().into_inner().into_tls(&account.host, account.tls_ca.as_deref()).await?;
        client = Client::new(untagged::Filtered::new(stream));
    }
    super::login::imap(client, account, port, password).await
}
