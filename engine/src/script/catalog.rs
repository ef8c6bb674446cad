//! The script API as data: one [`Entry`] per `ctx`/`msg` getter, string and list method,
//! verdict and action (docs/scripting.md).
//!
//! Both evaluators read it. [`api::register`](super::api::register) registers rhai's side of
//! every entry; the native tier ([`native`](super::native)) translates and runs calls through
//! the same entries, with the same function pointers. An API function registered anywhere else
//! fails the test below, so a new getter cannot leave rules on the slow path unnoticed: either
//! it gets a native shape here, or it is an [`Imp::RhaiOnly`] entry and `mailflow check
//! --explain` names it as what keeps a function in rhai.
//!
//! Limits: the native tier only runs the shapes of [`Imp`] (no maps, floats or arrays it has to
//! build). Security: the functions referenced here are `api`'s, which check every value a
//! script hands them.

use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, NativeCallContext};

use super::api::{self, FnResult};
use super::context::{Context, ScriptCtx};
use super::decision::Verdict;
use super::sandbox;
use crate::message::MessageView;

/// What a call is made on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    Ctx,
    Msg,
    /// A string value (rhai's standard library).
    Str,
    /// A list of strings (rhai's standard library on arrays).
    List,
    /// A verdict value.
    Verdict,
    /// A plain function: `accept()`, `log(text)`.
    Global,
}

/// `ctx.sender` (a property) or `msg.header("X")` (a method, or a plain function call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Property,
    Method,
}

/// The static types of the native subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Int,
    Bool,
    /// A list of strings, read where it lives.
    List,
    Verdict,
    /// An action: only a statement.
    Unit,
}

/// String methods of rhai's standard library, run natively the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrOp {
    Contains,
    StartsWith,
    EndsWith,
    ToLower,
    ToUpper,
    Len,
    IsEmpty,
}

/// Methods of rhai's arrays the native tier runs on lists of strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListOp {
    Contains,
    Len,
    IsEmpty,
}

/// How an entry is evaluated: the API function itself, typed by its shape. rhai gets it
/// wrapped by [`Entry::register`]; the native tier calls the same pointer.
#[derive(Clone, Copy)]
pub enum Imp {
    CtxStr(fn(&Context) -> &str),
    CtxBool(fn(&Context) -> bool),
    CtxList(fn(&Context) -> &[String]),
    MsgStr(fn(&MessageView) -> &str),
    MsgInt(fn(&MessageView) -> i64),
    MsgList(fn(&MessageView) -> &[String]),
    MsgStrOf(fn(&MessageView, &str) -> String),
    MsgBoolOf(fn(&MessageView, &str) -> bool),
    /// Every value, and (count, raw bytes) to answer `len`/`is_empty` without building them.
    MsgListOf(fn(&MessageView, &str) -> Vec<String>, fn(&MessageView, &str) -> (usize, usize)),
    CtxAction1(fn(&mut ScriptCtx, &str) -> FnResult<()>),
    MsgAction0(fn(&mut MessageView) -> FnResult<()>),
    MsgAction1(fn(&mut MessageView, &str) -> FnResult<()>),
    MsgAction2(fn(&mut MessageView, &str, &str) -> FnResult<()>),
    Verdict0(fn() -> FnResult<Verdict>),
    Verdict1(fn(&str) -> FnResult<Verdict>),
    Verdict2(fn(i64, &str) -> FnResult<Verdict>),
    Log(fn(ImmutableString)),
    /// Registered by rhai's standard library.
    Str(StrOp),
    List(ListOp),
    /// rhai only: registers itself; the native tier leaves a function using it to rhai.
    RhaiOnly(fn(&mut Engine)),
}

/// One function of the script API.
pub struct Entry {
    pub recv: Recv,
    pub form: Form,
    pub name: &'static str,
    pub imp: Imp,
}

const fn e(recv: Recv, form: Form, name: &'static str, imp: Imp) -> Entry {
    Entry { recv, form, name, imp }
}

use Form::{Method as M, Property as P};
use Recv::{Ctx, Global as G, List as L, Msg, Str as S};

