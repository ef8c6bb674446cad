//! The log line: tracing-subscriber's `Full` format without ANSI colours, byte for byte, put
//! together with `push_str` instead of the formatting machinery.
//!
//! Two lines a message (accepted, delivered) cost 28 k instructions through the stock
//! formatter — an eighth of all the daemon spent on a message (callgrind, tenth pass in
//! bench/results/findings.md): styles painted even with colours off, the timestamp's calendar
//! worked out again for every line, a message written through a character-by-character
//! escaping writer. Here the date and time up to the second are kept per thread, a message
//! without control characters is copied as it is, and field names are written directly.
//! A terminal still gets the stock, coloured format (see `main.rs`); so do records that come
//! through the `log` crate, whose metadata the stock format knows how to restore.
//!
//! ```text
//! 2026-11-29T14:40:02.610463Z  INFO session{id=6616B44B8937E000 remote=127.0.0.1:58654}:message{id=6616B44B89BA8004}: mailflow::smtp::data: message accepted sender=a@example.org size=4377 outcome="queued"
//! ```

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// The event format (see the module documentation).
#[derive(Debug, Default)]
pub struct LineFormat {
    /// For the records of the `log` crate.
    stock: format::Format<format::Full>,
}

/// The span and event field format: `name=value` separated by spaces, the `message` field
/// first and without its name, as tracing-subscriber's `DefaultFields`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LineFields;

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() == "log" || writer.has_ansi_escapes() {
            return self.stock.format_event(ctx, writer, event);
        }
        write_timestamp(&mut writer, SystemTime::now())?;
        writer.write_str(match *meta.level() {
            Level::TRACE => "TRACE ",
            Level::DEBUG => "DEBUG ",
            Level::INFO => " INFO ",
            Level::WARN => " WARN ",
            Level::ERROR => "ERROR ",
        })?;
        if let Some(scope) = ctx.event_scope() {
            let mut seen = false;
            for span in scope.from_root() {
                writer.write_str(span.metadata().name())?;
                seen = true;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        writer.write_char('{')?;
                        writer.write_str(fields)?;
                        writer.write_char('}')?;
                    }
                }
                writer.write_char(':')?;
            }
            if seen {
                writer.write_char(' ')?;
            }
        }
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut visitor = LineVisitor::new(&mut writer);
        event.record(&mut visitor);
        visitor.result?;
        writer.write_char('\n')
    }
}

impl<'writer> FormatFields<'writer> for LineFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = LineVisitor::new(&mut writer);
        fields.record(&mut visitor);
        visitor.result
    }
}

/// The daemon's log output: the threads that log (sessions, delivery) hand their lines to a
/// writer thread and go on; it writes whatever has gathered with one `write(2)` to stderr.
///
/// Appending a line to a log file cost the session a `write(2)` (2.3 % of its CPU, tenth
/// pass) and a lock shared with the delivery threads. The price: lines not yet written when
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

thread_local! {
    /// The unix second last formatted on this thread, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-11-29T14:40:02.610463Z ` (UTC, microseconds, a space after it).
fn write_timestamp(out: &mut dyn fmt::Write, now: SystemTime) -> fmt::Result {
    let Ok(since) = now.duration_since(UNIX_EPOCH) else {
        return out.write_str("<unknown time> ");
    };
    let secs = since.as_secs();
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let days = (secs / 86_400) as i64;
            let rem = secs % 86_400;
            let (year, month, day) = crate::message::date::civil_from_days(days);
            cached.1.clear();
            let _ = write!(
                cached.1,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                rem / 3600,
                (rem % 3600) / 60,
                rem % 60
            );
            cached.0 = secs;
        }
        out.write_str(&cached.1)
    })?;
    let micros = since.subsec_micros();
    let mut digits = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'Z', b' '];
    let mut n = micros;
    for slot in digits[1..7].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)
}

/// Writes fields as `DefaultFields` does.
struct LineVisitor<'a> {
    out: &'a mut dyn fmt::Write,
    empty: bool,
    result: fmt::Result,
}

impl<'a> LineVisitor<'a> {
    fn new(out: &'a mut dyn fmt::Write) -> LineVisitor<'a> {
        LineVisitor { out, empty: true, result: Ok(()) }
    }

    fn pad(&mut self) -> fmt::Result {
        if self.empty {
            self.empty = false;
            Ok(())
        } else {
            self.out.write_char(' ')
        }
    }

    /// `name=` then whatever `value` writes; `log.*` fields (a `log` record's metadata) are
    /// left out, and a raw identifier loses its `r#`.
    fn named(&mut self, field: &Field, value: impl FnOnce(&mut dyn fmt::Write) -> fmt::Result) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = self.pad().and_then(|()| {
            self.out.write_str(name)?;
            self.out.write_char('=')?;
            value(&mut *self.out)
        });
    }

    fn message(&mut self, text: &str) {
        if self.result.is_err() {
            return;
        }
        self.result = self.pad().and_then(|()| write_escaped(&mut *self.out, text));
    }
}

