//! The message as every stage sees it: the raw bytes, plus a parsed view built on first use,
//! piece by piece. A `mail_from` hook never pays for parsing; a `data` hook that reads `from`
//! and `subject` pays for splitting the header block into fields and for decoding those two
//! fields — not for the others, nor for the body (text, HTML, attachments), which is decoded
//! on the first access to one of those, in a full MIME parse.

pub mod date;
pub mod headers;
pub mod stored;

use std::sync::{Arc, OnceLock};

use mail_parser::{HeaderName, HeaderValue, Message, MessageParser, MimeHeaders, PartType};

/// Raw message bytes and their lazily parsed view. Cheap to clone.
#[derive(Clone)]
pub struct MessageView {
    inner: Arc<Inner>,
}

struct Inner {
    raw: Arc<Vec<u8>>,
    /// Every header field in order: (name, start, end) in `raw`, continuation lines included.
    fields: OnceLock<Vec<(String, usize, usize)>>,
    structured: Structured,
    body: OnceLock<Body>,
    flags: Vec<String>,
    /// For a header-only view (an IMAP message fetched without its body): the full size the
    /// server reported. `None`: `raw` is the whole message.
    full_size: Option<usize>,
    /// A large message kept in a file: `raw` is `prefix` and the header block; the whole
    /// message is `prefix ++ tail`, loaded on first use.
    spilled: Option<Spilled>,
    /// The authentication verdicts of the receiving session (`msg.auth`), when checked.
    auth: OnceLock<crate::proto::authres::MessageAuth>,
}

/// The parts of a message kept in a file (see [`MessageView::file_parts`]).
pub struct FileParts<'a> {
    pub prefix: &'a Arc<Vec<u8>>,
    pub tail: &'a stored::Tail,
    /// Where the header block ends in `tail`, when it was found.
    pub block_end: Option<usize>,
}

struct Spilled {
    prefix: Arc<Vec<u8>>,
    tail: stored::Tail,
    /// Where the header block ends in `tail`, when it was found.
    block_end: Option<usize>,
    full: OnceLock<(Arc<Vec<u8>>, Option<stored::Held>)>,
}

/// The structured fields scripts read, each decoded by mail-parser on first use from that
/// field's lines alone (a hook reads two or three of them; decoding all of a header block
/// was 16 % of the benchmark rules' instructions per message).
#[derive(Default)]
struct Structured {
    subject: OnceLock<String>,
    from: OnceLock<String>,
    to: OnceLock<Vec<String>>,
    cc: OnceLock<Vec<String>>,
    date: OnceLock<String>,
    message_id: OnceLock<String>,
}

