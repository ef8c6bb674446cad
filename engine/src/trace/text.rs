//! A trace as text, for `mailflow trace ID` (the status page renders its own HTML).

use std::fmt::Write as _;

use super::Trace;

/// Event kinds: what [`super::event`] is called with.
pub const KINDS: [&str; 9] =
    ["delivered", "queued", "forwarded", "suppressed", "sent", "deferred", "failed", "bounced", "error"];

/// `YYYY-MM-DD HH:MM:SS.mmm` UTC of unix milliseconds.
pub fn time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}", rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
}

/// Offset of `at` from the trace's start, as `+12.3ms`.
pub fn offset(trace: &Trace, at: u64) -> String {
    format!("+{}ms", at.saturating_sub(trace.received_at))
}

/// The whole trace, one fact per line. Control characters in mail-supplied text are shown as
/// `?` so a subject cannot move the terminal's cursor.
pub fn render(trace: &Trace) -> String {
    let clean = |s: &str| s.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>();
    let mut out = String::new();
    let _ = writeln!(out, "id:          {}", clean(&trace.id));
    let _ = writeln!(out, "received:    {} UTC ({})", time(trace.received_at), clean(&trace.source));
    let _ = writeln!(out, "message-id:  {}", clean(&trace.message_id));
    let _ = writeln!(out, "from:        <{}>", clean(&trace.sender));
    let _ = writeln!(out, "to:          {}", clean(&trace.recipients.join(", ")));
    let _ = writeln!(out, "subject:     {}", clean(&trace.subject));
    let _ = writeln!(out, "size:        {} bytes", trace.size);
    let _ = writeln!(out, "outcome:     {}", clean(&trace.outcome));
    let _ = writeln!(out, "stages:");
    if trace.steps.is_empty() {
        let _ = writeln!(out, "  (no script stage ran)");
    }
    for step in &trace.steps {
        let by = step.decided_by.as_deref().map(|f| format!(" by {}", clean(f))).unwrap_or_default();
        let _ = writeln!(out, "  {:<10} {}{}  ({} µs)", step.stage, clean(&step.verdict), by, step.micros);
        if let Some(error) = &step.error {
            let _ = writeln!(out, "             error: {}", clean(error));
        }
        for action in &step.actions {
            let _ = writeln!(out, "             action: {}", clean(action));
        }
    }
    let _ = writeln!(out, "events:");
    if trace.events.is_empty() {
        let _ = writeln!(out, "  (none yet)");
    }
    for event in &trace.events {
        let queue = if event.queue_id.is_empty() { String::new() } else { format!(" [{}]", clean(&event.queue_id)) };
        let _ = writeln!(out, "  {:>9}  {:<10} {}{}", offset(trace, event.at), event.kind, clean(&event.detail), queue);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(time(0), "1970-01-01 00:00:00.000");
        assert_eq!(time(1_700_000_000_123), "2023-11-14 22:13:20.123");
    }

    #[test]
    fn control_characters_do_not_reach_the_terminal() {
        let trace = Trace { subject: "a\u{1b}[2Jb".into(), ..Trace::default() };
        assert!(render(&trace).contains("subject:     a?[2Jb"));
    }
}
