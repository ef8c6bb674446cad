//! receive: the POP3 and IMAP pollers (`[[accounts]]` in docs/accounts.md, stage `fetched` in docs/scripting.md).
//!
//! Every account runs in its own task (one per mailbox for IMAP, each with its own
//! connection and IDLE), so one bad password or dead server never stops the others. A failed
//! connection is retried with exponential backoff and jitter (see [`retry`]), reset only
//! after a complete round, so a server that accepts the login and then sends garbage is
//! retried less and less often, not every second. Each message goes fetch → hook
//! → actions → durable state → server-side move/deletion (see `imap` and `pop3`), which is
//! what makes "each message once" hold across crashes and restarts.
//!
//! Security: server responses are untrusted; every read is bounded.

mod hooks;
pub mod imap;
pub mod login;
pub mod net;
pub mod pop3;
pub mod process;
pub mod retry;
pub mod state;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::{AccountConfig, AccountProtocol};
use crate::deliver::Deliverer;
use crate::script::ScriptHost;
use retry::{short_error, Backoff, Warned, BACKOFF_START};

/// What the pollers share.
#[derive(Clone)]
pub struct FetchDeps {
    pub scripts: Arc<ScriptHost>,
    pub store: Arc<redb::Database>,
    pub deliverer: Deliverer,
    /// Where the per-mailbox progress journals live (`[state] dir`/fetch-journal).
    pub journal_dir: PathBuf,
    /// Held (shared) by every piece of an account's blocking work — hooks and their effects,
    /// journal writes, state commits — for as long as it runs. [`AccountTasks::stop`] takes it
    /// exclusively after aborting a poller that outlived the grace period: aborting the async
    /// task does not stop a blocking thread, and a restarted poller must not run beside it.
    /// [`start`] gives each account its own.
    pub busy: Arc<tokio::sync::RwLock<()>>,
}

impl FetchDeps {
    /// A share of [`Self::busy`] for one piece of blocking work (moved into its closure).
    /// `None` only once the account is being stopped, when nothing new should start anyway.
    pub fn busy_guard(&self) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
        self.busy.clone().try_read_owned().ok()
    }
}

/// The running pollers of one account.
pub struct AccountTasks {
    pub config: AccountConfig,
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
    busy: Arc<tokio::sync::RwLock<()>>,
}

impl AccountTasks {
    /// Stops the account's tasks (IMAP logs out; a POP3 round in progress finishes). A task
    /// still running after `grace` is aborted, and then this waits until the account's blocking
    /// work has ended too (a hook thread stops at the next message once asked to): a restarted
    /// poller never shares the account's journal and state with the old one. Being cut off
    /// mid-round is safe — the journal and state are written in an order a crash may interrupt
    /// anywhere, and the next start replays the journal.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        for mut handle in self.handles {
            if tokio::time::timeout_at(deadline, &mut handle).await.is_err() {
                tracing::warn!(account = %self.config.name, "poller did not stop in time: aborted");
                handle.abort();
                let _ = handle.await;
            }
        }
        let _quiet = self.busy.write().await;
    }
}

/// The mailboxes an IMAP account watches: `mailboxes`, plus `mailbox`, default INBOX.
pub fn mailboxes(account: &AccountConfig) -> Vec<String> {
    let mut all: Vec<String> = account.mailboxes.clone();
    if let Some(m) = &account.mailbox {
        if !all.contains(m) {
            all.insert(0, m.clone());
        }
    }
    if all.is_empty() {
        all.push("INBOX".to_string());
    }
    all
}

/// Starts the pollers of `account`.
pub fn start(deps: &FetchDeps, account: AccountConfig) -> AccountTasks {
    let deps = &FetchDeps { busy: Arc::default(), ..deps.clone() };
    let (stop, stop_rx) = watch::channel(false);
    let mut handles = Vec::new();
    match account.protocol {
        AccountProtocol::Imap => {
            for mailbox in mailboxes(&account) {
                let span =
                    tracing::info_span!("poller", account = %account.name, protocol = "imap", mailbox = %mailbox);
                handles.push(tokio::spawn(
                    run_imap(deps.clone(), account.clone(), mailbox, stop_rx.clone()).instrument(span),
                ));
            }
        }
        AccountProtocol::Pop3 => {
            let span = tracing::info_span!("poller", account = %account.name, protocol = "pop3");
            handles.push(tokio::spawn(run_pop3(deps.clone(), account.clone(), stop_rx).instrument(span)));
        }
    }
    AccountTasks { config: account, stop, handles, busy: deps.busy.clone() }
}

