//! The session threads: where the SMTP listeners and their sessions run.
//!
//! Sessions do not run on the daemon's multi-thread runtime but on current-thread runtimes of
//! their own, one per thread (`smtp-0`, `smtp-1`, ...), each accepting on the same listening
//! sockets. A session's task then stays on the thread that accepted it: no work stealing, no
//! waking of a second worker to take over a woken task, no cross-thread queues (the
//! measurements behind this are in bench/results/findings.md).
//! Everything else (pollers, outbound, the script watcher, signals, metrics) stays on the main
//! runtime. A hook that may block, or outruns its inline leash, or may parse the body of a
//! large message, moves to the blocking pool while its session waits
//! ([`crate::script::ScriptSet::call_awaited`]). What still runs on the thread and the leash
//! cannot stop: a native call inside a hook (header parsing, string work on a message of at
//! most [`crate::script::set::INLINE_BODY_LIMIT`] bytes), TLS handshakes, and a log line when
//! the log writer is over a megabyte behind.

use std::io;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The running session threads.
pub struct SessionThreads {
    handles: Vec<Handle>,
    threads: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl SessionThreads {
    /// Starts `count` (at least one) session threads, each with an idle current-thread runtime.
    pub fn start(count: usize) -> io::Result<SessionThreads> {
        let mut started = SessionThreads { handles: Vec::new(), threads: Vec::new() };
        for n in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            started.handles.push(runtime.handle().clone());
            let thread = std::thread::Builder::new().name(format!("smtp-{n}")).spawn(move || {
                // Runs the tasks spawned onto this runtime until told to stop; dropping the
                // runtime then drops the sessions still open.
                let _ = runtime.block_on(stopped);
            })?;
            started.threads.push((stop, thread));
        }
        Ok(started)
    }

    /// One handle per thread: spawn a listener's accept loop on each.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Stops every thread and waits for it; sessions still open are dropped (their messages
    /// were not acknowledged). Blocks: call it from a thread that may.
    pub fn stop(self) {
        for (stop, thread) in self.threads {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// How many session threads by default: one per two cores, at least one. The sessions share
/// the machine with the spool writer, the delivery threads and the pollers, and every session
/// thread wakes for each new connection (bench/results/findings.md).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().div_ceil(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_on_the_named_threads_and_stop_drops_them() {
        let threads = SessionThreads::start(2).unwrap();
        let names: Vec<String> = threads
            .handles()
            .iter()
            .map(|h| {
                let task = h.spawn(async { std::thread::current().name().map(str::to_string) });
                block_on(task).unwrap().unwrap()
            })
            .collect();
        assert_eq!(names, ["smtp-0", "smtp-1"]);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        threads.handles()[0].spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        threads.stop();
        assert!(rx.recv().is_err(), "the pending task was dropped with its runtime");
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }
}
