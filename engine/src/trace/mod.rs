//! Decision traces: what happened to each message, for `mailflow trace ID` and the status page.
//!
//! Input: a few recorder calls on the path of a message ([`stage`] after each script stage,
//! [`received`] / [`refused`] when SMTP DATA or a poller has the message, [`event`] for each
//! delivery, queued action, suppressed reply and outbound result). Output: [`Trace`] records,
//! the last [`MAX_RECENT`] (and at most [`MAX_RECENT_BYTES`]) kept in memory, every one written
//! to the state store by a background thread and kept for `[web] trace_retention`.
//! Also here, because the same calls feed them: per-minute message counts, per-stage script
//! call statistics and the pollers' account status.
//!
//! Limits: every string in a trace is cut to [`MAX_TEXT`] bytes, a trace holds at most
//! [`MAX_STEPS`] stage steps, [`MAX_EVENTS`] events and [`MAX_RECIPIENTS`] recipients.
//! A leaf: imports nothing from the rest of the daemon. Without [`install`] every call is a no-op.
//!
//! Security: subjects, addresses and reasons come from untrusted mail; they are stored as
//! text and escaped by whoever displays them.

mod recorder;
pub mod socket;
pub mod store;
pub mod text;

pub use recorder::{
    account, accounts, event, find, install, installed, minutes, received, recent, refused, stage, stage_stats,
    AccountState, AccountStatus, Minute, Recorder, StageStats,
};

use serde::{Deserialize, Serialize};

/// Traces kept in memory for the status page.
pub const MAX_RECENT: usize = 10_000;
/// Bytes (approximate) all in-memory traces may take together.
pub const MAX_RECENT_BYTES: usize = 32 * 1024 * 1024;
/// Longest text kept in a trace field, in bytes.
pub const MAX_TEXT: usize = 256;
pub const MAX_STEPS: usize = 16;
pub const MAX_EVENTS: usize = 32;
pub const MAX_RECIPIENTS: usize = 16;

/// One message's trace.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Trace {
    /// The queue id (SMTP) or `account:uid` (a poller).
    pub id: String,
    pub message_id: String,
    /// `smtp` or `fetched <account>`.
    pub source: String,
    /// Unix milliseconds.
    pub received_at: u64,
    pub sender: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub size: u64,
    /// `accepted`, `rejected`, `discarded`, `delivered`, ...: the latest word on it.
    pub outcome: String,
    pub steps: Vec<Step>,
    pub events: Vec<Event>,
}

/// One script stage that ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub stage: String,
    /// `accept`, `reject 550 5.7.1 ...`, `none` (no file decided: the default applies).
    pub verdict: String,
    /// The file (and line, when known) that gave the verdict.
    pub decided_by: Option<String>,
    pub error: Option<String>,
    /// The actions the stage asked for, as `forward("a@b")`.
    pub actions: Vec<String>,
    pub micros: u64,
}

/// Something done for the message after the scripts: delivered, queued, sent, suppressed...
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// Unix milliseconds.
    pub at: u64,
    pub kind: String,
    pub detail: String,
    /// The outbound queue entry it made or is about, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub queue_id: String,
}

/// What [`received`] and [`refused`] learn about a message.
#[derive(Debug, Clone, Default)]
pub struct Summary<'a> {
    pub source: &'a str,
    pub sender: &'a str,
    pub recipients: &'a [String],
    /// The header block (or the whole message): subject and Message-ID are read from it.
    pub head: &'a [u8],
    pub size: u64,
}

/// Cuts `s` to [`MAX_TEXT`] bytes on a character boundary.
pub fn cut(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_string();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The unfolded value of header `name` in a header block, raw (encoded words stay encoded).
/// Stops at the blank line; at most 64 KB are looked at.
pub fn header_value(head: &[u8], name: &str) -> String {
    let head = &head[..head.len().min(64 * 1024)];
    let mut value: Option<Vec<u8>> = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(v) = value.as_mut() {
                v.push(b' ');
                v.extend_from_slice(line.trim_ascii());
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
        {
            value = Some(line[name.len() + 1..].trim_ascii().to_vec());
        }
    }
    value.map(|v| cut(&decode_words(&String::from_utf8_lossy(&v)))).unwrap_or_default()
}

/// Decodes RFC 2047 encoded words of UTF-8 or ASCII in base64 (`=?utf-8?b?...?=`) or Q form;
/// other charsets are left as they are.
fn decode_words(s: &str) -> String {
    use base64::Engine as _;
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("=?") {
        let Some(end) = rest[start + 2..].find("?=").map(|e| start + 2 + e) else { break };
        let word = &rest[start + 2..end];
        let parts: Vec<&str> = word.splitn(3, '?').collect();
        let decoded = match parts.as_slice() {
            [charset, enc, text]
                if charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("us-ascii") =>
            {
                match enc.to_ascii_lowercase().as_str() {
                    "b" => base64::engine::general_purpose::STANDARD.decode(text).ok(),
                    "q" => Some(decode_q(text)),
                    _ => None,
                }
            }
            _ => None,
        };
        match decoded {
            Some(bytes) => {
                let before = &rest[..start];
                // Whitespace between two encoded words is not part of the text.
                if !(before.trim().is_empty() && out.ends_with(|c: char| !c.is_whitespace()) && !out.is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&String::from_utf8_lossy(&bytes));
            }
            None => out.push_str(&rest[..end + 2]),
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

fn decode_q(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => out.push(b' '),
            b'=' => {
                let hex = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'='),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_unfolded_and_decoded() {
        let head =
            b"Received: x\r\nSubject: =?utf-8?q?caf=C3=A9?= and\r\n more\r\nMessage-ID: <a@b>\r\n\r\nSubject: body";
        assert_eq!(header_value(head, "subject"), "café and more");
        assert_eq!(header_value(head, "Message-ID"), "<a@b>");
        assert_eq!(header_value(head, "To"), "");
        assert_eq!(header_value(b"Subject: =?UTF-8?B?PHNjcmlwdD4=?=\n\n", "Subject"), "<script>");
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        let s = "é".repeat(300);
        let c = cut(&s);
        assert!(c.len() <= MAX_TEXT + 3);
        assert!(c.ends_with('…'));
    }
}
