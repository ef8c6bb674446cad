//! `[log] format = "json"`: one JSON object per line for log shippers, with the fields of the
//! spans an event happened in flattened next to its own.
//!
//! Input: tracing spans and events. Output: lines into any `MakeWriter` (the daemon's
//! [`super::LogSink`]). Keys: `timestamp` (UTC, microseconds), `level`, `target`, `span` (the
//! span names, outermost first, `:`-separated), `message`, then span fields (outermost first)
//! and the event's fields. The `session` span's `id` becomes `session_id` and the `message`
//! span's `id` becomes `queue_id`, so one key follows a message through SMTP, delivery and the
//! outbound queue. Each key appears once: an inner span's or the event's value wins. A field
//! named like one of the first five keys is written as `field.NAME`.
//! Security: values are escaped JSON strings, so a header logged from a message cannot start
//! a line of its own or forge a key.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The layer that writes JSON lines (see the module documentation).
pub struct JsonLayer<W> {
    writer: W,
}

impl<W> JsonLayer<W> {
    pub fn new(writer: W) -> JsonLayer<W> {
        JsonLayer { writer }
    }
}

/// One field: its key and its value, already JSON.
type Pair = (Cow<'static, str>, String);

/// A span's fields as JSON, kept in the span's extensions.
struct SpanFields(Vec<Pair>);

/// Keys the line itself writes.
const RESERVED: [&str; 5] = ["timestamp", "level", "target", "span", "message"];

thread_local! {
    /// The line being built, reused between events of this thread.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut visitor = JsonVisitor::new(span.name());
        attrs.record(&mut visitor);
        span.extensions_mut().insert(SpanFields(visitor.pairs));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut visitor = JsonVisitor::new(span.name());
        values.record(&mut visitor);
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<SpanFields>() {
            Some(fields) => fields.0.extend(visitor.pairs),
            None => extensions.insert(SpanFields(visitor.pairs)),
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut visitor = JsonVisitor::new("");
        event.record(&mut visitor);
        let meta = event.metadata();
        let mut names = String::new();
        let mut pairs: Vec<Pair> = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if !names.is_empty() {
                    names.push(':');
                }
                names.push_str(span.name());
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    pairs.extend(fields.0.iter().cloned());
                }
            }
        }
        pairs.append(&mut visitor.pairs);
        let target = visitor.log_target.as_deref().unwrap_or(meta.target());
        let write = |line: &mut String| {
            line.clear();
            let _ = format_line(line, SystemTime::now(), meta.level(), target, &names, &visitor.message, &pairs);
            let _ = self.writer.make_writer().write_all(line.as_bytes());
        };
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => write(&mut line),
            Err(_) => write(&mut String::new()),
        });
    }
}

fn format_line(
    line: &mut String,
    now: SystemTime,
    level: &Level,
    target: &str,
    spans: &str,
    message: &str,
    pairs: &[Pair],
) -> fmt::Result {
    line.push_str("{\"timestamp\":\"");
    super::write_timestamp(line, now)?;
    line.pop(); // the space the text format puts after it
    line.push_str("\",\"level\":\"");
    line.push_str(level.as_str());
    line.push_str("\",\"target\":");
    push_string(line, target);
    if !spans.is_empty() {
        line.push_str(",\"span\":");
        push_string(line, spans);
    }
    line.push_str(",\"message\":");
    push_string(line, message);
    for (i, (key, value)) in pairs.iter().enumerate() {
        if pairs[i + 1..].iter().any(|(later, _)| later == key) {
            continue;
        }
        line.push(',');
        if RESERVED.contains(&key.as_ref()) {
            push_string(line, &format!("field.{key}"));
        } else {
            push_string(line, key);
        }
        line.push(':');
        line.push_str(value);
    }
    line.push_str("}\n");
    Ok(())
}

