//! The script API (docs/scripting.md): the `ctx` and `msg` getters, the verdict functions and
//! the actions, each with its doc example. What is registered into rhai, and what the native
//! tier may run, is the list in [`super::catalog`]; [`register`] registers that list.
//!
//! Longer than the usual file on purpose: every script function is here with its doc example
//! (each compiled by `tests/integration/test_docs.py`).
//!
//! Security: every value a script hands back is checked here (header names and values,
//! addresses, folder names, reply codes) before it becomes an [`Action`] or a [`Verdict`], so a
//! script cannot inject a header line, a recipient or a reply line.

use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map};

use super::catalog::ENTRIES;
use super::context::{Context, ScriptCtx};
use super::decision::{Action, ReplySpec, Stage, VacationSpec, Verdict};
use super::sandbox;
use crate::message::headers;
use crate::message::MessageView;
use crate::proto::address::parse_mailbox;

pub(crate) type FnResult<T> = Result<T, Box<EvalAltResult>>;

fn err<T>(message: impl Into<String>) -> FnResult<T> {
    Err(message.into().into())
}

/// Registers the whole API into `engine`: the types, then every entry of the catalog
/// ([`super::catalog`]), which is the one list of what scripts can call.
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<ScriptCtx>("Ctx");
    engine.register_type_with_name::<MessageView>("Msg");
    engine.register_type_with_name::<Verdict>("Verdict");
    for entry in ENTRIES {
        entry.register(engine);
    }
    engine.on_print(sandbox::log_line);
    engine.on_debug(|text, _, _| sandbox::log_line(text));
}

/// `log(text)`: one line in the daemon log, tagged with the file, the stage and the session or
/// message id (in `mailflow test`: printed as `log: FILE: text`). `print(text)` and
/// `debug(value)` do the same.
///
/// ```rhai
/// fn data(ctx, msg) { log("from " + msg.from + ": " + msg.subject); }
/// ```
pub(crate) fn log_text(text: ImmutableString) {
    sandbox::log_line(&text);
}

/// `log(value)`: any other value is logged in its printed form.
///
/// ```rhai
/// fn rcpt_to(ctx) { log(ctx.recipients); }   // ["a@example.org", "b@example.org"]
/// ```
fn log_value(value: Dynamic) {
    sandbox::log_line(&value.to_string());
}

pub(crate) fn register_log_value(engine: &mut Engine) {
    engine.register_fn("log", log_value);
}

/// `log(number)` for floating-point numbers. rhai's standard library also has a `log(x)`
/// (base-10 logarithm) that would otherwise win for floats and silently log nothing; here
/// `log` always logs (`log(x, 10.0)` and `ln(x)` remain for logarithms).
///
/// ```rhai
/// fn data(ctx, msg) { log(msg.size / 1024.0); }   // "12.5"
/// ```
fn log_float(value: rhai::FLOAT) {
    sandbox::log_line(&value.to_string());
}

pub(crate) fn register_log_float(engine: &mut Engine) {
    engine.register_fn("log", log_float);
}

// --- ctx --------------------------------------------------------------------------------------

// `ctx`: the read-only getters (strings, "" where a field does not apply at the stage), plus
// the recipient actions.

/// `ctx.remote_ip`: the SMTP client's address, e.g. `"192.0.2.7"` or `"2001:db8::7"`.
///
/// ```rhai
/// fn connect(ctx) { if ctx.remote_ip.starts_with("192.0.2.") { return reject("5.7.1 blocked"); } }
/// ```
pub(crate) fn ctx_remote_ip(c: &Context) -> &str {
    &c.remote_ip
}

/// `ctx.helo`: the name the client gave in HELO/EHLO ("" at `connect`).
///
/// ```rhai
/// fn helo(ctx) { if ctx.helo == "localhost" { return reject("5.7.1 you are not localhost"); } }
/// ```
pub(crate) fn ctx_helo(c: &Context) -> &str {
    &c.helo
}

/// `ctx.tls`: whether the session is encrypted (STARTTLS or implicit TLS).
///
/// ```rhai
/// fn mail_from(ctx) { if !ctx.tls { log("plain-text session from " + ctx.remote_ip); } }
/// ```
pub(crate) fn ctx_tls(c: &Context) -> bool {
    c.tls
}

