//! Where a hook call runs: inline on the caller's runtime worker, or on a thread of its own.
//!
//! A pure-rhai hook (rules over `ctx` and `msg`) is a few microseconds of CPU; handing it to
//! another thread (`block_in_place`) costs more than the hook itself — thread hand-offs and one
//! blocking-pool thread per concurrent session (measured: 151 threads, and 37 % of throughput
//! with 20 rules at 20 sessions; bench/results/findings.md). So a pure hook first runs inline on
//! a short leash ([`INLINE_LEASH`]): if it has not finished by then, it is stopped and run again
//! from the start on a thread of its own, under its full `timeout_ms`. A runaway hook thus holds
//! a runtime worker for at most the leash, and the other sessions go on. Running it again is
//! safe because a pure hook has no effects outside its call (actions are collected, not done).
//! Hooks that may block — a plugin call (`kv::`, `http::`, `exec::`: disk or network) or an
//! imported module (see [`super::analysis`]) — always get their own thread.

use std::cell::Cell;
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};

/// How long a hook may run inline before it moves to a thread of its own.
pub const INLINE_LEASH: Duration = Duration::from_millis(5);

thread_local! {
    /// Set while [`on_blocking_thread`] runs: this thread may block, hooks need no leash.
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with hook calls made directly under their full timeout: for a thread of its own
/// that may block (the IMAP poller's hook thread), where a leash would only make a slow hook
/// run twice. Tokio cannot tell such a thread from a runtime worker.
pub fn on_blocking_thread<R>(f: impl FnOnce() -> R) -> R {
    let before = MAY_BLOCK.replace(true);
    let result = f();
    MAY_BLOCK.set(before);
    result
}

/// Runs a hook call. `inline(leash)` runs it with a deadline at `leash` and returns `None` when
/// it was stopped there; `threaded()` runs it whole. Outside a multi-thread runtime
/// (`mailflow test`, unit tests) and within [`on_blocking_thread`], `threaded` simply runs on
/// the caller.
pub fn run<R>(may_block: bool, inline: impl FnOnce(Instant) -> Option<R>, threaded: impl FnOnce() -> R) -> R {
    let multi_thread = Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if !multi_thread || MAY_BLOCK.get() {
        return threaded();
    }
    if let Some(result) = leashed(may_block, inline) {
        return result;
    }
    tokio::task::block_in_place(threaded)
}

/// The hook inline on the leash, unless it may block; `None` when it did not finish there.
fn leashed<R>(may_block: bool, inline: impl FnOnce(Instant) -> Option<R>) -> Option<R> {
    if may_block {
        return None;
    }
    let result = inline(Instant::now() + INLINE_LEASH);
    if result.is_none() {
        tracing::debug!(
            leash_ms = INLINE_LEASH.as_millis() as u64,
            "hook outran its inline leash; running it on its own thread"
        );
    }
    result
}

/// [`run`] for a caller that can await (an SMTP session, on any runtime flavour): the pure hook
/// inline on the leash first, and where that is not possible or ran out, `threaded` on a
/// blocking-pool thread while the session's task waits — its thread goes on with the other
/// sessions. A session thread is a current-thread runtime (see `smtp/runtime.rs`),
/// where `block_in_place` does not exist.
/// `threaded` makes the call to send away (it owns what it needs), only when one is needed.
pub async fn run_async<R: Send + 'static, T: FnOnce() -> R + Send + 'static>(
    may_block: bool,
    inline: impl FnOnce(Instant) -> Option<R>,
    threaded: impl FnOnce() -> T,
) -> R {
    if let Some(result) = leashed(may_block, inline) {
        return result;
    }
    match tokio::task::spawn_blocking(threaded()).await {
        Ok(result) => result,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Cancelled: only when the runtime shuts down, which drops this task too.
            Err(_) => std::future::pending().await,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_first_then_threaded_when_stopped() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
        runtime.block_on(async {
            assert_eq!(run(false, |_| Some("inline"), || "threaded"), "inline");
            assert_eq!(run(false, |_| None, || "threaded"), "threaded");
            assert_eq!(run(true, |_| Some("inline"), || "threaded"), "threaded");
            assert_eq!(on_blocking_thread(|| run(false, |_| Some("inline"), || "threaded")), "threaded");
            assert_eq!(run(false, |_| Some("inline"), || "threaded"), "inline");
        });
        assert_eq!(run(false, |_| Some("inline"), || "threaded"), "threaded");
    }

    #[test]
    fn async_inline_first_then_on_a_blocking_thread() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let caller = std::thread::current().id();
        runtime.block_on(async {
            let on = |may_block, inline: Option<()>| {
                run_async(
                    may_block,
                    move |_| inline.map(|_| std::thread::current().id()),
                    || || std::thread::current().id(),
                )
            };
            assert_eq!(on(false, Some(())).await, caller, "a pure hook that finished runs inline");
            assert_ne!(on(false, None).await, caller, "past the leash: another thread");
            assert_ne!(on(true, Some(())).await, caller, "a hook that may block: another thread");
        });
    }
}