/// The whole script API, in the order of docs/scripting.md.
pub static ENTRIES: &[Entry] = &[
    e(Ctx, P, "remote_ip", Imp::CtxStr(api::ctx_remote_ip)),
    e(Ctx, P, "helo", Imp::CtxStr(api::ctx_helo)),
    e(Ctx, P, "tls", Imp::CtxBool(api::ctx_tls)),
    e(Ctx, P, "auth_user", Imp::CtxStr(api::ctx_auth_user)),
    e(Ctx, P, "listener", Imp::CtxStr(api::ctx_listener)),
    e(Ctx, P, "sender", Imp::CtxStr(api::ctx_sender)),
    e(Ctx, P, "rcpt", Imp::CtxStr(api::ctx_rcpt)),
    e(Ctx, P, "recipients", Imp::CtxList(api::ctx_recipients)),
    e(Ctx, P, "account", Imp::CtxStr(api::ctx_account)),
    e(Ctx, P, "protocol", Imp::CtxStr(api::ctx_protocol)),
    e(Ctx, P, "mailbox", Imp::CtxStr(api::ctx_mailbox)),
    e(Ctx, P, "uid", Imp::CtxStr(api::ctx_uid)),
    e(Ctx, P, "spf", Imp::RhaiOnly(super::api_auth::register_spf)),
    e(Ctx, P, "iprev", Imp::RhaiOnly(super::api_auth::register_iprev)),
    e(Ctx, M, "add_rcpt", Imp::CtxAction1(api::ctx_add_rcpt)),
    e(Ctx, M, "remove_rcpt", Imp::CtxAction1(api::ctx_remove_rcpt)),
    e(Msg, P, "subject", Imp::MsgStr(api::msg_subject)),
    e(Msg, P, "from", Imp::MsgStr(api::msg_from)),
    e(Msg, P, "to", Imp::MsgList(api::msg_to)),
    e(Msg, P, "cc", Imp::MsgList(api::msg_cc)),
    e(Msg, P, "date", Imp::MsgStr(api::msg_date)),
    e(Msg, P, "message_id", Imp::MsgStr(api::msg_message_id)),
    e(Msg, P, "body_text", Imp::RhaiOnly(api::register_body_text)),
    e(Msg, P, "body_html", Imp::RhaiOnly(api::register_body_html)),
    e(Msg, P, "size", Imp::MsgInt(api::msg_size)),
    e(Msg, P, "auth", Imp::RhaiOnly(super::api_auth::register_auth)),
    e(Msg, P, "raw", Imp::RhaiOnly(api::register_raw)),
    e(Msg, P, "flags", Imp::MsgList(api::msg_flags)),
    e(Msg, P, "attachments", Imp::RhaiOnly(api::register_attachments)),
    e(Msg, M, "header", Imp::MsgStrOf(api::msg_header)),
    e(Msg, M, "headers", Imp::MsgListOf(api::msg_headers, MessageView::header_count)),
    e(Msg, M, "has_header", Imp::MsgBoolOf(api::msg_has_header)),
    e(Msg, M, "set_header", Imp::MsgAction2(api::msg_set_header)),
    e(Msg, M, "add_header", Imp::MsgAction2(api::msg_add_header)),
    e(Msg, M, "remove_header", Imp::MsgAction1(api::msg_remove_header)),
    e(Msg, M, "set_subject", Imp::MsgAction1(api::msg_set_subject)),
    e(Msg, M, "file_into", Imp::MsgAction1(api::msg_file_into)),
    e(Msg, M, "forward", Imp::MsgAction1(api::msg_forward)),
    e(Msg, M, "redirect", Imp::MsgAction1(api::msg_redirect)),
    e(Msg, M, "reply", Imp::RhaiOnly(api::register_reply)),
    e(Msg, M, "vacation", Imp::RhaiOnly(api::register_vacation)),
    e(Msg, M, "flag", Imp::MsgAction1(api::msg_flag)),
    e(Msg, M, "mark_seen", Imp::MsgAction0(api::msg_mark_seen)),
    e(Msg, M, "delete", Imp::MsgAction0(api::msg_delete)),
    e(G, M, "accept", Imp::Verdict0(api::accept)),
    e(G, M, "reject", Imp::Verdict0(api::reject_default)),
    e(G, M, "reject", Imp::Verdict1(api::reject_text)),
    e(G, M, "reject", Imp::Verdict2(api::reject_code)),
    e(G, M, "tempfail", Imp::Verdict0(api::tempfail_default)),
    e(G, M, "tempfail", Imp::Verdict1(api::tempfail_text)),
    e(G, M, "tempfail", Imp::Verdict2(api::tempfail_code)),
    e(G, M, "discard", Imp::Verdict0(api::discard)),
    e(Recv::Verdict, M, "to_string", Imp::RhaiOnly(api::register_verdict_to_string)),
    e(G, M, "log", Imp::Log(api::log_text)),
    e(G, M, "log", Imp::RhaiOnly(api::register_log_value)),
    e(G, M, "log", Imp::RhaiOnly(api::register_log_float)),
    e(S, M, "contains", Imp::Str(StrOp::Contains)),
    e(S, M, "starts_with", Imp::Str(StrOp::StartsWith)),
    e(S, M, "ends_with", Imp::Str(StrOp::EndsWith)),
    e(S, M, "to_lower", Imp::Str(StrOp::ToLower)),
    e(S, M, "to_upper", Imp::Str(StrOp::ToUpper)),
    e(S, M, "len", Imp::Str(StrOp::Len)),
    e(S, P, "len", Imp::Str(StrOp::Len)),
    e(S, M, "is_empty", Imp::Str(StrOp::IsEmpty)),
    e(S, P, "is_empty", Imp::Str(StrOp::IsEmpty)),
    e(L, M, "contains", Imp::List(ListOp::Contains)),
    e(L, M, "len", Imp::List(ListOp::Len)),
    e(L, P, "len", Imp::List(ListOp::Len)),
    e(L, M, "is_empty", Imp::List(ListOp::IsEmpty)),
    e(L, P, "is_empty", Imp::List(ListOp::IsEmpty)),
];

