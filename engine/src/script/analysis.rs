//! What a script's source tells before it runs, for choices made per stage: whether its hooks
//! may block (they then run on a thread of their own) and whether they may read a message body
//! (if not, an IMAP poller downloads only headers).
//!
//! A plain scan of the text: comments and strings can only make an answer "yes", the safe side.
//! Plugin calls (`ns::f`) and imported modules count as both: what they do is not known here.

/// Whether a hook of this source may block: a namespaced call (a plugin module) or an `import`.
pub fn may_block(source: &str) -> bool {
    calls_out(source)
}

/// Whether a hook of this source may read the message body: `msg.body_text`, `msg.body_html`,
/// `msg.attachments`, `msg.raw`, or anything a plugin or module might do with `msg`.
pub fn reads_body(source: &str) -> bool {
    calls_out(source) || ["body_text", "body_html", "attachments", "raw"].iter().any(|word| source.contains(word))
}

fn calls_out(source: &str) -> bool {
    source.contains("::") || source.contains("import")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_calls_and_imports_may_block() {
        assert!(may_block("fn data(ctx, msg) { kv::incr(\"n\"); }"));
        assert!(may_block("import \"lib\" as lib;\nfn helo(ctx) { lib::check(ctx) }"));
        assert!(!may_block("fn rcpt_to(ctx) { if ctx.rcpt == \"a@b\" { return reject(); } }"));
    }

    #[test]
    fn body_readers() {
        let headers =
            "fn fetched(ctx, msg) { if msg.has_header(\"List-Id\") && msg.size > 10 { msg.file_into(\"Lists\"); } }";
        assert!(!reads_body(headers));
        for body in ["msg.body_text", "msg.body_html", "msg.attachments.len()", "msg.raw", "exec::pipe(msg, [])"] {
            assert!(reads_body(&format!("fn fetched(ctx, msg) {{ let x = {body}; }}")), "{body}");
        }
    }
}
