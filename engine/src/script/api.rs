//! The script API of SPEC §4, registered into the rhai engine: the `ctx` and `msg` types and
//! their getters, the verdict functions and the actions. Full reference with examples:
//! `docs/scripting.md`.
//!
//! Security: every value a script hands back is checked here (header names and values,
//! addresses, folder names, reply codes) before it becomes an [`Action`] or a [`Verdict`], so a
//! script cannot inject a header line, a recipient or a reply line.

use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map};

use super::context::ScriptCtx;
use super::decision::{Action, ReplySpec, Stage, VacationSpec, Verdict};
use super::sandbox;
use crate::message::headers;
use crate::message::MessageView;
use crate::smtp::address::parse_mailbox;

type FnResult<T> = Result<T, Box<EvalAltResult>>;

fn err<T>(message: impl Into<String>) -> FnResult<T> {
    Err(message.into().into())
}

fn strings(values: &[String]) -> Array {
    values.iter().map(|v| Dynamic::from(v.clone())).collect()
}

/// Registers the whole API into `engine`.
pub fn register(engine: &mut Engine) {
    register_ctx(engine);
    register_msg(engine);
    register_verdicts(engine);
    engine.register_fn("log", |text: ImmutableString| sandbox::log_line(&text));
    engine.register_fn("log", |value: Dynamic| sandbox::log_line(&value.to_string()));
    engine.on_print(sandbox::log_line);
    engine.on_debug(|text, _, _| sandbox::log_line(text));
}

/// `ctx`: getters for SPEC §4's fields, plus `add_rcpt` / `remove_rcpt`.
fn register_ctx(engine: &mut Engine) {
    engine.register_type_with_name::<ScriptCtx>("Ctx");
    engine.register_get("remote_ip", |c: &mut ScriptCtx| c.0.remote_ip.clone());
    engine.register_get("helo", |c: &mut ScriptCtx| c.0.helo.clone());
    engine.register_get("tls", |c: &mut ScriptCtx| c.0.tls);
    engine.register_get("auth_user", |c: &mut ScriptCtx| c.0.auth_user.clone());
    engine.register_get("sender", |c: &mut ScriptCtx| c.0.sender.clone());
    engine.register_get("rcpt", |c: &mut ScriptCtx| c.0.rcpt.clone());
    engine.register_get("recipients", |c: &mut ScriptCtx| strings(&c.0.recipients));
    engine.register_get("account", |c: &mut ScriptCtx| c.0.account.clone());
    engine.register_get("protocol", |c: &mut ScriptCtx| c.0.protocol.clone());
    engine.register_get("mailbox", |c: &mut ScriptCtx| c.0.mailbox.clone());
    engine.register_get("uid", |c: &mut ScriptCtx| c.0.uid.clone());
    engine.register_fn("add_rcpt", |_: &mut ScriptCtx, addr: &str| -> FnResult<()> {
        envelope_stage("ctx.add_rcpt")?;
        let mailbox = parse_mailbox(addr.trim(), true).map_err(|e| format!("ctx.add_rcpt({addr:?}): {e}"))?;
        sandbox::push_action(Action::AddRcpt { addr: mailbox.as_string() });
        Ok(())
    });
    engine.register_fn("remove_rcpt", |_: &mut ScriptCtx, addr: &str| -> FnResult<()> {
        envelope_stage("ctx.remove_rcpt")?;
        sandbox::push_action(Action::RemoveRcpt { addr: addr.trim().to_string() });
        Ok(())
    });
}

/// Recipient edits make sense once there is an envelope with recipients.
fn envelope_stage(what: &str) -> FnResult<()> {
    match sandbox::stage() {
        Stage::RcptTo | Stage::Data => Ok(()),
        stage => err(format!("{what} is only available in the rcpt_to and data stages, not {stage}")),
    }
}

