//! The daemon's log writer thread: loggers hand it formatted lines and go on; it writes what
//! has gathered with one `write(2)`. Input: lines from [`super::LineFormat`]. Output: stderr
//! (or any writer, in tests). Limits: a megabyte of lines waiting makes the loggers wait.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tracing_subscriber::fmt::MakeWriter;

/// The daemon's log output: the threads that log (sessions, delivery) hand their lines to a
/// writer thread and go on; it writes whatever has gathered with one `write(2)` to stderr.
///
/// Why: a `write(2)` per line, under a lock shared with the delivery threads, was a visible
/// part of a session's CPU (bench/results/findings.md). The price: lines not yet written when
/// the process is killed are lost (`flush` writes the rest on a normal exit) — except where an
/// effect is recorded as done: the pollers' journal calls [`write_pending`] first, so a
/// message whose hook is journaled has its `log` lines in the log too. A writer that falls a
/// megabyte behind makes the loggers wait, so memory stays bounded.
#[derive(Clone)]
pub struct LogSink {
    shared: Arc<Sink>,
}

struct Sink {
    /// Held while lines are taken and written, by the writer thread or [`write_pending`]:
    /// lines reach the output in the order they were logged.
    output: Mutex<Box<dyn std::io::Write + Send>>,
    pending: Mutex<Pending>,
    /// The writer waits here for lines.
    lines: Condvar,
    /// Loggers wait here while the writer is a megabyte behind; `flush` waits here too.
    written: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The writer is asleep on `lines` (a notification is needed).
    asleep: bool,
    /// The writer holds a batch it has not finished writing.
    writing: bool,
    closed: bool,
}

/// Lines waiting beyond this make the loggers wait for the writer.
const SINK_LIMIT: usize = 1 << 20;
/// How long the writer lets lines gather after a write.
const GATHER_LINES: std::time::Duration = std::time::Duration::from_millis(1);

impl LogSink {
    /// Starts the writer thread (falls back to writing directly if it cannot start).
    pub fn stderr() -> LogSink {
        LogSink::to(Box::new(std::io::stderr()))
    }

    fn to(out: Box<dyn std::io::Write + Send>) -> LogSink {
        let shared = Arc::new(Sink {
            output: Mutex::new(out),
            pending: Mutex::default(),
            lines: Condvar::new(),
            written: Condvar::new(),
        });
        let sink = LogSink { shared: shared.clone() };
        if std::thread::Builder::new().name("log-writer".into()).spawn(move || write_lines(&shared)).is_err() {
            sink.lock().closed = true;
        }
        sink
    }

    /// Makes this the sink [`write_pending`] writes out.
    pub fn install(&self) {
        let _ = INSTALLED.set(self.clone());
    }

    /// Writes the lines waiting in the sink now, from the calling thread.
    fn write_now(&self) {
        let mut output = self.shared.output.lock().unwrap_or_else(|e| e.into_inner());
        let bytes = std::mem::take(&mut self.lock().bytes);
        if !bytes.is_empty() {
            let _ = output.write_all(&bytes);
        }
        drop(output);
        self.shared.written.notify_all();
    }