/// `ctx.auth_user`: the user the client authenticated as ("" when it did not).
///
/// ```rhai
/// fn mail_from(ctx) { if ctx.auth_user == "" && ctx.sender.ends_with("@example.org") { return reject(); } }
/// ```
pub(crate) fn ctx_auth_user(c: &Context) -> &str {
    &c.auth_user
}

/// `ctx.listener`: the role of the listener the client connected to, `"mx"` (mail from the
/// internet) or `"submission"` (our own users, after AUTH); `""` for fetched mail.
///
/// ```rhai
/// fn data(ctx, msg) { if ctx.listener == "submission" { msg.add_header("X-Submitted-By", ctx.auth_user); } }
/// ```
pub(crate) fn ctx_listener(c: &Context) -> &str {
    &c.listener
}

/// `ctx.sender`: the envelope sender (MAIL FROM), "" for the null sender (bounces).
///
/// ```rhai
/// fn mail_from(ctx) { if ctx.sender.ends_with("@spam.example") { return reject(); } }
/// ```
pub(crate) fn ctx_sender(c: &Context) -> &str {
    &c.sender
}

/// `ctx.rcpt`: the recipient being checked, in `rcpt_to` ("" elsewhere).
///
/// ```rhai
/// fn rcpt_to(ctx) { if ctx.rcpt == "old@example.org" { return reject("5.1.1 gone"); } }
/// ```
pub(crate) fn ctx_rcpt(c: &Context) -> &str {
    &c.rcpt
}

/// `ctx.recipients`: the envelope recipients accepted so far (all of them at `data`).
///
/// ```rhai
/// fn data(ctx, msg) { if ctx.recipients.len() > 10 { return reject("5.5.3 too many recipients"); } }
/// ```
pub(crate) fn ctx_recipients(c: &Context) -> &[String] {
    &c.recipients
}

/// `ctx.account`: the poller account's `name` from the config, in `fetched`.
///
/// ```rhai
/// fn fetched(ctx, msg) { if ctx.account == "work" { msg.file_into("Work"); } }
/// ```
pub(crate) fn ctx_account(c: &Context) -> &str {
    &c.account
}

/// `ctx.protocol`: `"imap"` or `"pop3"`, in `fetched`.
///
/// ```rhai
/// fn fetched(ctx, msg) { if ctx.protocol == "pop3" { msg.delete(); } }
/// ```
pub(crate) fn ctx_protocol(c: &Context) -> &str {
    &c.protocol
}

/// `ctx.mailbox`: the IMAP mailbox the message was fetched from, in `fetched`.
///
/// ```rhai
/// fn fetched(ctx, msg) { if ctx.mailbox == "INBOX" { msg.mark_seen(); } }
/// ```
pub(crate) fn ctx_mailbox(c: &Context) -> &str {
    &c.mailbox
}

/// `ctx.uid`: the message's IMAP UID or POP3 UIDL, in `fetched`.
///
/// ```rhai
/// fn fetched(ctx, msg) { log("fetched " + ctx.mailbox + "/" + ctx.uid); }
/// ```
pub(crate) fn ctx_uid(c: &Context) -> &str {
    &c.uid
}

/// `ctx.add_rcpt(addr)`: adds an envelope recipient (`rcpt_to` and `data`). The address is
/// checked; a bad one is a script error.
///
/// ```rhai
/// fn data(ctx, msg) { if msg.subject.contains("urgent") { ctx.add_rcpt("oncall@example.org"); } }
/// ```
pub(crate) fn ctx_add_rcpt(_: &mut ScriptCtx, addr: &str) -> FnResult<()> {
    envelope_stage("ctx.add_rcpt")?;
    let mailbox = parse_mailbox(addr.trim(), true).map_err(|e| format!("ctx.add_rcpt({addr:?}): {e}"))?;
    sandbox::push_action(Action::AddRcpt { addr: mailbox.as_string() });
    Ok(())
}

/// `ctx.remove_rcpt(addr)`: removes an envelope recipient, any case (`rcpt_to` and `data`).
///
/// ```rhai
/// fn data(ctx, msg) { if msg.has_header("List-Id") { ctx.remove_rcpt("boss@example.org"); } }
/// ```
pub(crate) fn ctx_remove_rcpt(_: &mut ScriptCtx, addr: &str) -> FnResult<()> {
    envelope_stage("ctx.remove_rcpt")?;
    sandbox::push_action(Action::RemoveRcpt { addr: addr.trim().to_string() });
    Ok(())
}