impl Visit for LineVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message(value);
        } else {
            self.named(field, |out| write!(out, "{value:?}"));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.named(field, |out| write!(out, "{value}"));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.named(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.named(field, |out| out.write_str(if value { "true" } else { "false" }));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = String::new();
        let _ = write_escaped(&mut text, &value.to_string());
        if let Some(source) = value.source() {
            text.push(' ');
            text.push_str(field.name());
            text.push_str(".sources=[");
            let mut next = Some(source);
            let mut first = true;
            while let Some(error) = next {
                if !first {
                    text.push_str(", ");
                }
                first = false;
                let _ = write_escaped(&mut text, &error.to_string());
                next = error.source();
            }
            text.push(']');
        }
        if field.name() == "message" {
            self.message(&text);
        } else {
            self.named(field, |out| out.write_str(&text));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let mut text = String::new();
            let _ = write!(text, "{value:?}");
            self.message(&text);
        } else {
            self.named(field, |out| write!(out, "{value:?}"));
        }
    }
}

/// `text` with the characters that could drive a terminal written as escapes (ESC, BEL, BS,
/// FF, DEL and the C1 controls), as the stock format does for messages and errors.
fn write_escaped(out: &mut dyn fmt::Write, text: &str) -> fmt::Result {
    // 0xC2 leads the UTF-8 form of every C1 control (U+0080–U+009F).
    if !text.bytes().any(|b| matches!(b, 0x1b | 0x07 | 0x08 | 0x0c | 0x7f | 0xc2)) {
        return out.write_str(text);
    }
    for ch in text.chars() {
        match ch {
            '\x1b' => out.write_str("\\x1b")?,
            '\x07' => out.write_str("\\x07")?,
            '\x08' => out.write_str("\\x08")?,
            '\x0c' => out.write_str("\\x0c")?,
            '\x7f' => out.write_str("\\x7f")?,
            c if ('\u{80}'..='\u{9f}').contains(&c) => write!(out, "\\u{{{:x}}}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer \x1b[31mfailure")]
    struct Outer(#[source] std::io::Error);

    /// The same events, in spans, through both formats.
    fn emit() {
        let session = tracing::info_span!("session", id = "6616B44B8937E000", remote = %"127.0.0.1:58654");
        let _s = session.enter();
        tracing::info!("mailflow running");
        let message = tracing::info_span!("message", id = %"6616B44B89BA8004");
        let _m = message.enter();
        tracing::info!(sender = %"a@example.org", recipients = %"b@example.org,c@example.org", size = 4377u64, outcome = "queued", "message accepted");
        tracing::warn!(hops = 31i64, tls = true, "mail loop suspected");
        tracing::error!(error = %std::io::Error::other("disk full"), "spool write failed: answering 451");
        let failure = Outer(std::io::Error::other("inner \u{9b} cause"));
        tracing::error!(error = &failure as &(dyn std::error::Error + 'static), "cannot deliver");
        tracing::info!(target: "mailflow::script", file = %"10-rules.rhai", stage = %"data", r#type = "x", "log from a script: \x07bell \x7f del \u{85} nel \u{a9} ok\nnext line {}", 7);
        tracing::info!(list = ?vec!["a", "b"], quoted = "say \"hi\"\t", "debug values");
        drop(_m);
        tracing::info!(empty = "", "left the message span");
    }

    fn lines(subscriber: impl Subscriber + Send + Sync + 'static, buffer: &Buffer) -> Vec<String> {
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        // Timestamps differ between the two runs: compare what follows them.
        text.lines().map(|line| line[27..].to_string()).collect()
    }

    #[test]
    fn lines_match_the_stock_format_byte_for_byte() {
        let stock_buffer = Buffer::default();
        let writer = stock_buffer.clone();
        let stock = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        let ours_buffer = Buffer::default();
        let writer = ours_buffer.clone();
        let ours = tracing_subscriber::fmt()
            .with_ansi(false)
            .event_format(LineFormat::default())
            .fmt_fields(LineFields)
            .with_writer(move || writer.clone())
            .finish();
        let expected = lines(stock, &stock_buffer);
        assert_eq!(expected.len(), 9, "{expected:#?}");
        assert_eq!(lines(ours, &ours_buffer), expected);
    }

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

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let at = |secs: u64, micros: u64| {
            let mut out = String::new();
            write_timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)).unwrap();
            out
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z ");
        assert_eq!(at(1_700_000_000, 123_456), "2023-11-14T22:13:20.123456Z ");
        assert_eq!(at(1_700_000_000, 7), "2023-11-14T22:13:20.000007Z ", "same second, cached");
        assert_eq!(at(951_782_400, 999_999), "2000-02-29T00:00:00.999999Z ");
        assert_eq!(at(4_102_444_799, 1), "2099-12-31T23:59:59.000001Z ");
    }
}
