//! The in-memory side of tracing: the recent traces, stage steps waiting for their message,
//! per-minute counts, per-stage statistics, account status. One mutex, held for a few hash
//! operations per call; the store writer takes what changed twice a second.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};

use super::{cut, now_ms, Event, Step, Summary, Trace, MAX_EVENTS, MAX_RECENT, MAX_RECENT_BYTES, MAX_STEPS};

/// Ids (sessions, messages) whose steps wait for [`received`]; the oldest go first.
const MAX_PENDING: usize = 4096;
/// Minutes of counts kept for the chart.
const MINUTES: usize = 60;

static RECORDER: OnceLock<Recorder> = OnceLock::new();

/// Everything the recorder holds.
#[derive(Default)]
pub struct Recorder {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    recent: HashMap<String, Trace>,
    /// Ids of `recent`, oldest first.
    order: VecDeque<String>,
    bytes: usize,
    pending: HashMap<String, Vec<Step>>,
    pending_order: VecDeque<String>,
    /// Ids changed since the writer last looked.
    dirty: Vec<String>,
    /// Events for traces no longer in memory: the writer adds them to the stored record.
    orphans: Vec<(String, Event)>,
    minutes: VecDeque<Minute>,
    stages: BTreeMap<String, StageStats>,
    accounts: BTreeMap<String, AccountStatus>,
}

/// Messages counted in one minute.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Minute {
    /// Unix minute (seconds / 60).
    pub at: u64,
    pub received: u64,
    pub delivered: u64,
    pub forwarded: u64,
    pub rejected: u64,
}

/// Calls of one script stage since the start.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StageStats {
    pub calls: u64,
    pub errors: u64,
    pub micros: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountState {
    #[default]
    Connecting,
    Connected,
    Idle,
    BackingOff,
    Stopped,
}

impl AccountState {
    pub fn name(self) -> &'static str {
        match self {
            AccountState::Connecting => "connecting",
            AccountState::Connected => "connected",
            AccountState::Idle => "idle",
            AccountState::BackingOff => "backing off",
            AccountState::Stopped => "stopped",
        }
    }
}

/// What the status page shows of one poller.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AccountStatus {
    pub state: AccountState,
    pub last_error: String,
    /// Unix seconds of the next connection attempt while backing off.
    pub next_retry: u64,
    /// Unix seconds of the last completed poll.
    pub last_poll: u64,
    pub processed_today: u64,
    /// The day (unix days) `processed_today` counts.
    pub day: u64,
    /// `mailbox=UIDVALIDITY` per mailbox.
    pub uidvalidity: BTreeMap<String, u32>,
}

/// Starts recording (the daemon, once). Later calls change nothing.
pub fn install() -> &'static Recorder {
    RECORDER.get_or_init(Recorder::default)
}

pub fn installed() -> Option<&'static Recorder> {
    RECORDER.get()
}

fn with<T>(f: impl FnOnce(&mut Inner) -> T) -> Option<T> {
    let recorder = RECORDER.get()?;
    let mut inner = recorder.inner.lock().unwrap_or_else(|e| e.into_inner());
    Some(f(&mut inner))
}

/// A script stage ran for `id` (a message id, or the session id before DATA).
pub fn stage(id: &str, step: Step) {
    with(|inner| {
        let stats = match inner.stages.get_mut(&step.stage) {
            Some(stats) => stats,
            None => inner.stages.entry(step.stage.clone()).or_default(),
        };
        stats.calls += 1;
        stats.errors += u64::from(step.error.is_some());
        stats.micros += step.micros;
        if step.verdict.starts_with("reject") || step.verdict.starts_with("tempfail") {
            inner.bump(|m| m.rejected += 1);
        }
        if let Some(trace) = inner.recent.get_mut(id) {
            if trace.steps.len() < MAX_STEPS {
                inner.bytes += step_size(&step);
                trace.steps.push(step);
                inner.dirty.push(id.to_string());
            }
            return;
        }
        match inner.pending.get_mut(id) {
            Some(steps) if steps.len() < MAX_STEPS => steps.push(step),
            Some(_) => {}
            None => {
                if inner.pending_order.len() >= MAX_PENDING {
                    if let Some(old) = inner.pending_order.pop_front() {
                        inner.pending.remove(&old);
                    }
                }
                inner.pending_order.push_back(id.to_string());
                inner.pending.insert(id.to_string(), vec![step]);
            }
        }
    });
}