/// Recipient edits make sense once there is an envelope with recipients.
fn envelope_stage(what: &str) -> FnResult<()> {
    match sandbox::stage() {
        Stage::RcptTo | Stage::Data => Ok(()),
        stage => err(format!("{what} is only available in the rcpt_to and data stages, not {stage}")),
    }
}

// --- msg: getters -----------------------------------------------------------------------------

// `msg`: lazily parsed getters (the message is parsed once, on first use) and the message
// actions. Getters always show the message as it arrived: edits apply after the hook.

/// `msg.subject`: the Subject, RFC 2047 decoded ("" if none).
///
/// ```rhai
/// fn data(ctx, msg) { if msg.subject.to_lower().contains("invoice") { msg.file_into("Invoices"); } }
/// ```
pub(crate) fn msg_subject(m: &MessageView) -> &str {
    m.subject()
}

/// `msg.from`: the address of the From header, "" if none.
///
/// ```rhai
/// fn data(ctx, msg) { if msg.from == "boss@example.org" { msg.flag("\\Flagged"); } }
/// ```
pub(crate) fn msg_from(m: &MessageView) -> &str {
    m.from()
}

/// `msg.to`: the addresses of the To header (array of strings).
///
/// ```rhai
/// fn data(ctx, msg) { if !("me@example.org" in msg.to) { msg.file_into("Bcc"); } }
/// ```
pub(crate) fn msg_to(m: &MessageView) -> &[String] {
    m.to()
}

/// `msg.cc`: the addresses of the Cc header (array of strings).
///
/// ```rhai
/// fn data(ctx, msg) { if msg.cc.len() > 20 { msg.file_into("Crowds"); } }
/// ```
pub(crate) fn msg_cc(m: &MessageView) -> &[String] {
    m.cc()
}

/// `msg.date`: the Date header as RFC 3339 (`"2026-11-23T10:00:00Z"`), "" if none or invalid.
///
/// ```rhai
/// fn data(ctx, msg) { if msg.date == "" { msg.add_header("X-No-Date", "yes"); } }
/// ```
pub(crate) fn msg_date(m: &MessageView) -> &str {
    m.date()
}

/// `msg.message_id`: the Message-ID without angle brackets, "" if none.
///
/// ```rhai
/// fn data(ctx, msg) { log("id " + msg.message_id); }
/// ```
pub(crate) fn msg_message_id(m: &MessageView) -> &str {
    m.message_id()
}

/// `msg.body_text`: the first text/plain part, decoded (converted from HTML when the message
/// has only HTML).
///
/// ```rhai
/// fn data(ctx, msg) { if msg.body_text.contains("unsubscribe") { msg.file_into("Newsletters"); } }
/// ```
fn msg_body_text(m: &mut MessageView) -> String {
    m.body().text.clone()
}

pub(crate) fn register_body_text(engine: &mut Engine) {
    engine.register_get("body_text", msg_body_text);
}

/// `msg.body_html`: the first text/html part, decoded ("" when there is none).
///
/// ```rhai
/// fn data(ctx, msg) { if msg.body_html.contains("<script") { return reject("5.7.1 no scripts"); } }
/// ```
fn msg_body_html(m: &mut MessageView) -> String {
    m.body().html.clone()
}

pub(crate) fn register_body_html(engine: &mut Engine) {
    engine.register_get("body_html", msg_body_html);
}

/// `msg.size`: the message size in bytes, as received.
///
/// ```rhai
/// fn data(ctx, msg) { if msg.size > 10_000_000 { msg.file_into("Large"); } }
/// ```
pub(crate) fn msg_size(m: &MessageView) -> i64 {
    i64::try_from(m.size()).unwrap_or(i64::MAX)
}

/// `msg.raw`: the whole message as text (invalid UTF-8 replaced).
///
/// ```rhai
/// fn data(ctx, msg) { if msg.raw.contains("X-Virus: yes") { return discard(); } }
/// ```
fn msg_raw(m: &mut MessageView) -> String {
    String::from_utf8_lossy(m.raw()).into_owned()
}

pub(crate) fn register_raw(engine: &mut Engine) {
    engine.register_get("raw", msg_raw);
}

