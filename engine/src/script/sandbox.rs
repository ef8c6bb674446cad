//! Per-call state of a hook: its deadline, the file and stage it runs for, and the actions and
//! log lines it collects.
//!
//! rhai evaluates synchronously on the calling thread and its progress callback is engine-wide,
//! so the per-call facts live in a thread-local set up by [`begin`] and taken back by [`end`].
//! Script functions (`msg.set_header`, `log`, ...) append to it; the progress callback reads
//! the deadline from it.

use std::cell::RefCell;
use std::time::Instant;

use super::context::ScriptCtx;
use super::decision::{Action, LogLine, Stage};

/// What one hook call has collected so far.
#[derive(Debug)]
pub struct CallState {
    pub deadline: Instant,
    /// Where an inline call is stopped to be run again on a thread (see `runner`).
    pub leash: Option<Instant>,
    pub file: std::sync::Arc<str>,
    pub stage: Stage,
    /// The call's `ctx`, for plugins that pass the envelope on (`None` while compiling).
    pub ctx: Option<ScriptCtx>,
    pub actions: Vec<Action>,
    pub logs: Vec<LogLine>,
    /// Set by the progress callback when it stopped the script for the deadline.
    pub timed_out: bool,
    /// Set by the progress callback when it stopped the call at its leash.
    pub preempted: bool,
    /// Line of the last verdict function called (`accept()`, `reject(...)`...); 0: none.
    pub verdict_line: usize,
}

thread_local! {
    static CALL: RefCell<Option<CallState>> = const { RefCell::new(None) };
}

/// Starts a hook call on this thread.
pub fn begin(state: CallState) {
    CALL.with(|c| *c.borrow_mut() = Some(state));
}

/// Ends the hook call on this thread and returns what it collected.
pub fn end() -> Option<CallState> {
    CALL.with(|c| c.borrow_mut().take())
}

/// Runs `f` on the current call's state; `None` outside a hook call.
pub fn with<R>(f: impl FnOnce(&mut CallState) -> R) -> Option<R> {
    CALL.with(|c| c.borrow_mut().as_mut().map(f))
}

/// The stage of the current call (`Data` outside a call, e.g. when a script is evaluated by
/// hand).
pub fn stage() -> Stage {
    with(|s| s.stage).unwrap_or(Stage::Data)
}

/// Drops the actions and log lines the current call has collected (its native run failed and
/// rhai runs it again from the start).
pub fn forget_collected() {
    with(|s| {
        s.actions.clear();
        s.logs.clear();
        s.verdict_line = 0;
    });
}

/// Notes where a verdict function was called: the trace names that line.
pub fn note_verdict_line(line: usize) {
    with(|s| s.verdict_line = line);
}

/// Records an action for the current call.
pub fn push_action(action: Action) {
    with(|s| s.actions.push(action));
}

/// True once the current call is past its deadline (marks it timed out) or its leash (marks it
/// preempted).
pub fn past_deadline() -> bool {
    with(|s| {
        let now = Instant::now();
        if now >= s.deadline {
            s.timed_out = true;
        } else if s.leash.is_some_and(|leash| now >= leash) {
            s.preempted = true;
        }
        s.timed_out || s.preempted
    })
    .unwrap_or(false)
}

/// Records a `log("...")` line; the daemon writes it to its log once the call has finished
/// (a call stopped at its leash runs again, and must not log twice).
pub fn log_line(text: &str) {
    with(|s| {
        s.logs.push(LogLine { file: s.file.to_string(), text: text.to_string() });
    });
}