async fn run_imap(deps: FetchDeps, account: AccountConfig, mailbox: String, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::default();
    let mut credentials = login::Credentials::new(&deps, &account);
    loop {
        let mut good_round = false;
        let result = match credentials.next(&account, &mut stop).await {
            // A panic in the session is a failed connection, not a dead poller: imap-proto
            // 0.17 panics on some malformed server responses (a response code followed by a
            // non-ASCII character: `A1 OK [ALERT]\u{e9}`), and the task would end silently.
            Ok(password) => {
                let session = imap::session(&deps, &account, &mailbox, &password, &mut stop, &mut good_round);
                match AssertUnwindSafe(session).catch_unwind().await {
                    Err(_) => Err("the IMAP session panicked (malformed server response?)".to_string()),
                    Ok(Err(imap::ImapError::LoginRefused(e))) if credentials.login_refused(&password) => {
                        tracing::warn!(error = %short_error(&e), "IMAP login refused; retrying with a refreshed token");
                        continue;
                    }
                    Ok(result) => {
                        credentials.login_accepted();
                        result.map_err(|e| e.to_string())
                    }
                }
            }
            Err(login::CredentialError::Stopped) => return,
            Err(e) => Err(e.to_string()),
        };
        let wait = match result {
            Ok(()) => return,
            Err(e) => {
                if good_round {
                    backoff.reset();
                }
                let wait = backoff.failed();
                tracing::warn!(error = %short_error(&e), retry_in = ?wait, "IMAP connection failed; reconnecting");
                backing_off(&account.name, &e, wait);
                wait
            }
        };
        if wait_or_stop(jitter(wait), &mut stop).await {
            return;
        }
    }
}

async fn run_pop3(deps: FetchDeps, account: AccountConfig, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::default();
    let mut warned = Warned::default();
    let mut credentials = login::Credentials::new(&deps, &account);
    loop {
        let result = match credentials.next(&account, &mut stop).await {
            Ok(password) => match pop3::round(&deps, &account, &password, &stop, &mut warned).await {
                Err(pop3::Pop3Error::LoginRefused(e)) if credentials.login_refused(&password) => {
                    tracing::warn!(error = %short_error(&e), "POP3 login refused; retrying with a refreshed token");
                    continue;
                }
                result => {
                    credentials.login_accepted();
                    result.map_err(|e| e.to_string())
                }
            },
            Err(login::CredentialError::Stopped) => return,
            Err(e) => Err(e.to_string()),
        };
        let wait = match result {
            Ok(_) => {
                backoff.reset();
                crate::trace::account(&account.name, |s| {
                    s.state = crate::trace::AccountState::Idle;
                    s.last_poll = crate::spool::unix_now();
                });
                account.poll_interval
            }
            Err(e) => {
                let wait = backoff.failed();
                tracing::warn!(error = %short_error(&e), retry_in = ?wait, "POP3 round failed; retrying");
                let wait = jitter(wait).min(account.poll_interval.max(BACKOFF_START));
                backing_off(&account.name, &e, wait);
                wait
            }
        };
        if wait_or_stop(wait, &mut stop).await {
            return;
        }
    }
}

/// The status page's view of a failed connection (see [`crate::trace::account`]).
fn backing_off(account: &str, error: &str, wait: Duration) {
    crate::trace::account(account, |s| {
        s.state = crate::trace::AccountState::BackingOff;
        s.last_error = short_error(error);
        s.next_retry = crate::spool::unix_now() + wait.as_secs();
    });
}

/// Sleeps `wait`; true when asked to stop meanwhile.
async fn wait_or_stop(wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stop.changed() => true,
    }
}

/// ±20 % so many accounts failing together do not reconnect in lockstep.
fn jitter(base: Duration) -> Duration {
    let factor = rand::rng().random_range(0.8..1.2);
    base.mul_f64(factor)
}
