//! The message as every stage sees it: the raw bytes, plus a parsed view built once, on first
//! use. A `mail_from` hook never pays for parsing; a `data` hook that reads only `subject` pays
//! once however many files ask.

pub mod date;
pub mod headers;

use std::sync::{Arc, OnceLock};

use mail_parser::{HeaderValue, MessageParser, MimeHeaders};

/// Raw message bytes and their lazily parsed view. Cheap to clone.
#[derive(Clone)]
pub struct MessageView {
    inner: Arc<Inner>,
}

struct Inner {
    raw: Arc<Vec<u8>>,
    parsed: OnceLock<Parsed>,
    flags: Vec<String>,
}

/// An attachment as scripts see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub size: usize,
}

/// What scripts read from a message; owned, so the parser's borrows end here.
#[derive(Debug, Default)]
pub struct Parsed {
    pub subject: String,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub date: String,
    pub message_id: String,
    /// Every header field in order: name as written, value unfolded (decoded when the parser
    /// decodes that field).
    pub headers: Vec<(String, String)>,
    pub body_text: String,
    pub body_html: String,
    pub attachments: Vec<Attachment>,
}

impl std::fmt::Debug for MessageView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageView").field("size", &self.inner.raw.len()).finish()
    }
}

impl MessageView {
    pub fn new(raw: Arc<Vec<u8>>) -> MessageView {
        MessageView::with_flags(raw, Vec::new())
    }

    /// A fetched message, with the flags the server reported.
    pub fn with_flags(raw: Arc<Vec<u8>>, flags: Vec<String>) -> MessageView {
        MessageView { inner: Arc::new(Inner { raw, parsed: OnceLock::new(), flags }) }
    }

    pub fn raw(&self) -> &Arc<Vec<u8>> {
        &self.inner.raw
    }

    pub fn size(&self) -> usize {
        self.inner.raw.len()
    }

    pub fn flags(&self) -> &[String] {
        &self.inner.flags
    }

    /// The parsed view, built on first call.
    pub fn parsed(&self) -> &Parsed {
        self.inner.parsed.get_or_init(|| parse(&self.inner.raw))
    }

    /// First value of header `name` (any case), "" if absent.
    pub fn header(&self, name: &str) -> String {
        self.parsed()
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// Every value of header `name`, in order.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.parsed().headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone()).collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.parsed().headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
    }
}

fn parse(raw: &[u8]) -> Parsed {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Parsed::default();
    };
    let addresses = |value: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        value.map(|a| a.iter().filter_map(|addr| addr.address()).map(str::to_string).collect()).unwrap_or_default()
    };
    let headers = message
        .headers()
        .iter()
        .map(|h| {
            let value = match &h.value {
                HeaderValue::Text(text) if !h.name.is_structured() || is_plain_text_field(h.name.as_str()) => {
                    headers::unfold(text)
                }
                _ => {
                    let start = (h.offset_start as usize).min(raw.len());
                    let end = (h.offset_end as usize).clamp(start, raw.len());
                    headers::unfold(&String::from_utf8_lossy(&raw[start..end]))
                }
            };
            (h.name.as_str().to_string(), value)
        })
        .collect();
    let attachments = message
        .attachments()
        .map(|part| Attachment {
            name: part.attachment_name().unwrap_or_default().to_string(),
            content_type: part
                .content_type()
                .map(|ct| match ct.subtype() {
                    Some(sub) => format!("{}/{}", ct.ctype(), sub),
                    None => ct.ctype().to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".to_string())
                .to_ascii_lowercase(),
            size: part.contents().len(),
        })
        .collect();
    Parsed {
        subject: message.subject().unwrap_or_default().to_string(),
        from: addresses(message.from()).into_iter().next().unwrap_or_default(),
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        date: message.date().map(|d| d.to_rfc3339()).unwrap_or_default(),
        message_id: message.message_id().unwrap_or_default().to_string(),
        headers,
        body_text: message.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
        body_html: message.body_html(0).map(|t| t.into_owned()).unwrap_or_default(),
        attachments,
    }
}

/// Structured fields whose parsed text is still what a script wants to compare.
fn is_plain_text_field(name: &str) -> bool {
    name.eq_ignore_ascii_case("subject") || name.eq_ignore_ascii_case("comments")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_view_reads_fields() {
        let raw = b"From: Ann <ann@example.org>\r\nTo: b@example.org, c@example.org\r\nSubject: =?UTF-8?Q?h=C3=A9llo?=\r\nList-Id: <list.example.org>\r\nX-Folded: a\r\n b\r\n\r\nbody\r\n";
        let view = MessageView::new(Arc::new(raw.to_vec()));
        assert_eq!(view.parsed().subject, "héllo");
        assert_eq!(view.parsed().from, "ann@example.org");
        assert_eq!(view.parsed().to, vec!["b@example.org", "c@example.org"]);
        assert_eq!(view.header("list-id"), "<list.example.org>");
        assert_eq!(view.header("X-Folded"), "a b");
        assert!(view.has_header("LIST-ID"));
        assert!(!view.has_header("X-None"));
        assert_eq!(view.parsed().body_text.trim(), "body");
    }
}