/// An attachment as scripts see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub size: usize,
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
            inner: Arc::new(Inner {
                raw,
                fields: OnceLock::new(),
                structured: Structured::default(),
                body: OnceLock::new(),
                flags,
                full_size: None,
                spilled: None,
                auth: OnceLock::new(),
            }),
        }
    }

    /// A fetched message of which only the header block was downloaded (`raw` = the header
    /// block): for hooks that never read the body. `size` is the server's RFC822.SIZE.
    pub fn headers_only(header: Arc<Vec<u8>>, flags: Vec<String>, full_size: usize) -> MessageView {
        MessageView {
            inner: Arc::new(Inner {
                raw: header,
                fields: OnceLock::new(),
                structured: Structured::default(),
                body: OnceLock::new(),
                flags,
                full_size: Some(full_size),
                spilled: None,
                auth: OnceLock::new(),
            }),
        }
    }

    /// A large message kept in a file: `prefix ++ tail`. `head` is `prefix` followed by the
    /// tail's header block (see [`stored::header_block`], which gives `block_end`): header
    /// reads never touch the rest. `flags`: as for [`MessageView::with_flags`].
    pub fn spilled(
        prefix: Arc<Vec<u8>>,
        head: Arc<Vec<u8>>,
        tail: stored::Tail,
        block_end: Option<usize>,
        flags: Vec<String>,
    ) -> MessageView {
        let size = prefix.len() + tail.len as usize;
        MessageView {
            inner: Arc::new(Inner {
                raw: head,
                fields: OnceLock::new(),
                structured: Structured::default(),
                body: OnceLock::new(),
                flags,
                full_size: Some(size),
                spilled: Some(Spilled { prefix, tail, block_end, full: OnceLock::new() }),
                auth: OnceLock::new(),
            }),
        }
    }

    /// The whole message. For a message kept in a file this reads it into memory on first use
    /// (counted in [`stored::BUDGET`] while the view lives); a read error gives the header
    /// block alone, and is logged.
    pub fn raw(&self) -> &Arc<Vec<u8>> {
        match &self.inner.spilled {
            None => &self.inner.raw,
            Some(spilled) => &spilled
                .full
                .get_or_init(|| {
                    let held = stored::BUDGET.hold(spilled.prefix.len() + spilled.tail.len as usize);
                    let mut whole = Vec::with_capacity(spilled.prefix.len() + spilled.tail.len as usize);
                    whole.extend_from_slice(&spilled.prefix);
                    match spilled.tail.copy_to(&mut whole) {
                        Ok(()) => (Arc::new(whole), Some(held)),
                        Err(e) => {
                            tracing::error!(error = %e, file = %spilled.tail.path.display(), "cannot read the message file");
                            (self.inner.raw.clone(), None)
                        }
                    }
                })
                .0,
        }
    }

    /// The header part the view was built on: the whole message, except for a header-only or
    /// a file-kept view, where it is the header block.
    pub fn head(&self) -> &Arc<Vec<u8>> {
        &self.inner.raw
    }

    /// For a message kept in a file: the in-memory prefix, the file part, and where the
    /// header block ends in the file part (when found).
    pub fn file_parts(&self) -> Option<FileParts<'_>> {
        self.inner.spilled.as_ref().map(|s| FileParts { prefix: &s.prefix, tail: &s.tail, block_end: s.block_end })
    }

    /// A view of the large message `prefix ++ tail`: the tail's header block is read from the
    /// file, nothing more.
    pub fn from_file(prefix: Arc<Vec<u8>>, tail: stored::Tail, flags: Vec<String>) -> std::io::Result<MessageView> {
        let (block_end, block) = stored::header_block(&tail)?;
        let mut head = Vec::with_capacity(prefix.len() + block.len());
        head.extend_from_slice(&prefix);
        head.extend_from_slice(&block);
        Ok(MessageView::spilled(prefix, Arc::new(head), tail, block_end, flags))
    }

    /// Attaches the verdicts of the checks on receipt; the first call wins.
    pub fn set_auth(&self, auth: crate::proto::authres::MessageAuth) {
        let _ = self.inner.auth.set(auth);
    }

    /// The verdicts of the checks on receipt; `None` when no check ran.
    pub fn auth(&self) -> Option<&crate::proto::authres::MessageAuth> {
        self.inner.auth.get()
    }

    /// The message's size in bytes (the server's figure for a header-only view).
    pub fn size(&self) -> usize {
        self.inner.full_size.unwrap_or(self.inner.raw.len())
    }

    /// Whether `raw` is only the header block (see [`MessageView::headers_only`]).
    pub fn is_headers_only(&self) -> bool {
        self.inner.full_size.is_some() && self.inner.spilled.is_none()
    }

    pub fn flags(&self) -> &[String] {
        &self.inner.flags
    }

    /// The Subject, RFC 2047 words decoded; "" if absent.
    pub fn subject(&self) -> &str {
        self.inner.structured.subject.get_or_init(|| match self.plain_field("Subject").filter(plain_text) {
            Some(value) => value.to_string(),
            None => self.decode_fields(HeaderName::Subject, |m| m.subject().unwrap_or_default().to_string()),
        })
    }

    /// The first From address; "" if absent.
    pub fn from(&self) -> &str {
        self.inner.structured.from.get_or_init(|| match self.plain_field("From").and_then(plain_address) {
            Some(address) => address.to_string(),
            None => {
                self.decode_fields(HeaderName::From, |m| addresses(m.from()).into_iter().next().unwrap_or_default())
            }
        })
    }

    /// Every To address.
    pub fn to(&self) -> &[String] {
        self.inner.structured.to.get_or_init(|| self.decode_fields(HeaderName::To, |m| addresses(m.to())))
    }

    /// Every Cc address.
    pub fn cc(&self) -> &[String] {
        self.inner.structured.cc.get_or_init(|| self.decode_fields(HeaderName::Cc, |m| addresses(m.cc())))
    }

    /// The Date as RFC 3339; "" if absent or unreadable.
    pub fn date(&self) -> &str {
        self.inner.structured.date.get_or_init(|| {
            self.decode_fields(HeaderName::Date, |m| m.date().map(|d| d.to_rfc3339()).unwrap_or_default())
        })
    }

    /// The Message-ID without angle brackets; "" if absent.
    pub fn message_id(&self) -> &str {
        self.inner.structured.message_id.get_or_init(|| {
            self.decode_fields(HeaderName::MessageId, |m| m.message_id().unwrap_or_default().to_string())
        })
    }

    /// The decoded body, built on first call (a full MIME parse).
    pub fn body(&self) -> &Body {
        self.inner.body.get_or_init(|| parse_body(self.raw()))
    }

    /// First value of header `name` (any case), unfolded; "" if absent.
    pub fn header(&self, name: &str) -> String {
        self.fields_named(name).next().map(|f| self.value_of(f)).unwrap_or_default()
    }

    /// Every value of header `name`, in order.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.fields_named(name).map(|f| self.value_of(f)).collect()
    }

    /// How many fields named `name` (any case) there are, and their raw size in bytes (name
    /// and folding included): what `headers(name).len()` needs, without building the values.
    pub fn header_count(&self, name: &str) -> (usize, usize) {
        self.fields_named(name).fold((0, 0), |(n, bytes), (_, start, end)| (n + 1, bytes + (end - start)))
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.fields_named(name).next().is_some()
    }

    fn fields(&self) -> &[(String, usize, usize)] {
        self.inner.fields.get_or_init(|| headers::fields(&self.inner.raw))
    }

    fn fields_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a (String, usize, usize)> + 'a {
        // A line without a colon has the name "": no lookup finds it.
        self.fields().iter().filter(move |(n, _, _)| !n.is_empty() && n.eq_ignore_ascii_case(name))
    }

    /// A field's value as scripts compare it: unfolded and trimmed; for Subject and Comments
    /// also RFC 2047-decoded.
    fn value_of(&self, (name, start, end): &(String, usize, usize)) -> String {
        let line = self.inner.raw.get(*start..*end).unwrap_or_default();
        if is_plain_text_field(name) {
            let decoded = parse_block(line, |m| match m.headers().first().map(|h| &h.value) {
                Some(HeaderValue::Text(text)) => Some(headers::unfold(text)),
                _ => None,
            });
            if let Some(value) = decoded.flatten() {
                return value;
            }
        }
        let value = line.iter().position(|&b| b == b':').map_or(&line[line.len()..], |colon| &line[colon + 1..]);
        headers::unfold(&String::from_utf8_lossy(value))
    }

    /// Runs `read` on mail-parser's parse of the fields named `name` alone (all of them, in
    /// order: mail-parser picks among repeated fields as it would in the whole block).
    /// The value of the only field named `name`, when it is one line of printable ASCII
    /// (trimmed): the input of the fast paths that skip mail-parser for the common case.
    fn plain_field(&self, name: &str) -> Option<&str> {
        let mut fields = self.fields_named(name);
        let (_, start, end) = fields.next()?;
        if fields.next().is_some() {
            return None;
        }
        let line = self.inner.raw.get(*start..*end)?;
        let line = line.strip_suffix(b"\n").map(|l| l.strip_suffix(b"\r").unwrap_or(l)).unwrap_or(line);
        let colon = memchr::memchr(b':', line)?;
        let value = &line[colon + 1..];
        if !value.iter().all(|&b| (0x20..0x7f).contains(&b)) {
            return None;
        }
        std::str::from_utf8(value).ok().map(str::trim)
    }

    fn decode_fields<T: Default>(&self, name: HeaderName<'static>, read: impl FnOnce(&Message<'_>) -> T) -> T {
        let raw = &self.inner.raw;
        let mut block = Vec::new();
        for (_, start, end) in self.fields_named(name.as_str()) {
            block.extend_from_slice(raw.get(*start..*end).unwrap_or_default());
        }
        if block.is_empty() {
            return T::default();
        }
        parse_block(&block, read).unwrap_or_default()
    }
}