/// `msg`: lazily parsed getters and the message actions.
fn register_msg(engine: &mut Engine) {
    engine.register_type_with_name::<MessageView>("Msg");
    engine.register_get("subject", |m: &mut MessageView| m.parsed().subject.clone());
    engine.register_get("from", |m: &mut MessageView| m.parsed().from.clone());
    engine.register_get("to", |m: &mut MessageView| strings(&m.parsed().to));
    engine.register_get("cc", |m: &mut MessageView| strings(&m.parsed().cc));
    engine.register_get("date", |m: &mut MessageView| m.parsed().date.clone());
    engine.register_get("message_id", |m: &mut MessageView| m.parsed().message_id.clone());
    engine.register_get("body_text", |m: &mut MessageView| m.parsed().body_text.clone());
    engine.register_get("body_html", |m: &mut MessageView| m.parsed().body_html.clone());
    engine.register_get("size", |m: &mut MessageView| m.size() as i64);
    engine.register_get("raw", |m: &mut MessageView| String::from_utf8_lossy(m.raw()).into_owned());
    engine.register_get("flags", |m: &mut MessageView| strings(m.flags()));
    engine.register_get("attachments", |m: &mut MessageView| -> Array {
        m.parsed()
            .attachments
            .iter()
            .map(|a| {
                let mut map = Map::new();
                map.insert("name".into(), a.name.clone().into());
                map.insert("content_type".into(), a.content_type.clone().into());
                map.insert("size".into(), (a.size as i64).into());
                Dynamic::from_map(map)
            })
            .collect()
    });
    engine.register_fn("header", |m: &mut MessageView, name: &str| m.header(name));
    engine.register_fn("headers", |m: &mut MessageView, name: &str| strings(&m.headers(name)));
    engine.register_fn("has_header", |m: &mut MessageView, name: &str| m.has_header(name));

    engine.register_fn("set_header", |_: &mut MessageView, name: &str, value: &str| -> FnResult<()> {
        checked_header("msg.set_header", name, value)?;
        sandbox::push_action(Action::SetHeader { name: name.to_string(), value: value.to_string() });
        Ok(())
    });
    engine.register_fn("add_header", |_: &mut MessageView, name: &str, value: &str| -> FnResult<()> {
        checked_header("msg.add_header", name, value)?;
        sandbox::push_action(Action::AddHeader { name: name.to_string(), value: value.to_string() });
        Ok(())
    });
    engine.register_fn("remove_header", |_: &mut MessageView, name: &str| -> FnResult<()> {
        headers::check_name(name).map_err(|e| format!("msg.remove_header: {e}"))?;
        sandbox::push_action(Action::RemoveHeader { name: name.to_string() });
        Ok(())
    });
    engine.register_fn("set_subject", |_: &mut MessageView, text: &str| -> FnResult<()> {
        headers::check_value(text).map_err(|e| format!("msg.set_subject: {e}"))?;
        sandbox::push_action(Action::SetSubject { text: text.to_string() });
        Ok(())
    });
    engine.register_fn("file_into", |_: &mut MessageView, folder: &str| -> FnResult<()> {
        check_folder(folder)?;
        sandbox::push_action(Action::FileInto { folder: folder.to_string() });
        Ok(())
    });
    engine.register_fn("forward", |_: &mut MessageView, addr: &str| -> FnResult<()> {
        let addr = checked_address("msg.forward", addr)?;
        sandbox::push_action(Action::Forward { addr });
        Ok(())
    });
    engine.register_fn("redirect", |_: &mut MessageView, addr: &str| -> FnResult<()> {
        let addr = checked_address("msg.redirect", addr)?;
        sandbox::push_action(Action::Redirect { addr });
        Ok(())
    });
    engine.register_fn("reply", |_: &mut MessageView, options: Map| -> FnResult<()> {
        let spec = reply_spec(options)?;
        sandbox::push_action(Action::Reply(spec));
        Ok(())
    });
    engine.register_fn("vacation", |_: &mut MessageView, options: Map| -> FnResult<()> {
        let spec = vacation_spec(options)?;
        sandbox::push_action(Action::Vacation(spec));
        Ok(())
    });
    engine.register_fn("flag", |_: &mut MessageView, flag: &str| -> FnResult<()> {
        check_flag(flag)?;
        sandbox::push_action(Action::Flag { flag: flag.to_string() });
        Ok(())
    });
    engine.register_fn("mark_seen", |_: &mut MessageView| sandbox::push_action(Action::MarkSeen));
    engine.register_fn("delete", |_: &mut MessageView| -> FnResult<()> {
        if sandbox::stage() != Stage::Fetched {
            return err("msg.delete() is only available in the fetched stage; use discard() at SMTP stages");
        }
        sandbox::push_action(Action::Delete);
        Ok(())
    });
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

/// `accept()`, `reject(...)`, `tempfail(...)`, `discard()`.
fn register_verdicts(engine: &mut Engine) {
    engine.register_type_with_name::<Verdict>("Verdict");
    engine.register_fn("accept", || Verdict::Accept);
    engine.register_fn("reject", || reject(None, "Rejected by policy"));
    engine.register_fn("reject", |text: &str| reject(None, text));
    engine.register_fn("reject", |code: i64, text: &str| -> FnResult<Verdict> {
        if !(500..=599).contains(&code) {
            return err(format!("reject({code}, ...): the code must be 5xx"));
        }
        Ok(reject(Some(code as u16), text))
    });
    engine.register_fn("tempfail", || tempfail(451, "Try again later"));
    engine.register_fn("tempfail", |text: &str| tempfail(451, text));
    engine.register_fn("tempfail", |code: i64, text: &str| -> FnResult<Verdict> {
        if !(400..=499).contains(&code) {
            return err(format!("tempfail({code}, ...): the code must be 4xx"));
        }
        Ok(tempfail(code as u16, text))
    });
    engine.register_fn("discard", || -> FnResult<Verdict> {
        match sandbox::stage() {
            Stage::Data | Stage::Fetched => Ok(Verdict::Discard),
            stage => err(format!("discard() is only available in the data and fetched stages, not {stage}")),
        }
    });
    engine.register_fn("to_string", |v: &mut Verdict| v.to_string());
}

fn reject(code: Option<u16>, text: &str) -> Verdict {
    let default = if sandbox::stage() == Stage::Connect { 554 } else { 550 };
    let reply = crate::smtp::reply::Reply::from_script(code.unwrap_or(default), "5.7.1", text);
    Verdict::Reject { code: reply.code, status: reply.status, text: reply.lines.concat() }
}

fn tempfail(code: u16, text: &str) -> Verdict {
    let reply = crate::smtp::reply::Reply::from_script(code, "4.7.1", text);
    Verdict::Tempfail { code: reply.code, status: reply.status, text: reply.lines.concat() }
}