    /// Writes every line logged so far and stops the writer; later lines go straight to stderr.
    pub fn flush(&self) {
        let mut pending = self.lock();
        pending.closed = true;
        self.shared.lines.notify_one();
        while !pending.bytes.is_empty() || pending.writing {
            pending = self.shared.written.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        drop(pending);
        // A `write_pending` may still be writing what it took.
        drop(self.shared.output.lock());
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.shared.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static INSTALLED: std::sync::OnceLock<LogSink> = std::sync::OnceLock::new();

/// Writes out the log lines logged so far by any thread, before this returns. For a record
/// that says an effect is done (a poller's journal): the hook's `log` lines must not be lost
/// in a crash that keeps the record. Nothing to do when no [`LogSink`] is installed.
pub fn write_pending() {
    if let Some(sink) = INSTALLED.get() {
        let pending = sink.lock();
        // Lines the writer thread has taken but not yet written count too: `write_now` waits
        // for them (the writer holds the output lock from taking them until they are written).
        let waiting = !pending.bytes.is_empty() || pending.writing;
        drop(pending);
        if waiting {
            sink.write_now();
        }
    }
}

fn write_lines(sink: &Sink) {
    let mut spare = Vec::new();
    let mut pending = sink.pending.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if pending.bytes.is_empty() {
            if pending.closed {
                sink.written.notify_all();
                return;
            }
            pending.asleep = true;
            pending = sink.lines.wait(pending).unwrap_or_else(|e| e.into_inner());
            pending.asleep = false;
            continue;
        }
        drop(pending);
        let mut output = sink.output.lock().unwrap_or_else(|e| e.into_inner());
        pending = sink.pending.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::swap(&mut pending.bytes, &mut spare);
        pending.writing = true;
        drop(pending);
        let _ = output.write_all(&spare);
        drop(output);
        spare.clear();
        pending = sink.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.writing = false;
        sink.written.notify_all();
        if !pending.closed {
            // Let the next lines gather: under load one write per millisecond, and the
            // loggers do not have to wake this thread for each line.
            drop(pending);
            std::thread::sleep(GATHER_LINES);
            pending = sink.pending.lock().unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// One event's bytes on their way into the sink.
pub struct SinkWriter<'a> {
    sink: &'a LogSink,
}

impl std::io::Write for SinkWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut pending = self.sink.lock();
        if pending.closed {
            drop(pending);
            return std::io::stderr().write(bytes);
        }
        while pending.bytes.len() > SINK_LIMIT && !pending.closed {
            pending = self.sink.shared.written.wait(pending).unwrap_or_else(|e| e.into_inner());
        }
        if pending.closed {
            // Closed while this waited: the writer may be gone.
            drop(pending);
            return std::io::stderr().write(bytes);
        }
        pending.bytes.extend_from_slice(bytes);
        if pending.asleep {
            pending.asleep = false;
            self.sink.shared.lines.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = SinkWriter<'a>;

    fn make_writer(&'a self) -> SinkWriter<'a> {
        SinkWriter { sink: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logline::tests::Buffer;

    #[test]
    fn the_sink_writes_every_line_whole_and_in_order_and_flush_waits_for_them() {
        let written = Buffer::default();
        let sink = LogSink::to(Box::new(written.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        // Long enough lines that the megabyte limit is reached now and then.
                        let line = format!("thread {t} line {i} {}\n", "x".repeat(i % 700));
                        std::io::Write::write_all(&mut sink.make_writer(), line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        sink.flush();
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        for t in 0..4 {
            let numbers: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("thread {t} line ")))
                .map(|rest| {
                    let (n, xs) = rest.split_once(' ').unwrap();
                    let n: usize = n.parse().unwrap();
                    assert_eq!(xs.len(), n % 700, "line {n} of thread {t} arrived whole");
                    n
                })
                .collect();
            assert_eq!(numbers, (0..2_000).collect::<Vec<_>>(), "thread {t}: every line, in order");
        }
        assert_eq!(text.lines().count(), 8_000);
        // Lines taken out by `write_now` keep their place in the order.
        let sink = LogSink::to(Box::new(written.clone()));
        written.0.lock().unwrap().clear();
        for i in 0..1_000 {
            std::io::Write::write_all(&mut sink.make_writer(), format!("{i}\n").as_bytes()).unwrap();
            if i % 7 == 0 {
                sink.write_now();
                let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
                assert_eq!(text.lines().last(), Some(i.to_string().as_str()), "line {i} written at once");
            }
        }
        sink.flush();
        let text = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().map(|l| l.parse().unwrap()).collect::<Vec<usize>>(), (0..1_000).collect::<Vec<_>>());
        // After a flush, lines are not queued any more.
        std::io::Write::write_all(&mut sink.make_writer(), b"").unwrap();
        assert!(sink.lock().closed && sink.lock().bytes.is_empty());
    }
}