/// `msg.flags`: the IMAP flags the server reported, in `fetched` (empty elsewhere).
///
/// ```rhai
/// fn fetched(ctx, msg) { if "\\Seen" in msg.flags { return; } }
/// ```
pub(crate) fn msg_flags(m: &MessageView) -> &[String] {
    m.flags()
}

/// `msg.attachments`: array of `#{name, content_type, size}` maps.
///
/// ```rhai
/// fn data(ctx, msg) {
///     if msg.attachments.some(|a| a.name.ends_with(".exe")) { return reject("5.7.1 no executables"); }
/// }
/// ```
fn msg_attachments(m: &mut MessageView) -> Array {
    m.body()
        .attachments
        .iter()
        .map(|a| {
            let mut map = Map::new();
            map.insert("name".into(), a.name.clone().into());
            map.insert("content_type".into(), a.content_type.clone().into());
            map.insert("size".into(), i64::try_from(a.size).unwrap_or(i64::MAX).into());
            Dynamic::from_map(map)
        })
        .collect()
}

pub(crate) fn register_attachments(engine: &mut Engine) {
    engine.register_get("attachments", msg_attachments);
}

/// `msg.header(name)`: the first value of a header (any case), unfolded; "" if absent.
///
/// ```rhai
/// fn data(ctx, msg) { if msg.header("X-Spam-Flag") == "YES" { msg.file_into("Junk"); } }
/// ```
pub(crate) fn msg_header(m: &MessageView, name: &str) -> String {
    m.header(name)
}

/// `msg.headers(name)`: every value of a header, in order (array of strings).
///
/// ```rhai
/// fn data(ctx, msg) { if msg.headers("Received").len() > 30 { return reject("5.4.6 loop?"); } }
/// ```
pub(crate) fn msg_headers(m: &MessageView, name: &str) -> Vec<String> {
    m.headers(name)
}

/// `msg.has_header(name)`: whether a header is present (any case).
///
/// ```rhai
/// fn data(ctx, msg) { if msg.has_header("List-Id") { msg.file_into("Lists"); } }
/// ```
pub(crate) fn msg_has_header(m: &MessageView, name: &str) -> bool {
    m.has_header(name)
}

// --- msg: actions -----------------------------------------------------------------------------

/// `msg.set_header(name, value)`: replaces every field of that name by one (added in front when
/// there was none). CR, LF or NUL in the value, or a bad name, is a script error.
///
/// ```rhai
/// fn data(ctx, msg) { msg.set_header("X-Spam-Score", "0.0"); }
/// ```
pub(crate) fn msg_set_header(_: &mut MessageView, name: &str, value: &str) -> FnResult<()> {
    checked_header("msg.set_header", name, value)?;
    sandbox::push_action(Action::SetHeader { name: name.to_string(), value: value.to_string() });
    Ok(())
}

/// `msg.add_header(name, value)`: adds a field in front of the header.
///
/// ```rhai
/// fn data(ctx, msg) { msg.add_header("X-Filed-By", "mailflow"); }
/// ```
pub(crate) fn msg_add_header(_: &mut MessageView, name: &str, value: &str) -> FnResult<()> {
    checked_header("msg.add_header", name, value)?;
    sandbox::push_action(Action::AddHeader { name: name.to_string(), value: value.to_string() });
    Ok(())
}

/// `msg.remove_header(name)`: removes every field of that name (any case).
///
/// ```rhai
/// fn data(ctx, msg) { msg.remove_header("X-Originating-IP"); }
/// ```
pub(crate) fn msg_remove_header(_: &mut MessageView, name: &str) -> FnResult<()> {
    headers::check_name(name).map_err(|e| format!("msg.remove_header: {e}"))?;
    sandbox::push_action(Action::RemoveHeader { name: name.to_string() });
    Ok(())
}

/// `msg.set_subject(text)`: replaces the Subject (non-ASCII text is RFC 2047 encoded).
///
/// ```rhai
/// fn data(ctx, msg) { msg.set_subject("[ext] " + msg.subject); }
/// ```
pub(crate) fn msg_set_subject(_: &mut MessageView, text: &str) -> FnResult<()> {
    headers::check_value(text).map_err(|e| format!("msg.set_subject: {e}"))?;
    sandbox::push_action(Action::SetSubject { text: text.to_string() });
    Ok(())
}