/// A message was accepted (SMTP: on disk; a poller: its hook ran). `session` names the SMTP
/// session whose earlier stage steps belong to it.
pub fn received(id: &str, session: Option<&str>, summary: &Summary<'_>) {
    begin(id, session, summary, "accepted");
}

/// A message was refused or dropped at its last stage (`outcome`: `rejected`, `discarded`).
pub fn refused(id: &str, session: Option<&str>, summary: &Summary<'_>, outcome: &str) {
    begin(id, session, summary, outcome);
}

fn begin(id: &str, session: Option<&str>, summary: &Summary<'_>, outcome: &str) {
    if RECORDER.get().is_none() {
        return;
    }
    // Outside the lock: reading the header block is the costliest part.
    let subject = super::header_value(summary.head, "Subject");
    let message_id = super::header_value(summary.head, "Message-ID");
    let mut recipients: Vec<String> = summary.recipients.iter().take(super::MAX_RECIPIENTS).map(|r| cut(r)).collect();
    if summary.recipients.len() > super::MAX_RECIPIENTS {
        recipients.push(format!("(+{} more)", summary.recipients.len() - super::MAX_RECIPIENTS));
    }
    let mut trace = Trace {
        id: id.to_string(),
        message_id,
        source: summary.source.to_string(),
        received_at: now_ms(),
        sender: cut(summary.sender),
        recipients,
        subject,
        size: summary.size,
        outcome: outcome.to_string(),
        steps: Vec::new(),
        events: Vec::new(),
    };
    with(|inner| {
        if let Some(session) = session {
            if let Some(steps) = inner.pending.get_mut(session) {
                // Connection steps stay for the session's next message; transaction steps go.
                trace.steps.extend(steps.iter().cloned());
                steps.retain(|s| s.stage == "connect" || s.stage == "helo");
            }
        }
        if let Some(steps) = inner.pending.remove(id) {
            trace.steps.extend(steps);
        }
        trace.steps.truncate(MAX_STEPS);
        if outcome == "accepted" {
            inner.bump(|m| m.received += 1);
        }
        inner.insert(trace);
    });
}

/// Something was done for message `id`: see the kinds in [`super::text::KINDS`].
/// `queue_id` names the outbound queue entry it made or is about ("" for none).
pub fn event(id: &str, kind: &str, detail: impl Into<String>, queue_id: &str) {
    if RECORDER.get().is_none() {
        return;
    }
    let event =
        Event { at: now_ms(), kind: kind.to_string(), detail: cut(&detail.into()), queue_id: queue_id.to_string() };
    with(|inner| {
        match kind {
            "delivered" => {
                let first = inner.recent.get(id).is_none_or(|t| !t.events.iter().any(|e| e.kind == "delivered"));
                if first {
                    inner.bump(|m| m.delivered += 1);
                }
            }
            "forwarded" => inner.bump(|m| m.forwarded += 1),
            _ => {}
        }
        match inner.recent.get_mut(id) {
            Some(trace) => {
                if trace.events.len() < MAX_EVENTS {
                    inner.bytes += event.detail.len() + 32;
                    trace.outcome = outcome_after(&trace.outcome, kind);
                    // The sender may report on an entry before its "queued" event is in:
                    // "queued" goes before the entry's other events.
                    let first_of_entry = (matches!(kind, "queued" | "forwarded") && !event.queue_id.is_empty())
                        .then(|| trace.events.iter().position(|e| e.queue_id == event.queue_id))
                        .flatten();
                    match first_of_entry {
                        Some(at) => trace.events.insert(at, event),
                        None => trace.events.push(event),
                    }
                }
                inner.dirty.push(id.to_string());
            }
            None => inner.orphans.push((id.to_string(), event)),
        }
    });
}