/// `text` as a JSON string, quotes included.
fn push_string(out: &mut String, text: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&text[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

/// Collects fields as JSON values; in an event, the message apart.
struct JsonVisitor {
    span: &'static str,
    pairs: Vec<Pair>,
    message: String,
    /// A `log` crate record's own target (its event's target is "log").
    log_target: Option<String>,
}

impl JsonVisitor {
    fn new(span: &'static str) -> JsonVisitor {
        JsonVisitor { span, pairs: Vec::new(), message: String::new(), log_target: None }
    }

    /// The key of a field: the two ids that name a session and a message get telling names.
    fn key(&self, field: &Field) -> Cow<'static, str> {
        let name = field.name();
        match (self.span, name) {
            ("session", "id") => Cow::Borrowed("session_id"),
            ("message", "id") => Cow::Borrowed("queue_id"),
            _ => Cow::Borrowed(name.strip_prefix("r#").unwrap_or(name)),
        }
    }

    fn push(&mut self, field: &Field, value: String) {
        let key = self.key(field);
        self.pairs.push((key, value));
    }

    fn text(&mut self, field: &Field, text: &str) {
        match field.name() {
            "message" if self.span.is_empty() => self.message = text.to_string(),
            "log.target" => self.log_target = Some(text.to_string()),
            name if name.starts_with("log.") => {}
            _ => {
                let mut value = String::with_capacity(text.len() + 2);
                push_string(&mut value, text);
                self.push(field, value);
            }
        }
    }
}

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.text(field, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(field, value.to_string());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, value.to_string());
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.push(field, value.to_string());
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.push(field, value.to_string());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.push(field, value.to_string());
        } else {
            self.text(field, &value.to_string());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, value.to_string());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut next = value.source();
        while let Some(error) = next {
            text.push_str(": ");
            text.push_str(&error.to_string());
            next = error.source();
        }
        self.text(field, &text);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.text(field, &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logline::tests::Buffer;
    use tracing_subscriber::layer::SubscriberExt as _;

    fn lines(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(JsonLayer::new(move || writer.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert!(text.ends_with('\n'));
        text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))).collect()
    }

    #[test]
    fn every_line_is_one_object_with_the_span_fields_flattened() {
        let lines = lines(|| {
            let session = tracing::info_span!("session", id = "6616B44B8937E000", remote = %"127.0.0.1:58654");
            let _s = session.enter();
            let message = tracing::info_span!("message", id = %"6616B44B89BA8004");
            let _m = message.enter();
            tracing::info!(sender = %"a@example.org", size = 4377u64, ok = true, "message accepted");
            tracing::warn!(error = %std::io::Error::other("disk\nfull \"now\""), target = "x", "spool \x1b write failed");
            drop(_m);
            let poller = tracing::info_span!("poller", account = %"gmail", protocol = "imap");
            let _p = poller.enter();
            tracing::error!(account = "override", remote = "inner", "poll failed");
        });
        assert_eq!(lines.len(), 3);
        let first = &lines[0];
        assert_eq!(first["level"], "INFO");
        assert_eq!(first["message"], "message accepted");
        assert_eq!(first["target"], "mailflow::logline::json::tests");
        assert_eq!(first["span"], "session:message");
        assert_eq!(first["session_id"], "6616B44B8937E000");
        assert_eq!(first["remote"], "127.0.0.1:58654");
        assert_eq!(first["queue_id"], "6616B44B89BA8004");
        assert_eq!(first["sender"], "a@example.org");
        assert_eq!(first["size"], 4377);
        assert_eq!(first["ok"], true);
        let stamp = first["timestamp"].as_str().unwrap();
        assert!(stamp.len() == 27 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{stamp}");
        let second = &lines[1];
        assert_eq!(second["error"], "disk\nfull \"now\"");
        assert_eq!(second["message"], "spool \x1b write failed");
        assert_eq!(second["field.target"], "x");
        assert_eq!(second["queue_id"], "6616B44B89BA8004");
        let third = &lines[2];
        assert_eq!(third["span"], "session:poller");
        assert_eq!(third["account"], "override", "the event's value wins");
        assert_eq!(third["remote"], "inner");
        assert_eq!(third["protocol"], "imap");
        assert!(third.get("queue_id").is_none(), "left the message span");
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = String::new();
        push_string(&mut out, "a\"b\\c\nd\u{1}e\u{7f}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001e\\u007fé\"");
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), "a\"b\\c\nd\u{1}e\u{7f}é");
    }
}