/// `msg.file_into(folder)`: delivers into a Maildir++ folder (`"Lists/Rust"` → `.Lists.Rust`)
/// instead of INBOX; twice means a copy in each. In `fetched`: move on the server.
///
/// ```rhai
/// fn data(ctx, msg) { if msg.has_header("List-Id") { msg.file_into("Lists/Rust"); } }
/// ```
pub(crate) fn msg_file_into(_: &mut MessageView, folder: &str) -> FnResult<()> {
    check_folder(folder)?;
    sandbox::push_action(Action::FileInto { folder: folder.to_string() });
    Ok(())
}

/// `msg.forward(addr)`: sends a copy to `addr`; the original is still delivered.
///
/// ```rhai
/// fn data(ctx, msg) { if msg.subject.contains("[alert]") { msg.forward("me@phone.example"); } }
/// ```
pub(crate) fn msg_forward(_: &mut MessageView, addr: &str) -> FnResult<()> {
    let addr = checked_address("msg.forward", addr)?;
    sandbox::push_action(Action::Forward { addr });
    Ok(())
}

/// `msg.redirect(addr)`: sends the message to `addr` instead of delivering it locally.
///
/// ```rhai
/// fn data(ctx, msg) { if "old@example.org" in ctx.recipients { msg.redirect("new@elsewhere.example"); } }
/// ```
pub(crate) fn msg_redirect(_: &mut MessageView, addr: &str) -> FnResult<()> {
    let addr = checked_address("msg.redirect", addr)?;
    sandbox::push_action(Action::Redirect { addr });
    Ok(())
}

/// `msg.reply(#{ body, subject?, from? })`: an automatic reply to the sender, under RFC 3834's
/// rules (never to bounces, lists or other auto-replies). Unknown options are an error.
///
/// ```rhai
/// fn data(ctx, msg) { msg.reply(#{ subject: "Received: " + msg.subject, body: "Thanks, we got it." }); }
/// ```
fn msg_reply(_: &mut MessageView, options: Map) -> FnResult<()> {
    let spec = reply_spec(options)?;
    sandbox::push_action(Action::Reply(spec));
    Ok(())
}

pub(crate) fn register_reply(engine: &mut Engine) {
    engine.register_fn("reply", msg_reply);
}

/// `msg.vacation(#{ body, days?, subject?, from?, addresses? })`: like `reply`, but at most
/// once per sender every `days` (default 7, 1..=365).
///
/// ```rhai
/// fn data(ctx, msg) { msg.vacation(#{ days: 7, subject: "Away", body: "Back on Monday." }); }
/// ```
fn msg_vacation(_: &mut MessageView, options: Map) -> FnResult<()> {
    let spec = vacation_spec(options)?;
    sandbox::push_action(Action::Vacation(spec));
    Ok(())
}

pub(crate) fn register_vacation(engine: &mut Engine) {
    engine.register_fn("vacation", msg_vacation);
}

/// `msg.flag(flag)`: sets an IMAP flag (`"\\Flagged"`, `"\\Seen"`, ... or a keyword). At
/// `data` the system flags become Maildir info letters (`:2,F`).
///
/// ```rhai
/// fn data(ctx, msg) { if msg.from == "boss@example.org" { msg.flag("\\Flagged"); } }
/// ```
pub(crate) fn msg_flag(_: &mut MessageView, flag: &str) -> FnResult<()> {
    check_flag(flag)?;
    sandbox::push_action(Action::Flag { flag: flag.to_string() });
    Ok(())
}

/// `msg.mark_seen()`: marks the message read (`\Seen`; Maildir `:2,S` at `data`).
///
/// ```rhai
/// fn data(ctx, msg) { if msg.has_header("List-Unsubscribe") { msg.mark_seen(); } }
/// ```
pub(crate) fn msg_mark_seen(_: &mut MessageView) -> FnResult<()> {
    sandbox::push_action(Action::MarkSeen);
    Ok(())
}

/// `msg.delete()`: deletes the message on the server, in `fetched` only (at SMTP stages use
/// `discard()`; calling it there is a script error).
///
/// ```rhai
/// fn fetched(ctx, msg) { if msg.header("X-Spam-Flag") == "YES" { msg.delete(); } }
/// ```
pub(crate) fn msg_delete(_: &mut MessageView) -> FnResult<()> {
    if sandbox::stage() != Stage::Fetched {
        return err("msg.delete() is only available in the fetched stage; use discard() at SMTP stages");
    }
    sandbox::push_action(Action::Delete);
    Ok(())
}