/// The outcome word after an event of `kind`.
pub(super) fn outcome_after(current: &str, kind: &str) -> String {
    match kind {
        "delivered" | "sent" | "bounced" | "failed" | "deferred" => kind.to_string(),
        "forwarded" | "queued" if current == "accepted" => "queued".to_string(),
        _ => current.to_string(),
    }
}

/// The recent traces matching `query` (case-insensitive, in sender, recipients, subject, id,
/// Message-ID), newest first, at most `limit`; and how many matched in all.
pub fn recent(query: &str, limit: usize) -> (Vec<Trace>, usize) {
    let query = query.trim().to_lowercase();
    with(|inner| {
        let mut out = Vec::new();
        let mut matched = 0;
        for id in inner.order.iter().rev() {
            let Some(trace) = inner.recent.get(id) else { continue };
            if !query.is_empty() && !matches(trace, &query) {
                continue;
            }
            matched += 1;
            if out.len() < limit {
                out.push(trace.clone());
            }
        }
        (out, matched)
    })
    .unwrap_or_default()
}

fn matches(trace: &Trace, query: &str) -> bool {
    let has = |s: &str| s.to_lowercase().contains(query);
    has(&trace.id)
        || has(&trace.sender)
        || has(&trace.subject)
        || has(&trace.message_id)
        || trace.recipients.iter().any(|r| has(r))
}

/// The trace of `id` in memory: by queue id, Message-ID (with or without `<>`) or the id of an
/// outbound queue entry it made.
pub fn find(id: &str) -> Option<Trace> {
    with(|inner| {
        if let Some(trace) = inner.recent.get(id) {
            return Some(trace.clone());
        }
        let bare = id.trim().trim_start_matches('<').trim_end_matches('>');
        inner
            .recent
            .values()
            .find(|t| {
                t.message_id.trim_start_matches('<').trim_end_matches('>') == bare
                    || t.events.iter().any(|e| e.queue_id == bare)
            })
            .cloned()
    })
    .flatten()
}

/// The last hour's counts, oldest first (minutes without mail are absent).
pub fn minutes() -> Vec<Minute> {
    with(|inner| inner.minutes.iter().copied().collect()).unwrap_or_default()
}

pub fn stage_stats() -> Vec<(String, StageStats)> {
    with(|inner| inner.stages.iter().map(|(k, v)| (k.clone(), *v)).collect()).unwrap_or_default()
}

/// Changes the status of account `name`.
pub fn account(name: &str, change: impl FnOnce(&mut AccountStatus)) {
    with(|inner| {
        let status = inner.accounts.entry(name.to_string()).or_default();
        let today = now_ms() / 86_400_000;
        if status.day != today {
            status.day = today;
            status.processed_today = 0;
        }
        change(status);
    });
}

