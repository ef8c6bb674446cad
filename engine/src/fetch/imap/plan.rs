//! A round's server actions, planned by UID set and carried out together: flags, then moves
//! (or copy + delete + expunge), then deletions; and the durable commit of the state.

use super::*;

/// The server actions of a batch, grouped by target so each is one command per UID set.
#[derive(Default)]
pub(super) struct Plan {
    pub(super) flags: BTreeMap<String, Vec<u32>>,
    pub(super) moves: BTreeMap<String, Vec<u32>>,
    pub(super) deletes: Vec<u32>,
}

/// What has been processed since the last state commit.
#[derive(Default)]
pub(super) struct Round {
    pub(super) plan: Plan,
    pub(super) pending: Pending,
    /// Messages whose state changed: journal records written (processed, skipped, given up)
    /// and failed attempts counted.
    pub(super) records: usize,
    pub(super) processed: usize,
    pub(super) headers_only: bool,
    /// Connections the fetch used: 2 with a helper (see [`Poller::helper`]).
    pub(super) fetch_connections: usize,
    pub(super) fetch: Duration,
    pub(super) hooks: Duration,
}

impl Plan {
    pub(super) fn add(&mut self, uid: u32, actions: &ServerActions) {
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

    pub(super) fn is_empty(&self) -> bool {
        self.flags.is_empty() && self.moves.is_empty() && self.deletes.is_empty()
    }
}

/// What a batch leaves for the durable commit.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) message_ids: Vec<String>,
    pub(super) dirs: BTreeSet<PathBuf>,
}

impl Poller<'_> {
    /// Makes a batch durable: local copies' folders fsynced, state and Message-IDs committed,
    /// then the journal emptied.
    pub(super) async fn commit(
        &self,
        state: &MailboxState,
        pending: Pending,
        journal: &Mutex<Journal>,
    ) -> Result<(), ImapError> {
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
    pub(super) async fn apply(&mut self, session: &mut ImapSession, plan: &Plan) -> Result<(), ImapError> {
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

    pub(super) async fn move_to(
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
pub(super) fn book(
    outcome: Outcome,
    worker: &HookWorker,
    state: &mut MailboxState,
    round: &mut Round,
) -> Result<(), ImapError> {
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
pub(super) fn refused_is_ok(
    result: Result<(), async_imap::error::Error>,
    what: &str,
    target: &str,
) -> Result<(), ImapError> {
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

pub(super) async fn expunge(
    session: &mut ImapSession,
    uids: &[u32],
    has_uidplus: bool,
) -> Result<(), async_imap::error::Error> {
    if has_uidplus {
        let _: Vec<u32> = session.uid_expunge(uid_set(uids)).await?.try_collect().await?;
    } else {
        let _: Vec<u32> = session.expunge().await?.try_collect().await?;
    }
    Ok(())
}