/// The entry for a call on `recv` of `name` with `args` arguments, if the API has one with a
/// native shape; `Err(true)` when the API has it but only rhai runs it.
pub fn lookup(recv: Recv, form: Form, name: &str, args: usize) -> Result<&'static Entry, bool> {
    let mut rhai_only = false;
    for entry in ENTRIES.iter().filter(|e| e.recv == recv && e.form == form && e.name == name) {
        match entry.signature() {
            Some((params, _)) if params.len() == args => return Ok(entry),
            Some(_) => {}
            None => rhai_only = true,
        }
    }
    Err(rhai_only)
}

impl Entry {
    /// Argument types (without the receiver) and return type; `None` for rhai-only entries.
    pub fn signature(&self) -> Option<(&'static [Ty], Ty)> {
        use Ty::*;
        Some(match self.imp {
            Imp::CtxStr(_) | Imp::MsgStr(_) => (&[], Str),
            Imp::CtxBool(_) => (&[], Bool),
            Imp::CtxList(_) | Imp::MsgList(_) => (&[], List),
            Imp::MsgInt(_) => (&[], Int),
            Imp::MsgStrOf(_) => (&[Str], Str),
            Imp::MsgBoolOf(_) => (&[Str], Bool),
            Imp::MsgListOf(..) => (&[Str], List),
            Imp::CtxAction1(_) | Imp::MsgAction1(_) | Imp::Log(_) => (&[Str], Unit),
            Imp::MsgAction0(_) => (&[], Unit),
            Imp::MsgAction2(_) => (&[Str, Str], Unit),
            Imp::Verdict0(_) => (&[], Verdict),
            Imp::Verdict1(_) => (&[Str], Verdict),
            Imp::Verdict2(_) => (&[Int, Str], Verdict),
            Imp::Str(StrOp::Contains | StrOp::StartsWith | StrOp::EndsWith) => (&[Str], Bool),
            Imp::Str(StrOp::ToLower | StrOp::ToUpper) => (&[], Str),
            Imp::Str(StrOp::Len) | Imp::List(ListOp::Len) => (&[], Int),
            Imp::Str(StrOp::IsEmpty) | Imp::List(ListOp::IsEmpty) => (&[], Bool),
            Imp::List(ListOp::Contains) => (&[Str], Bool),
            Imp::RhaiOnly(_) => return None,
        })
    }

    /// How scripts write it, for messages: `ctx.sender`, `msg.header()`, `reject()`.
    pub fn display(&self) -> String {
        let recv = match self.recv {
            Recv::Ctx => "ctx.",
            Recv::Msg => "msg.",
            Recv::Str => "string.",
            Recv::List => "list.",
            Recv::Verdict => "verdict.",
            Recv::Global => "",
        };
        let call = if self.form == Form::Method { "()" } else { "" };
        format!("{recv}{}{call}", self.name)
    }