fn checked_header(what: &str, name: &str, value: &str) -> FnResult<()> {
    headers::check_name(name).map_err(|e| format!("{what}: {e}"))?;
    headers::check_value(value).map_err(|e| format!("{what}({name:?}): {e}"))?;
    Ok(())
}

fn checked_address(what: &str, addr: &str) -> FnResult<String> {
    parse_mailbox(addr.trim(), true).map(|m| m.as_string()).map_err(|e| format!("{what}({addr:?}): {e}").into())
}

/// Maildir++ / IMAP folder names: path segments separated by `/` (or `.`), no empty, `.` or
/// `..` segment, no control characters.
fn check_folder(folder: &str) -> FnResult<()> {
    let bad = folder.is_empty()
        || folder.len() > 200
        || folder.chars().any(|c| c.is_control())
        || folder.split(['/', '.']).any(|seg| seg.is_empty() || seg == "..")
        || folder.starts_with('/');
    if bad {
        return err(format!("msg.file_into({folder:?}): invalid folder name"));
    }
    Ok(())
}

/// IMAP system flags (`\Seen`...) or keywords (atoms).
fn check_flag(flag: &str) -> FnResult<()> {
    let atom = flag.strip_prefix('\\').unwrap_or(flag);
    let ok = !atom.is_empty()
        && atom.len() <= 64
        && atom.bytes().all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b));
    if ok {
        Ok(())
    } else {
        err(format!("msg.flag({flag:?}): invalid flag"))
    }
}

fn take_string(options: &mut Map, key: &str, what: &str) -> FnResult<Option<String>> {
    match options.remove(key) {
        None => Ok(None),
        Some(v) if v.is_string() => Ok(Some(v.into_string().unwrap_or_default())),
        Some(v) => err(format!("{what}: '{key}' must be a string, not {}", v.type_name())),
    }
}

fn no_unknown_keys(options: &Map, what: &str) -> FnResult<()> {
    match options.keys().next() {
        Some(key) => err(format!("{what}: unknown option '{key}'")),
        None => Ok(()),
    }
}

fn reply_spec(mut options: Map) -> FnResult<ReplySpec> {
    let what = "msg.reply";
    let subject = take_string(&mut options, "subject", what)?;
    let body = take_string(&mut options, "body", what)?.ok_or_else(|| format!("{what}: 'body' is required"))?;
    let from = take_string(&mut options, "from", what)?;
    no_unknown_keys(&options, what)?;
    if let Some(s) = &subject {
        headers::check_value(s).map_err(|e| format!("{what}: subject: {e}"))?;
    }
    let from = from.map(|f| checked_address(what, &f)).transpose()?;
    Ok(ReplySpec { subject, body, from })
}

