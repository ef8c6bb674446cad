//! The fetch pipeline of one IMAP session: replay the journal, find new UIDs, fetch them in
//! batches (two connections for a backlog) while the previous batch's hooks run on their own
//! thread, and book what the hooks decided.

use super::*;

impl Poller<'_> {
    /// Replays what an interrupted run left in the journal, then processes every UID not yet
    /// done (a message whose hook failed is tried again at the next check).
    pub(super) async fn process_new(
        &mut self,
        session: &mut ImapSession,
        selected: &Mailbox,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), ImapError> {
        let (uidvalidity, uid_next) = (selected.uid_validity.unwrap_or(0), selected.uid_next);
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

        let present = self.new_uids(session, state.watermark, selected).await?;
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
                folders: self.account.folders.clone(),
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
                let query = if headers_only { "(UID FLAGS RFC822.SIZE BODY.PEEK[HEADER])" } else { large::BODY_QUERY };
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
                        let error = crate::fetch::retry::short_error(&e.to_string());
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
                match large::rest(session, uid, &first, flags, &self.deps.journal_dir).await? {
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
        Ok(())
    }

    /// The UIDs above `watermark` in the selected mailbox. `UID FETCH n:* (UID)` rather than
    /// `UID SEARCH UID n:*`: GNU Mailutils imap4d answers that search with an empty `* SEARCH`
    /// whatever the mailbox holds, while every server answers the fetch. `n:*` always includes
    /// the last message (RFC 3501 §6.4.8), even when its UID is below `n`: a mailbox that has
    /// messages and answers none is a server bug, worth a warning rather than silence.
    async fn new_uids(
        &self,
        session: &mut ImapSession,
        watermark: u32,
        selected: &Mailbox,
    ) -> Result<BTreeSet<u32>, ImapError> {
        let set = format!("{}:*", watermark.saturating_add(1));
        let answers: Vec<Fetch> =
            timed(FETCH_TIMEOUT, async { session.uid_fetch(&set, "(UID)").await?.try_collect().await }).await?;
        let uids: Vec<u32> = answers.iter().filter_map(|f| f.uid).collect();
        if let Some(warning) = unanswered(selected.exists, selected.uid_next, watermark, &uids) {
            tracing::warn!(mailbox = %self.mailbox, "{warning}");
        }
        Ok(uids.into_iter().filter(|&u| u > watermark).collect())
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
                let error = crate::fetch::retry::short_error(&e.to_string());
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
            if raw.is_empty() {
                // GNU Mailutils imap4d does this, with OK, for a folder whose files another
                // program renamed since SELECT (pop3d adding X-UIDL): say so, it is not mail.
                tracing::warn!(
                    uid,
                    "the server sent this message as empty (0 bytes): is another program rewriting the mailbox?"
                );
            }
            let flags: Vec<String> = fetch.flags().map(|f| flag_name(&f)).collect();
            let view = if headers_only {
                let size = fetch.size.map_or(raw.len(), |s| s as usize);
                MessageView::headers_only(Arc::new(raw.to_vec()), flags, size)
            } else if large::too_large(fetch, uid) {
                continue;
            } else if large::is_partial(raw.len()) {
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
        let fetches: Vec<Fetch> =
            timed(FETCH_TIMEOUT, async { session.uid_fetch(&uid_text, large::WHOLE_QUERY).await?.try_collect().await })
                .await?;
        let vanished = || {
            let error = "message vanished from the server before its body was fetched".to_string();
            Ok(Err(Outcome::Failed { uid: item.uid, message_id: item.message_id.clone(), error }))
        };
        let Some(fetch) = fetches.iter().find(|f| f.uid == Some(item.uid)) else { return vanished() };
        let Some(body) = fetch.body() else { return vanished() };
        let flags = item.view.flags().to_vec();
        let (view, file) = if large::is_partial(body.len()) {
            match large::rest(session, item.uid, body, flags, &self.deps.journal_dir).await? {
                Some(whole) => whole,
                None => return vanished(),
            }
        } else {
            large::in_memory(body.to_vec(), flags)
        };
        Ok(Ok(Fetched { view, file, ..item }))
    }
}

/// A warning when the mailbox reports messages the UID listing did not return: it has
/// `exists` messages, so `n:*` must answer at least the last one.
fn unanswered(exists: u32, uid_next: Option<u32>, watermark: u32, uids: &[u32]) -> Option<String> {
    if exists == 0 || !uids.is_empty() {
        return None;
    }
    let next = uid_next.map_or(String::new(), |n| format!(" (UIDNEXT {n})"));
    let asked = format!("UID FETCH {}:*", watermark.saturating_add(1));
    Some(format!("the mailbox reports {exists} messages{next} but {asked} returned none: new mail cannot be found"))
}

#[cfg(test)]
mod tests {
    use super::unanswered;

    #[test]
    fn a_listing_that_misses_reported_messages_is_warned_about() {
        let warning = unanswered(498, Some(499), 0, &[]).unwrap();
        assert!(warning.contains("498 messages (UIDNEXT 499)"), "{warning}");
        assert!(warning.contains("UID FETCH 1:*"), "{warning}");
    }

    #[test]
    fn an_empty_mailbox_or_an_answered_listing_is_fine() {
        assert_eq!(unanswered(0, Some(1), 0, &[]), None);
        assert_eq!(unanswered(3, Some(9), 8, &[8]), None); // only the last, already done
        assert_eq!(unanswered(3, Some(9), 2, &[3, 5, 8]), None);
    }
}
