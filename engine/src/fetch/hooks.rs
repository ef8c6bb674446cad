//! The IMAP poller's hook thread: runs the `fetched` hook over a batch, off the session's
//! task, so the next batch is fetched meanwhile (the hooks are CPU work, the fetch mostly waits
//! on the server).
//!
//! Each message is finished on the thread before the next hook starts — hook, local effects,
//! journal record, local copies moved into place — exactly as the session task did it, so a
//! crash still re-runs at most the one hook that was running (see `docs/accounts.md`). The
//! thread stops at a message whose effects need the whole message when only its header was
//! fetched: only the session can fetch it (see [`Decided::waiting`]).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::process;
use super::state::{self, Done, Journal, ServerActions};
use crate::config::AccountConfig;
use crate::deliver::Deliverer;
use crate::message::MessageView;
use crate::script::{Action, Decision, ScriptSet};

/// A fetched message on its way through the hook. `decision` is set when the hook already ran
/// and only its local effects are left (they needed the whole message, fetched since).
pub struct Fetched {
    pub uid: u32,
    pub view: MessageView,
    pub message_id: String,
    pub decision: Option<Decision>,
}

/// What became of one message on the thread.
pub enum Outcome {
    /// Hook and local effects done, its record in the journal, local copies in place; `dirs`
    /// are the folders to fsync before the next durable commit.
    Done { record: Done, dirs: BTreeSet<PathBuf> },
    /// The hook or its local effects failed: nothing done, nothing journaled.
    Failed { uid: u32, message_id: String, error: String },
}

/// A batch back from the thread.
pub struct Decided {
    /// In UID order, up to where the thread stopped.
    pub outcomes: Vec<Outcome>,
    /// The message the thread stopped at: its hook ran (`decision` is set), its local effects
    /// need the whole message. `rest` follows it, hooks not run.
    pub waiting: Option<Fetched>,
    pub rest: Vec<Fetched>,
    /// A journal write failed: the thread stopped before the message in `waiting`/`rest`.
    pub error: Option<std::io::Error>,
    /// Time spent in hooks and effects.
    pub took: Duration,
}

/// How a `file_into` folder becomes a server action.
#[derive(Clone)]
pub struct Targets {
    /// `deliver` is set: folders are local, nothing moves on the server.
    pub local_mode: bool,
    pub delimiter: Option<String>,
    /// The polled mailbox's name on the server.
    pub polled: String,
}

impl Targets {
    /// What the hook asked of the server: flags (and `mark_seen`), the first `file_into`
    /// (unless `deliver` makes folders local, or it names this very mailbox), `delete`.
    /// Nothing after `discard()`/`reject()`.
    pub fn server_actions(&self, decision: &Decision) -> ServerActions {
        let mut out = ServerActions::default();
        if process::dropped(decision) {
            return out;
        }
        for action in &decision.actions {
            match action {
                Action::FileInto { folder } if !self.local_mode && out.move_to.is_none() => {
                    let target = super::imap::server_name(folder, self.delimiter.as_deref());
                    if super::imap::same_mailbox(&target, &self.polled) {
                        tracing::debug!(folder, "file_into names the polled mailbox: nothing to move");
                    } else {
                        out.move_to = Some(target);
                    }
                }
                Action::Flag { flag } => match super::imap::valid_flag(flag) {
                    Some(flag) if !out.flags.contains(&flag) => out.flags.push(flag),
                    Some(_) => {}
                    None => tracing::warn!(flag, "not a valid IMAP flag: ignored"),
                },
                Action::MarkSeen if !out.flags.iter().any(|f| f == "\\Seen") => out.flags.push("\\Seen".into()),
                Action::Delete => out.delete = true,
                _ => {}
            }
        }
        out
    }
}

/// Everything the thread works with, owned: one per mailbox session.
pub struct HookWorker {
    pub account: AccountConfig,
    pub mailbox: String,
    pub deliverer: Deliverer,
    pub journal: Arc<Mutex<Journal>>,
    pub uidvalidity: u32,
    pub targets: Targets,
}

/// The journal, even if a thread panicked while holding it (a line is written whole or not).
pub fn lock(journal: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    journal.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HookWorker {
    /// Runs `items` through the hook on a blocking thread, under the caller's span.
    pub fn spawn(self: &Arc<Self>, set: Arc<ScriptSet>, items: Vec<Fetched>) -> tokio::task::JoinHandle<Decided> {
        let (worker, parent) = (self.clone(), tracing::Span::current());
        tokio::task::spawn_blocking(move || parent.in_scope(|| worker.run(&set, items)))
    }

    fn run(&self, set: &ScriptSet, items: Vec<Fetched>) -> Decided {
        let started = Instant::now();
        let mut decided = Decided {
            outcomes: Vec::with_capacity(items.len()),
            waiting: None,
            rest: Vec::new(),
            error: None,
            took: Duration::ZERO,
        };
        let mut items = items.into_iter();
        while let Some(item) = items.next() {
            let span = tracing::info_span!("fetched", uid = item.uid, message_id = %item.message_id);
            let _enter = span.enter();
            match self.finish(set, item) {
                Ok(Ok(outcome)) => decided.outcomes.push(outcome),
                Ok(Err(waiting)) => {
                    decided.waiting = Some(waiting);
                    break;
                }
                Err((item, error)) => {
                    decided.rest.push(item);
                    decided.error = Some(error);
                    break;
                }
            }
        }
        decided.rest.extend(items);
        decided.took = started.elapsed();
        decided
    }

    /// One message: hook (unless decided already), local effects, journal record, copies in
    /// place. `Ok(Err(item))`: its effects need the whole message. `Err`: the journal could not
    /// be written (nothing is done for the message, its hook may have run).
    #[allow(clippy::type_complexity)]
    fn finish(
        &self,
        set: &ScriptSet,
        mut item: Fetched,
    ) -> Result<Result<Outcome, Fetched>, (Fetched, std::io::Error)> {
        let uid = item.uid;
        let uid_text = uid.to_string();
        let decision = match item.decision.take() {
            Some(decision) => decision,
            None => match process::hook(set, &self.account, "imap", &self.mailbox, &uid_text, &item.view) {
                Ok(decision) => decision,
                Err(error) => return Ok(Ok(Outcome::Failed { uid, message_id: item.message_id, error })),
            },
        };
        let mut copies = Vec::new();
        if process::has_local_effects(&self.account, &decision) {
            if item.view.is_headers_only() {
                item.decision = Some(decision);
                return Ok(Err(item));
            }
            match process::local_effects(&self.deliverer, &self.account, &uid_text, &item.view, &decision) {
                Ok(staged) => copies = staged,
                Err(error) => return Ok(Ok(Outcome::Failed { uid, message_id: item.message_id, error })),
            }
        }
        let record = Done {
            v: self.uidvalidity,
            uid,
            act: self.targets.server_actions(&decision),
            mid: item.message_id.clone(),
            copies,
            ..Done::default()
        };
        if let Err(error) = lock(&self.journal).append(&record) {
            return Err((item, error));
        }
        match state::finish_copies(&record.copies) {
            Ok(dirs) => Ok(Ok(Outcome::Done { record, dirs })),
            Err(error) => Err((item, error)),
        }
    }
}