/// mail-parser's parse of a few header lines (given without the blank line that ends a block).
fn parse_block<T>(lines: &[u8], read: impl FnOnce(&Message<'_>) -> T) -> Option<T> {
    static PARSER: OnceLock<MessageParser> = OnceLock::new();
    let mut block = Vec::with_capacity(lines.len() + 4);
    block.extend_from_slice(lines);
    if !block.ends_with(b"\n") {
        block.extend_from_slice(b"\r\n");
    }
    block.extend_from_slice(b"\r\n");
    PARSER.get_or_init(header_parser).parse_headers(&block).map(|m| read(&m))
}

/// A Subject mail-parser would hand back as it is: no encoded word, no whitespace run (it
/// keeps those too, but one rule is simpler to check against it: see the tests).
fn plain_text(value: &&str) -> bool {
    !value.contains("=?") && !value.contains("  ")
}

/// The address of a From value that is only an address, bare or in angle brackets, made of
/// letters, digits and `.`, `_`, `+`, `-` (the usual case): mail-parser's address parse would
/// return exactly it.
fn plain_address(value: &str) -> Option<&str> {
    let address = value.strip_prefix('<').and_then(|v| v.strip_suffix('>')).unwrap_or(value);
    let (local, domain) = address.split_once('@')?;
    let atom = |s: &str, extra: &[u8]| {
        !s.is_empty()
            && !s.starts_with('.')
            && !s.ends_with('.')
            && !s.contains("..")
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    (atom(local, b"._+-") && atom(domain, b".-")).then_some(address)
}

fn addresses(value: Option<&mail_parser::Address<'_>>) -> Vec<String> {
    value.map(|a| a.iter().filter_map(|addr| addr.address()).map(str::to_string).collect()).unwrap_or_default()
}

/// Decodes only the fields scripts read decoded; every other field stays raw text (we unfold it
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

fn parse_body(raw: &[u8]) -> Body {
    // mail-parser 0.11 has a `debug_assert!` that malformed MIME trips (a `multipart/digest`
    // part it cannot find again, fuzz/known-issues/): in a debug build that is a panic, and a
    // hostile message must not take a hook down with it. Release builds never get here.
    match std::panic::catch_unwind(|| parse_body_unguarded(raw)) {
        Ok(body) => body,
        Err(_) => {
            tracing::warn!("the message's MIME structure could not be parsed; body and attachments read as empty");
            Body::default()
        }
    }
}

fn parse_body_unguarded(raw: &[u8]) -> Body {
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
mod tests;