pub fn accounts() -> Vec<(String, AccountStatus)> {
    with(|inner| inner.accounts.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
}

/// What changed since the last call: traces to write and events for traces no longer held.
pub(super) fn take_changes() -> (Vec<Trace>, Vec<(String, Event)>) {
    with(|inner| {
        let mut ids = std::mem::take(&mut inner.dirty);
        ids.sort_unstable();
        ids.dedup();
        let traces = ids.iter().filter_map(|id| inner.recent.get(id).cloned()).collect();
        (traces, std::mem::take(&mut inner.orphans))
    })
    .unwrap_or_default()
}

impl Inner {
    fn bump(&mut self, count: impl FnOnce(&mut Minute)) {
        let at = now_ms() / 60_000;
        if self.minutes.back().is_none_or(|m| m.at != at) {
            if self.minutes.len() >= MINUTES {
                self.minutes.pop_front();
            }
            self.minutes.push_back(Minute { at, ..Minute::default() });
        }
        if let Some(minute) = self.minutes.back_mut() {
            count(minute);
        }
    }

    fn insert(&mut self, trace: Trace) {
        let id = trace.id.clone();
        self.bytes += trace_size(&trace);
        if let Some(old) = self.recent.insert(id.clone(), trace) {
            self.bytes = self.bytes.saturating_sub(trace_size(&old));
        } else {
            self.order.push_back(id.clone());
        }
        while self.order.len() > MAX_RECENT || self.bytes > MAX_RECENT_BYTES {
            let Some(old) = self.order.pop_front() else { break };
            if let Some(gone) = self.recent.remove(&old) {
                self.bytes = self.bytes.saturating_sub(trace_size(&gone));
            }
        }
        self.dirty.push(id);
    }
}

fn step_size(step: &Step) -> usize {
    64 + step.verdict.len()
        + step.decided_by.as_ref().map_or(0, String::len)
        + step.error.as_ref().map_or(0, String::len)
        + step.actions.iter().map(|a| a.len() + 24).sum::<usize>()
}

/// Approximate heap bytes of a trace (what [`MAX_RECENT_BYTES`] counts).
fn trace_size(trace: &Trace) -> usize {
    256 + 2 * trace.id.len()
        + trace.message_id.len()
        + trace.sender.len()
        + trace.subject.len()
        + trace.recipients.iter().map(|r| r.len() + 24).sum::<usize>()
        + trace.steps.iter().map(step_size).sum::<usize>()
        + trace.events.iter().map(|e| e.detail.len() + 64).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(stage: &str, verdict: &str) -> Step {
        Step { stage: stage.into(), verdict: verdict.into(), micros: 5, ..Step::default() }
    }

    #[test]
    fn session_steps_join_the_message_and_events_follow_it() {
        install();
        let summary = Summary {
            source: "smtp",
            sender: "a@x",
            recipients: &["b@y".into()],
            head: b"Subject: hi\r\n\r\n",
            size: 9,
        };
        stage("sess-t1", step("connect", "none"));
        stage("sess-t1", step("mail_from", "none"));
        stage("msg-t1", step("data", "accept"));
        received("msg-t1", Some("sess-t1"), &summary);
        event("msg-t1", "forwarded", "forward to c@z queued", "Q1");
        event("msg-t1", "sent", "forward to c@z sent", "Q1");
        let t = find("msg-t1").unwrap();
        let stages: Vec<&str> = t.steps.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(stages, ["connect", "mail_from", "data"]);
        assert_eq!((t.subject.as_str(), t.outcome.as_str()), ("hi", "sent"));
        assert_eq!(find("Q1").unwrap().id, "msg-t1");
        // The next message of the session keeps the connection step only.
        stage("msg-t2", step("data", "reject 550 5.7.1 no"));
        refused("msg-t2", Some("sess-t1"), &summary, "rejected");
        let stages: Vec<String> = find("msg-t2").unwrap().steps.into_iter().map(|s| s.stage).collect();
        assert_eq!(stages, ["connect", "data"]);
        assert!(stage_stats().iter().any(|(s, st)| s == "data" && st.calls >= 2));
    }

    #[test]
    fn the_recent_list_is_bounded() {
        install();
        let summary = Summary { source: "smtp", sender: "a@x", recipients: &[], head: b"", size: 1 };
        for n in 0..MAX_RECENT + 50 {
            received(&format!("bound-{n}"), None, &summary);
        }
        assert!(find("bound-0").is_none());
        assert!(find(&format!("bound-{}", MAX_RECENT + 49)).is_some());
        let (shown, matched) = recent("bound-", 10);
        assert_eq!(shown.len(), 10);
        assert!(matched <= MAX_RECENT);
        assert_eq!(shown[0].id, format!("bound-{}", MAX_RECENT + 49));
    }
}