fn vacation_spec(mut options: Map) -> FnResult<VacationSpec> {
    let what = "msg.vacation";
    let days = match options.remove("days") {
        None => 7,
        Some(v) => v.as_int().map_err(|t| format!("{what}: 'days' must be an integer, not {t}"))?,
    };
    if !(1..=365).contains(&days) {
        return err(format!("{what}: 'days' must be between 1 and 365"));
    }
    let subject = take_string(&mut options, "subject", what)?;
    let body = take_string(&mut options, "body", what)?.ok_or_else(|| format!("{what}: 'body' is required"))?;
    let from = take_string(&mut options, "from", what)?;
    let addresses = match options.remove("addresses") {
        None => Vec::new(),
        Some(v) => {
            let array = v.into_array().map_err(|t| format!("{what}: 'addresses' must be an array, not {t}"))?;
            array
                .into_iter()
                .map(|a| a.into_string().map_err(|t| format!("{what}: 'addresses' must hold strings, not {t}")))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    no_unknown_keys(&options, what)?;
    if let Some(s) = &subject {
        headers::check_value(s).map_err(|e| format!("{what}: subject: {e}"))?;
    }
    let from = from.map(|f| checked_address(what, &f)).transpose()?;
    Ok(VacationSpec { days, subject, body, from, addresses })
}

// --- verdicts --------------------------------------------------------------------------------

// `accept()`, `reject(...)`, `tempfail(...)`, `discard()`: return one from a stage function to
// decide; return nothing (or any other value) to pass to the next file.

pub(crate) fn register_verdict_to_string(engine: &mut Engine) {
    engine.register_fn("to_string", |v: &mut Verdict| v.to_string());
}

/// `accept()`: accepts and ends this stage's chain (later files do not run for this stage).
///
/// ```rhai
/// fn rcpt_to(ctx) { if ctx.remote_ip == "127.0.0.1" { return accept(); } }
/// ```
pub(crate) fn accept() -> FnResult<Verdict> {
    Ok(Verdict::Accept)
}

/// `reject()`: a permanent refusal, `550 5.7.1 Rejected by policy` (`554` at `connect`).
///
/// ```rhai
/// fn helo(ctx) { if ctx.helo == "" { return reject(); } }
/// ```
pub(crate) fn reject_default() -> FnResult<Verdict> {
    Ok(reject(None, "Rejected by policy"))
}

/// `reject(text)`: `550` (`554` at `connect`) with `text`; a leading enhanced status code in
/// the text (`"5.1.1 no such user"`) replaces the default `5.7.1`.
///
/// ```rhai
/// fn rcpt_to(ctx) { if ctx.rcpt == "gone@example.org" { return reject("5.1.1 no such user"); } }
/// ```
pub(crate) fn reject_text(text: &str) -> FnResult<Verdict> {
    Ok(reject(None, text))
}

/// `reject(code, text)`: a permanent refusal with a 5xx code of your choice.
///
/// ```rhai
/// fn mail_from(ctx) { if ctx.sender.ends_with("@spam.example") { return reject(553, "5.7.1 no"); } }
/// ```
pub(crate) fn reject_code(code: i64, text: &str) -> FnResult<Verdict> {
    match u16::try_from(code) {
        Ok(code) if (500..=599).contains(&code) => Ok(reject(Some(code), text)),
        _ => err(format!("reject({code}, ...): the code must be 5xx")),
    }
}

/// `tempfail()`: a temporary refusal, `451 4.7.1 Try again later` (`421` and close at
/// `connect`).
///
/// ```rhai
/// fn mail_from(ctx) { if ctx.sender == "" && ctx.helo == "" { return tempfail(); } }
/// ```
pub(crate) fn tempfail_default() -> FnResult<Verdict> {
    Ok(tempfail(451, "Try again later"))
}

/// `tempfail(text)`: `451` with `text` (its own `4.x.x` code may lead the text).
///
/// ```rhai
/// fn data(ctx, msg) { if msg.size == 0 { return tempfail("4.3.0 empty, try again"); } }
/// ```
pub(crate) fn tempfail_text(text: &str) -> FnResult<Verdict> {
    Ok(tempfail(451, text))
}

/// `tempfail(code, text)`: a temporary refusal with a 4xx code of your choice.
///
/// ```rhai
/// fn rcpt_to(ctx) { if ctx.rcpt == "full@example.org" { return tempfail(452, "4.2.2 mailbox full"); } }
/// ```
pub(crate) fn tempfail_code(code: i64, text: &str) -> FnResult<Verdict> {
    match u16::try_from(code) {
        Ok(code) if (400..=499).contains(&code) => Ok(tempfail(code, text)),
        _ => err(format!("tempfail({code}, ...): the code must be 4xx")),
    }
}

/// `discard()`: answers `250` and drops the message silently (`data` and `fetched` only;
/// elsewhere a script error).
///
/// ```rhai
/// fn data(ctx, msg) { if msg.header("X-Spam-Flag") == "YES" { return discard(); } }
/// ```
pub(crate) fn discard() -> FnResult<Verdict> {
    match sandbox::stage() {
        Stage::Data | Stage::Fetched => Ok(Verdict::Discard),
        stage => err(format!("discard() is only available in the data and fetched stages, not {stage}")),
    }
}

fn reject(code: Option<u16>, text: &str) -> Verdict {
    let default = if sandbox::stage() == Stage::Connect { 554 } else { 550 };
    let reply = crate::proto::reply::Reply::from_script(code.unwrap_or(default), "5.7.1", text);
    Verdict::Reject { code: reply.code, status: reply.status.into_owned(), text: reply.lines.concat() }
}

fn tempfail(code: u16, text: &str) -> Verdict {
    let reply = crate::proto::reply::Reply::from_script(code, "4.7.1", text);
    Verdict::Tempfail { code: reply.code, status: reply.status.into_owned(), text: reply.lines.concat() }
}
