//! The log line: tracing-subscriber's `Full` format without ANSI colours, byte for byte, put
//! together with `push_str` instead of the formatting machinery.
//!
//! Why: the stock formatter was an eighth of the daemon's work per message (measured in
//! bench/results/findings.md). Here the date and time up to the second are kept per thread, a
//! message without control characters is copied as it is, and field names are written
//! directly.
//! A terminal still gets the stock, coloured format (see `main.rs`); so do records that come
//! through the `log` crate, whose metadata the stock format knows how to restore.
//!
//! The writer thread that takes the lines to stderr is [`sink`]; `[log] format = "json"`
//! writes the same events as JSON objects instead ([`json`]).
//!
//! ```text
//! 2026-11-29T14:40:02.610463Z  INFO session{id=6616B44B8937E000 remote=127.0.0.1:58654}:message{id=6616B44B89BA8004}: mailflow::smtp::data: message accepted sender=a@example.org size=4377 outcome="queued"
//! ```

mod json;
mod sink;

pub use json::JsonLayer;
pub use sink::{write_pending, LogSink, SinkWriter};

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields};
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
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A writer into memory, for tests of the format and of the sink.
    #[derive(Clone, Default)]
    pub(crate) struct Buffer(pub(crate) Arc<Mutex<Vec<u8>>>);

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