    /// Registers rhai's side of the entry (standard-library entries are rhai's own).
    pub fn register(&self, engine: &mut Engine) {
        let name = self.name;
        match self.imp {
            Imp::CtxStr(f) => {
                engine.register_get(name, move |c: &mut ScriptCtx| -> ImmutableString { f(&c.0).into() });
            }
            Imp::CtxBool(f) => {
                engine.register_get(name, move |c: &mut ScriptCtx| f(&c.0));
            }
            Imp::CtxList(f) => {
                engine.register_get(name, move |c: &mut ScriptCtx| strings(f(&c.0)));
                engine.register_set(name, move |c: &mut ScriptCtx, v: Array| unchanged("ctx", name, f(&c.0), &v));
            }
            Imp::MsgStr(f) => {
                engine.register_get(name, move |m: &mut MessageView| -> ImmutableString { f(m).into() });
            }
            Imp::MsgInt(f) => {
                engine.register_get(name, move |m: &mut MessageView| f(m));
            }
            Imp::MsgList(f) => {
                engine.register_get(name, move |m: &mut MessageView| strings(f(m)));
                engine.register_set(name, move |m: &mut MessageView, v: Array| unchanged("msg", name, f(m), &v));
            }
            Imp::MsgStrOf(f) => {
                engine.register_fn(name, move |m: &mut MessageView, arg: &str| f(m, arg));
            }
            Imp::MsgBoolOf(f) => {
                engine.register_fn(name, move |m: &mut MessageView, arg: &str| f(m, arg));
            }
            Imp::MsgListOf(f, _) => {
                engine.register_fn(name, move |m: &mut MessageView, arg: &str| -> Array {
                    f(m, arg).into_iter().map(|v| Dynamic::from(ImmutableString::from(v))).collect()
                });
            }
            Imp::CtxAction1(f) => {
                engine.register_fn(name, f);
            }
            Imp::MsgAction0(f) => {
                engine.register_fn(name, f);
            }
            Imp::MsgAction1(f) => {
                engine.register_fn(name, f);
            }
            Imp::MsgAction2(f) => {
                engine.register_fn(name, f);
            }
            // Verdicts note their line: the trace says which line of the file decided.
            Imp::Verdict0(f) => {
                engine.register_fn(name, move |call: NativeCallContext| {
                    sandbox::note_verdict_line(call.call_position().line().unwrap_or(0));
                    f()
                });
            }
            Imp::Verdict1(f) => {
                engine.register_fn(name, move |call: NativeCallContext, text: &str| {
                    sandbox::note_verdict_line(call.call_position().line().unwrap_or(0));
                    f(text)
                });
            }
            Imp::Verdict2(f) => {
                engine.register_fn(name, move |call: NativeCallContext, code: i64, text: &str| {
                    sandbox::note_verdict_line(call.call_position().line().unwrap_or(0));
                    f(code, text)
                });
            }
            Imp::Log(f) => {
                engine.register_fn(name, f);
            }
            Imp::RhaiOnly(register) => register(engine),
            Imp::Str(_) | Imp::List(_) => {}
        }
    }
}

fn strings(values: &[String]) -> Array {
    values.iter().map(|v| Dynamic::from(ImmutableString::from(v.as_str()))).collect()
}

/// The setter of a read-only list property: accepts only the value the property already holds.
/// After a method call on a property (`ctx.recipients.len()`), rhai writes the value back
/// through the property's setter; with no setter it builds and drops two formatted errors
/// each time (≈ 3.5 k instructions, twice per message for the benchmark's rules). Assigning a
/// different list is refused as before.
fn unchanged(recv: &str, name: &str, current: &[String], new: &Array) -> FnResult<()> {
    let same = current.len() == new.len()
        && current.iter().zip(new).all(|(c, n)| n.as_immutable_string_ref().is_ok_and(|n| n.as_str() == c));
    if same {
        Ok(())
    } else {
        Err(EvalAltResult::ErrorDotExpr(format!("{recv}.{name} is read-only"), rhai::Position::NONE).into())
    }
}

#[cfg(test)]
#[path = "catalog_tests.rs"]
mod tests;
