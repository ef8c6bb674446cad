//! The IMAP poller's hook thread: runs the `fetched` hook over a batch, off the session's
//! task, so the next batch is fetched meanwhile (the hooks are CPU work, the fetch mostly waits
//! on the server).
//!
//! Each message is finished on the thread before the next hook starts — hook, local effects,
//! journal record, local copies moved into place — exactly as the session task did it, so a
//! crash still re-runs at most the one hook that was running (see `docs/accounts.md`). The
//! thread stops at a message whose effects need the whole message when only its header was
//! fetched: only the session can fetch it (see [`Decided::waiting`]).

use std::collections::{BTreeSet, HashSet};
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
    /// The file of a large message (see `imap/large.rs`): held, never read, so that it is
    /// removed only once the message is done with.
    #[allow(dead_code)]
    pub file: Option<std::sync::Arc<crate::spool::large::Staged>>,
}

/// What became of one message on the thread.
pub enum Outcome {
    /// Hook and local effects done, its record in the journal, local copies in place; `dirs`
    /// are the folders to fsync before the next durable commit.
    Done { record: Done, dirs: BTreeSet<PathBuf> },
    /// The hook or its local effects failed: nothing done, nothing journaled.
    Failed { uid: u32, message_id: String, error: String },
    /// Already processed before a UIDVALIDITY change (same Message-ID): journaled as done, no
    /// hook run.
    Skipped { uid: u32 },
}

/// How far [`HookWorker::finish`] got with one message.
enum Step {
    Finished(Outcome),
    /// Its hook ran; its local effects need the whole message, only the header is here.
    NeedsWhole(Fetched),
    /// The journal or a local copy could not be written: the session must end.
    Broken(Box<Fetched>, std::io::Error),
}

/// A batch back from the thread.
pub struct Decided {
    /// In UID order, up to where the thread stopped.
    pub outcomes: Vec<Outcome>,
    /// The message the thread stopped at: its hook ran (`decision` is set), its local effects
    /// need the whole message. `rest` follows it, hooks not run.
    pub waiting: Option<Fetched>,
    pub rest: Vec<Fetched>,
    /// A journal write or moving a local copy into place failed: the thread stopped there,
    /// and the session must end (the first message of `rest` may be journaled already; the
    /// next session replays the journal).
    pub error: Option<std::io::Error>,
    /// The poller is stopping: the thread left `rest` untouched (the next start does them).
    pub stopped: bool,
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
    /// The account's `folders`: script names of special folders → server names.
    pub folders: std::collections::BTreeMap<String, String>,
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
                    let folder = crate::config::oauth2::folder_alias(&self.folders, folder);
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
    /// After a UIDVALIDITY change, UIDs up to this may be old messages under new UIDs: one
    /// whose Message-ID was processed before is skipped (see `docs/accounts.md`). 0: no check.
    pub dedupe_below: u32,
    pub store: Arc<redb::Database>,
    /// The state key of the mailbox (for the Message-IDs committed in the store).
    pub key: String,
    /// Message-IDs processed since the session started (kept only when `dedupe_below` is set).
    pub done_ids: Mutex<HashSet<String>>,
    /// The poller's stop signal: the thread stops before the next message once it is set.
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// The account's [`super::FetchDeps::busy`].
    pub busy: Arc<tokio::sync::RwLock<()>>,
}

/// The journal, even if a thread panicked while holding it (a line is written whole or not).
pub fn lock(journal: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    journal.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock_ids(ids: &Mutex<HashSet<String>>) -> MutexGuard<'_, HashSet<String>> {
    ids.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HookWorker {
    /// Runs `items` through the hook on a blocking thread, under the caller's span.
    pub fn spawn(self: &Arc<Self>, set: Arc<ScriptSet>, items: Vec<Fetched>) -> tokio::task::JoinHandle<Decided> {
        let (worker, parent) = (self.clone(), tracing::Span::current());
        let busy = self.busy.clone().try_read_owned().ok();
        tokio::task::spawn_blocking(move || {
            let _busy = busy;
            parent.in_scope(|| crate::script::runner::on_blocking_thread(|| worker.run(&set, items)))
        })
    }

    fn run(&self, set: &ScriptSet, items: Vec<Fetched>) -> Decided {
        let started = Instant::now();
        let mut decided = Decided {
            outcomes: Vec::with_capacity(items.len()),
            waiting: None,
            rest: Vec::new(),
            error: None,
            stopped: false,
            took: Duration::ZERO,
        };
        let mut items = items.into_iter();
        for item in items.by_ref() {
            if *self.stop.borrow() {
                decided.rest.push(item);
                decided.stopped = true;
                break;
            }
            let span = tracing::info_span!("fetched", uid = item.uid, message_id = %item.message_id);
            let _enter = span.enter();
            let (uid, message_id) = (item.uid, item.message_id.clone());
            let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.finish(set, item)))
                .unwrap_or_else(|_| {
                    let error = "internal error (panic) while carrying out the hook's actions".to_string();
                    Step::Finished(Outcome::Failed { uid, message_id, error })
                });
            match finished {
                Step::Finished(outcome) => decided.outcomes.push(outcome),
                Step::NeedsWhole(waiting) => {
                    decided.waiting = Some(waiting);
                    break;
                }
                Step::Broken(item, error) => {
                    decided.rest.push(*item);
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
    /// place.
    fn finish(&self, set: &ScriptSet, mut item: Fetched) -> Step {
        let uid = item.uid;
        let uid_text = uid.to_string();
        if item.decision.is_none() && self.seen_before(&item) {
            tracing::info!("already processed before the UIDVALIDITY change: skipped");
            return match lock(&self.journal).append(&Done { v: self.uidvalidity, uid, ..Done::default() }) {
                Ok(()) => Step::Finished(Outcome::Skipped { uid }),
                Err(error) => Step::Broken(Box::new(item), error),
            };
        }
        let decision = match item.decision.take() {
            Some(decision) => decision,
            None => match process::hook(set, &self.account, "imap", &self.mailbox, &uid_text, &item.view) {
                Ok(decision) => decision,
                Err(error) => return Step::Finished(Outcome::Failed { uid, message_id: item.message_id, error }),
            },
        };
        let mut copies = Vec::new();
        if process::has_local_effects(&self.account, &decision) {
            if item.view.is_headers_only() {
                item.decision = Some(decision);
                return Step::NeedsWhole(item);
            }
            match process::local_effects(&self.deliverer, &self.account, &uid_text, &item.view, &decision) {
                Ok(staged) => copies = staged,
                Err(error) => return Step::Finished(Outcome::Failed { uid, message_id: item.message_id, error }),
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
            return Step::Broken(Box::new(item), error);
        }
        if self.dedupe_below > 0 && !record.mid.is_empty() {
            lock_ids(&self.done_ids).insert(record.mid.clone());
        }
        match state::finish_copies(&record.copies) {
            Ok(dirs) => Step::Finished(Outcome::Done { record, dirs }),
            Err(error) => Step::Broken(Box::new(item), error),
        }
    }

    /// Whether `item` is an old message under a new UID: at or below `dedupe_below`, with a
    /// Message-ID processed before (committed, or earlier in this session).
    fn seen_before(&self, item: &Fetched) -> bool {
        item.uid <= self.dedupe_below
            && !item.message_id.is_empty()
            && (lock_ids(&self.done_ids).contains(&item.message_id)
                || state::seen_message_id(&self.store, &self.key, &item.message_id))
    }
}
