//! How the pollers retry and report a broken or hostile server: the reconnection backoff, a
//! memory that says a per-message warning once per [`REPEAT_WARNING`] instead of every round,
//! and short printable excerpts of what the server sent.
//!
//! Security: a server's bytes end up in log lines only through [`excerpt`] and
//! [`short_error`]: control characters escaped, at most [`MAX_EXCERPT`] characters.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// First and longest wait between reconnection attempts.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long a warning about one message is not repeated.
pub const REPEAT_WARNING: Duration = Duration::from_secs(24 * 3600);
/// Longest excerpt of server input in a log line, in characters.
pub const MAX_EXCERPT: usize = 200;
/// Longest error text in a log line, in characters.
const MAX_ERROR: usize = 400;

/// The wait before attempt `failures + 1` after `failures` failures in a row (at least one):
/// 1 s, 2 s, 4 s, ... up to 5 minutes.
pub fn backoff_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_START.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

/// Failures in a row of one poller's connection.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Counts a failure; the wait before the next attempt (without jitter).
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        backoff_delay(self.failures)
    }

    /// A good round: the next failure waits [`BACKOFF_START`] again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Which per-message warnings were said, and when.
#[derive(Debug, Default)]
pub struct Warned {
    said: HashMap<String, Instant>,
}

impl Warned {
    /// Whether the warning about `key` should be logged at `now`: the first time, then once
    /// per [`REPEAT_WARNING`]. Forgets keys not seen for that long.
    pub fn due(&mut self, key: &str, now: Instant) -> bool {
        self.said.retain(|_, at| now.saturating_duration_since(*at) < REPEAT_WARNING);
        if self.said.contains_key(key) {
            return false;
        }
        self.said.insert(key.to_string(), now);
        true
    }
}

/// `bytes` as one short printable line: lossy UTF-8, control characters and quotes escaped,
/// at most [`MAX_EXCERPT`] characters of input, `…` when cut.
pub fn excerpt(bytes: &[u8]) -> String {
    escaped(&String::from_utf8_lossy(bytes), MAX_EXCERPT)
}

fn escaped(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).flat_map(char::escape_debug).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// An error's text fit for one log line. async-imap reports a response it cannot parse as the
/// parser's state (every input byte as a decimal number) followed by the whole input: that
/// becomes an excerpt of the input. Anything else is escaped and cut at a few hundred
/// characters.
pub fn short_error(text: &str) -> String {
    const MARK: &str = " during parsing of ";
    if let Some(at) = text.find(MARK) {
        // The input follows as a quoted, escaped string (escaped again here, to be sure).
        let input = text[at + MARK.len()..].trim_matches('"');
        let shown: String =
            input.chars().take(MAX_EXCERPT).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
        let cut = if input.chars().nth(MAX_EXCERPT).is_some() { "…" } else { "" };
        return format!("cannot parse the server's response: \"{shown}{cut}\"");
    }
    escaped(text, MAX_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes() {
        let secs: Vec<u64> = (1..=12).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(backoff_delay(0), BACKOFF_START);
        assert_eq!(backoff_delay(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn backoff_resets_after_a_good_round() {
        let mut backoff = Backoff::default();
        assert_eq!([backoff.failed(), backoff.failed(), backoff.failed()].map(|d| d.as_secs()), [1, 2, 4]);
        backoff.reset();
        assert_eq!(backoff.failed(), BACKOFF_START);
        for _ in 0..100 {
            backoff.failed();
        }
        assert_eq!(backoff.failed(), BACKOFF_MAX);
    }

    #[test]
    fn a_warning_is_said_once_per_period() {
        let mut warned = Warned::default();
        let t0 = Instant::now();
        assert!(warned.due("acct\0uidl-1", t0));
        assert!(!warned.due("acct\0uidl-1", t0 + Duration::from_secs(60)));
        assert!(warned.due("acct\0uidl-2", t0 + Duration::from_secs(60)));
        assert!(!warned.due("acct\0uidl-1", t0 + REPEAT_WARNING - Duration::from_secs(1)));
        assert!(warned.due("acct\0uidl-1", t0 + REPEAT_WARNING));
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt(b"* OK ready\r\n"), "* OK ready\\r\\n");
        assert_eq!(excerpt(b"\x1b[31m\xff\0"), "\\u{1b}[31m\u{fffd}\\0");
        let long = excerpt(&[b'x'; 20_000]);
        assert_eq!(long.chars().count(), MAX_EXCERPT + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn parse_errors_show_an_excerpt_not_a_byte_array() {
        let bytes: Vec<String> = (0..20_000).map(|_| "42".to_string()).collect();
        let raw = format!(
            "IMAP: io: Error(Error {{ input: [{}], code: Tag }}) during parsing of \"{}\"",
            bytes.join(", "),
            "* GARBAGE ".repeat(2_000)
        );
        let short = short_error(&raw);
        assert!(short.starts_with("cannot parse the server's response: \"* GARBAGE * GARBAGE"), "{short}");
        assert!(short.chars().count() < MAX_EXCERPT + 60, "{short}");
        assert!(!short.contains("42, 42"), "{short}");
        assert_eq!(short_error("I/O: connection refused"), "I/O: connection refused");
        assert_eq!(short_error("bad\nline").lines().count(), 1);
        assert!(short_error(&"y".repeat(5000)).chars().count() <= MAX_ERROR + 1);
    }
}
