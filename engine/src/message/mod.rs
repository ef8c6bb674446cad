//! The message as every stage sees it: the raw bytes, plus a parsed view built once, on first
//! use. A `mail_from` hook never pays for parsing; a `data` hook that reads only `subject` pays
//! once however many files ask — and only for the header block: the body (text, HTML,
//! attachments) is decoded on the first access to one of those, in a second pass.

pub mod date;
pub mod headers;

use std::sync::{Arc, OnceLock};

use mail_parser::{HeaderName, HeaderValue, MessageParser, MimeHeaders, PartType};

/// Raw message bytes and their lazily parsed view. Cheap to clone.
#[derive(Clone)]
pub struct MessageView {
    inner: Arc<Inner>,
}

struct Inner {
    raw: Arc<Vec<u8>>,
    parsed: OnceLock<Parsed>,
    body: OnceLock<Body>,
    flags: Vec<String>,
    /// For a header-only view (an IMAP message fetched without its body): the full size the
    /// server reported. `None`: `raw` is the whole message.
    full_size: Option<usize>,
}

/// An attachment as scripts see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub size: usize,
}

/// What scripts read from a message's header block; owned, so the parser's borrows end here.
#[derive(Debug, Default)]
pub struct Parsed {
    pub subject: String,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub date: String,
    pub message_id: String,
    /// Every header field in order. Values are unfolded on lookup, not here: a hook asks for
    /// one or two fields of a dozen.
    fields: Vec<Field>,
}

/// One header field of the block.
#[derive(Debug)]
struct Field {
    name: String,
    value: FieldValue,
}

#[derive(Debug)]
enum FieldValue {
    /// Where the value is in the raw message (unfolded on lookup).
    Raw(std::ops::Range<usize>),
    /// A field the parser decodes (Subject, Comments: RFC 2047 words), unfolded.
    Decoded(String),
}

/// What scripts read from a message's body: decoded only when a script asks.
#[derive(Debug, Default)]
pub struct Body {
    /// The first text/plain part, decoded (converted from HTML when there is only HTML).
    pub text: String,
    /// The first text/html part, decoded; "" when the message has none.
    pub html: String,
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
        MessageView {
            inner: Arc::new(Inner { raw, parsed: OnceLock::new(), body: OnceLock::new(), flags, full_size: None }),
        }
    }

    /// A fetched message of which only the header block was downloaded (`raw` = the header
    /// block): for hooks that never read the body. `size` is the server's RFC822.SIZE.
    pub fn headers_only(header: Arc<Vec<u8>>, flags: Vec<String>, full_size: usize) -> MessageView {
        MessageView {
            inner: Arc::new(Inner {
                raw: header,
                parsed: OnceLock::new(),
                body: OnceLock::new(),
                flags,
                full_size: Some(full_size),
            }),
        }
    }

    pub fn raw(&self) -> &Arc<Vec<u8>> {
        &self.inner.raw
    }

    /// The message's size in bytes (the server's figure for a header-only view).
    pub fn size(&self) -> usize {
        self.inner.full_size.unwrap_or(self.inner.raw.len())
    }

    /// Whether `raw` is only the header block (see [`MessageView::headers_only`]).
    pub fn is_headers_only(&self) -> bool {
        self.inner.full_size.is_some()
    }

    pub fn flags(&self) -> &[String] {
        &self.inner.flags
    }

    /// The parsed header block, built on first call.
    pub fn parsed(&self) -> &Parsed {
        self.inner.parsed.get_or_init(|| parse_headers(&self.inner.raw))
    }

    /// The decoded body, built on first call (a full MIME parse).
    pub fn body(&self) -> &Body {
        self.inner.body.get_or_init(|| parse_body(&self.inner.raw))
    }

    /// First value of header `name` (any case), unfolded; "" if absent.
    pub fn header(&self, name: &str) -> String {
        self.fields_named(name).next().map(|f| self.value_of(f)).unwrap_or_default()
    }

    /// Every value of header `name`, in order.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.fields_named(name).map(|f| self.value_of(f)).collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.fields_named(name).next().is_some()
    }

    fn fields_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        self.parsed().fields.iter().filter(move |f| f.name.eq_ignore_ascii_case(name))
    }

    fn value_of(&self, field: &Field) -> String {
        match &field.value {
            FieldValue::Decoded(value) => value.clone(),
            FieldValue::Raw(range) => {
                let raw = self.inner.raw.get(range.clone()).unwrap_or_default();
                headers::unfold(&String::from_utf8_lossy(raw))
            }
        }
    }
}

/// Parses only the fields `Parsed` decodes; every other field stays raw text (we unfold it
/// ourselves). The default parser also tokenizes `Received`, `List-*`, MIME fields... which cost
/// more than all the rest of a data-stage hook.
fn header_parser() -> MessageParser {
    MessageParser::new()
        .header_text(HeaderName::Subject)
        .header_text(HeaderName::Comments)
        .header_address(HeaderName::From)
        .header_address(HeaderName::To)
        .header_address(HeaderName::Cc)
        .header_date(HeaderName::Date)
        .header_id(HeaderName::MessageId)
}

fn parse_headers(raw: &[u8]) -> Parsed {
    static PARSER: OnceLock<MessageParser> = OnceLock::new();
    let Some(message) = PARSER.get_or_init(header_parser).parse_headers(raw) else {
        return Parsed::default();
    };
    let addresses = |value: Option<&mail_parser::Address<'_>>| -> Vec<String> {
        value.map(|a| a.iter().filter_map(|addr| addr.address()).map(str::to_string).collect()).unwrap_or_default()
    };
    let fields = message
        .headers()
        .iter()
        .map(|h| {
            let value = match &h.value {
                HeaderValue::Text(text) if is_plain_text_field(h.name.as_str()) => {
                    FieldValue::Decoded(headers::unfold(text))
                }
                _ => {
                    let start = (h.offset_start as usize).min(raw.len());
                    let end = (h.offset_end as usize).clamp(start, raw.len());
                    FieldValue::Raw(start..end)
                }
            };
            Field { name: h.name.as_str().to_string(), value }
        })
        .collect();
    Parsed {
        subject: message.subject().unwrap_or_default().to_string(),
        from: addresses(message.from()).into_iter().next().unwrap_or_default(),
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        date: message.date().map(|d| d.to_rfc3339()).unwrap_or_default(),
        message_id: message.message_id().unwrap_or_default().to_string(),
        fields,
    }
}

fn parse_body(raw: &[u8]) -> Body {
    let Some(message) = MessageParser::default().parse(raw) else {
        return Body::default();
    };
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
    // mail-parser's body_html(0) renders a text-only message as HTML; scripts get "" then.
    let has_html = message.html_part(0).is_some_and(|part| matches!(part.body, PartType::Html(_)));
    Body {
        text: message.body_text(0).map(|t| t.into_owned()).unwrap_or_default(),
        html: if has_html { message.body_html(0).map(|t| t.into_owned()).unwrap_or_default() } else { String::new() },
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
        assert_eq!(view.body().text.trim(), "body");
    }
}
