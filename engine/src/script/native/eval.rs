//! Running a translated stage function.

use std::borrow::Cow;

use rhai::{Dynamic, ImmutableString};

use super::{Call, CtxField, Expr, IntOp, List, MsgField, NativeFn, Stmt, StrTest, MAX_LOCALS};
use crate::message::MessageView;
use crate::script::api;
use crate::script::context::ScriptCtx;
use crate::script::decision::Verdict;
use crate::script::set::{MAX_ARRAY_SIZE, MAX_STRING_SIZE};

impl NativeFn {
    /// Runs the function: its return value as rhai's call would give it (a verdict or unit).
    /// `None`: something failed (or would have failed in rhai); drop what the call collected
    /// and run the function in rhai, which reports the error.
    pub fn run(&self, ctx: &ScriptCtx, msg: Option<&MessageView>) -> Option<Dynamic> {
        let mut run = Run { ctx, msg, locals: Default::default() };
        let (Flow::Next(value) | Flow::Return(value)) = run.block(&self.body)?;
        Some(value.map_or(Dynamic::UNIT, Dynamic::from))
    }
}

/// How a statement ended, with the verdict it evaluated to, if any (a block's value is its
/// last statement's, as in rhai; only verdicts matter to the caller).
enum Flow {
    Next(Option<Verdict>),
    Return(Option<Verdict>),
}

/// What a list expression computes.
enum ListOp<'n> {
    Len,
    Empty,
    Has(&'n str),
}

enum Val<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Bool(bool),
    Unit,
    Verdict(Verdict),
}

struct Run<'a> {
    ctx: &'a ScriptCtx,
    msg: Option<&'a MessageView>,
    locals: [Option<Val<'a>>; MAX_LOCALS],
}

impl<'a> Run<'a> {
    fn block(&mut self, stmts: &'a [Stmt]) -> Option<Flow> {
        let mut last = None;
        for stmt in stmts {
            match self.stmt(stmt)? {
                Flow::Next(value) => last = value,
                flow @ Flow::Return(_) => return Some(flow),
            }
        }
        Some(Flow::Next(last))
    }

    fn stmt(&mut self, stmt: &'a Stmt) -> Option<Flow> {
        match stmt {
            Stmt::If(cond, then, otherwise) => {
                if self.bool(cond)? {
                    self.block(then)
                } else {
                    self.block(otherwise)
                }
            }
            Stmt::Block(stmts) => self.block(stmts),
            Stmt::Let(slot, expr) => {
                let value = self.eval(expr)?;
                *self.locals.get_mut(*slot)? = Some(value);
                Some(Flow::Next(None))
            }
            Stmt::Return(None) => Some(Flow::Return(None)),
            Stmt::Return(Some(expr)) => Some(Flow::Return(verdict(self.eval(expr)?))),
            Stmt::Expr(expr) => Some(Flow::Next(verdict(self.eval(expr)?))),
        }
    }

    fn bool(&mut self, expr: &'a Expr) -> Option<bool> {
        match self.eval(expr)? {
            Val::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn int(&mut self, expr: &'a Expr) -> Option<i64> {
        match self.eval(expr)? {
            Val::Int(i) => Some(i),
            _ => None,
        }
    }

    fn str(&mut self, expr: &'a Expr) -> Option<Cow<'a, str>> {
        match self.eval(expr)? {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    fn eval(&mut self, expr: &'a Expr) -> Option<Val<'a>> {
        let value = match expr {
            Expr::Str(s) => Val::Str(Cow::Borrowed(s.as_str())),
            Expr::Int(i) => Val::Int(*i),
            Expr::Bool(b) => Val::Bool(*b),
            Expr::Local(slot) => match self.locals.get(*slot)?.as_ref()? {
                Val::Str(s) => Val::Str(s.clone()),
                Val::Int(i) => Val::Int(*i),
                Val::Bool(b) => Val::Bool(*b),
                Val::Unit | Val::Verdict(_) => return None,
            },
            Expr::Tls => Val::Bool(self.ctx.0.tls),
            Expr::Ctx(field) => checked(Cow::Borrowed(ctx_str(self.ctx, *field)))?,
            Expr::Size => Val::Int(i64::try_from(self.msg?.size()).unwrap_or(i64::MAX)),
            Expr::Msg(field) => {
                let m = self.msg?;
                let s = match field {
                    MsgField::Subject => m.subject(),
                    MsgField::From => m.from(),
                    MsgField::Date => m.date(),
                    MsgField::MessageId => m.message_id(),
                };
                checked(Cow::Borrowed(s))?
            }
            Expr::Header(name) => {
                let name = self.str(name)?;
                checked(Cow::Owned(self.msg?.header(&name)))?
            }
            Expr::HasHeader(name) => {
                let name = self.str(name)?;
                Val::Bool(self.msg?.has_header(&name))
            }
            Expr::Not(b) => Val::Bool(!self.bool(b)?),
            Expr::And(operands) => {
                for operand in operands {
                    if !self.bool(operand)? {
                        return Some(Val::Bool(false));
                    }
                }
                Val::Bool(true)
            }
            Expr::Or(operands) => {
                for operand in operands {
                    if self.bool(operand)? {
                        return Some(Val::Bool(true));
                    }
                }
                Val::Bool(false)
            }
            Expr::Eq(lhs, rhs, negate) => {
                let equal = match (self.eval(lhs)?, self.eval(rhs)?) {
                    (Val::Str(a), Val::Str(b)) => a == b,
                    (Val::Int(a), Val::Int(b)) => a == b,
                    (Val::Bool(a), Val::Bool(b)) => a == b,
                    _ => return None,
                };
                Val::Bool(equal != *negate)
            }
            Expr::IntCmp(lhs, rhs, op) => {
                let (a, b) = (self.int(lhs)?, self.int(rhs)?);
                Val::Bool(match op {
                    IntOp::Lt => a < b,
                    IntOp::Le => a <= b,
                    IntOp::Gt => a > b,
                    IntOp::Ge => a >= b,
                })
            }
            Expr::Concat(lhs, rhs) => {
                let mut s = self.str(lhs)?.into_owned();
                s.push_str(&self.str(rhs)?);
                checked(Cow::Owned(s))?
            }
            Expr::StrTest(test, haystack, needle) => {
                let (haystack, needle) = (self.str(haystack)?, self.str(needle)?);
                Val::Bool(match test {
                    StrTest::Contains => haystack.contains(&*needle),
                    StrTest::StartsWith => haystack.starts_with(&*needle),
                    StrTest::EndsWith => haystack.ends_with(&*needle),
                })
            }
            Expr::Lower(s) => checked(Cow::Owned(self.str(s)?.to_lowercase()))?,
            Expr::Upper(s) => checked(Cow::Owned(self.str(s)?.to_uppercase()))?,
            // rhai counts characters, not bytes.
            Expr::StrLen(s) => Val::Int(i64::try_from(self.str(s)?.chars().count()).unwrap_or(i64::MAX)),
            Expr::StrEmpty(s) => Val::Bool(self.str(s)?.is_empty()),
            Expr::ListLen(list) => self.list(list, ListOp::Len)?,
            Expr::ListEmpty(list) => self.list(list, ListOp::Empty)?,
            Expr::ListHas(list, needle) => {
                let needle = self.str(needle)?;
                self.list(list, ListOp::Has(&needle))?
            }
            Expr::Call(call) => self.call(call)?,
        };
        Some(value)
    }

    /// `op` over the list's strings, where they live. `None` where rhai's array would break
    /// its size limits (counted as rhai counts them: elements, and all their bytes as a string).
    fn list(&mut self, list: &'a List, op: ListOp<'_>) -> Option<Val<'a>> {
        fn over<'v, S: AsRef<str>>(items: &[S], op: ListOp<'_>) -> Option<Val<'v>> {
            let bytes: usize = items.iter().map(|s| s.as_ref().len()).sum();
            if items.len() > MAX_ARRAY_SIZE || bytes > MAX_STRING_SIZE {
                return None;
            }
            Some(match op {
                ListOp::Len => Val::Int(i64::try_from(items.len()).unwrap_or(i64::MAX)),
                ListOp::Empty => Val::Bool(items.is_empty()),
                ListOp::Has(needle) => Val::Bool(items.iter().any(|i| i.as_ref() == needle)),
            })
        }
        match list {
            List::Literal(items) => over(items, op),
            List::Recipients => over(&self.ctx.0.recipients, op),
            List::To => over(self.msg?.to(), op),
            List::Cc => over(self.msg?.cc(), op),
            List::Flags => over(self.msg?.flags(), op),
            List::Headers(name) => {
                let name = self.str(name)?;
                let m = self.msg?;
                let (count, bytes) = m.header_count(&name);
                // A value, unfolded, decoded and made valid UTF-8, is at most three times its
                // raw bytes: below that, rhai's array is within its limits and only the count
                // is needed.
                if count <= MAX_ARRAY_SIZE && bytes.saturating_mul(3) <= MAX_STRING_SIZE {
                    match op {
                        ListOp::Len => return Some(Val::Int(i64::try_from(count).unwrap_or(i64::MAX))),
                        ListOp::Empty => return Some(Val::Bool(count == 0)),
                        ListOp::Has(_) => {}
                    }
                }
                over(&m.headers(&name), op)
            }
        }
    }

    fn call(&mut self, call: &'a Call) -> Option<Val<'a>> {
        let done = |r: Result<(), _>| r.ok().map(|()| Val::Unit);
        let value = match call {
            Call::Accept => Val::Verdict(api::accept()),
            Call::Discard => Val::Verdict(api::discard().ok()?),
            Call::Reject(args) | Call::Tempfail(args) => {
                let reject = matches!(call, Call::Reject(_));
                let verdict = match args.as_slice() {
                    [] if reject => api::reject_default(),
                    [] => api::tempfail_default(),
                    [t] if reject => api::reject_text(&self.str(t)?),
                    [t] => api::tempfail_text(&self.str(t)?),
                    [code, t] => {
                        let code = self.int(code)?;
                        let t = self.str(t)?;
                        if reject { api::reject_code(code, &t) } else { api::tempfail_code(code, &t) }.ok()?
                    }
                    _ => return None,
                };
                Val::Verdict(verdict)
            }
            Call::Log(t) => {
                api::log_text(ImmutableString::from(self.str(t)?.as_ref()));
                Val::Unit
            }
            Call::AddRcpt(a) => done(api::ctx_add_rcpt(&mut self.ctx.clone(), &self.str(a)?))?,
            Call::RemoveRcpt(a) => done(api::ctx_remove_rcpt(&mut self.ctx.clone(), &self.str(a)?))?,
            Call::FileInto(f) => done(api::msg_file_into(&mut self.msg?.clone(), &self.str(f)?))?,
            Call::AddHeader(n, v) => {
                let (n, v) = (self.str(n)?, self.str(v)?);
                done(api::msg_add_header(&mut self.msg?.clone(), &n, &v))?
            }
            Call::SetHeader(n, v) => {
                let (n, v) = (self.str(n)?, self.str(v)?);
                done(api::msg_set_header(&mut self.msg?.clone(), &n, &v))?
            }
            Call::RemoveHeader(n) => done(api::msg_remove_header(&mut self.msg?.clone(), &self.str(n)?))?,
            Call::SetSubject(t) => done(api::msg_set_subject(&mut self.msg?.clone(), &self.str(t)?))?,
            Call::Forward(a) => done(api::msg_forward(&mut self.msg?.clone(), &self.str(a)?))?,
            Call::Redirect(a) => done(api::msg_redirect(&mut self.msg?.clone(), &self.str(a)?))?,
            Call::Flag(f) => done(api::msg_flag(&mut self.msg?.clone(), &self.str(f)?))?,
            Call::MarkSeen => {
                api::msg_mark_seen(&mut self.msg?.clone());
                Val::Unit
            }
            Call::Delete => done(api::msg_delete(&mut self.msg?.clone()))?,
        };
        Some(value)
    }
}

fn ctx_str(ctx: &ScriptCtx, field: CtxField) -> &str {
    let c = &ctx.0;
    match field {
        CtxField::RemoteIp => &c.remote_ip,
        CtxField::Helo => &c.helo,
        CtxField::AuthUser => &c.auth_user,
        CtxField::Sender => &c.sender,
        CtxField::Rcpt => &c.rcpt,
        CtxField::Account => &c.account,
        CtxField::Protocol => &c.protocol,
        CtxField::Mailbox => &c.mailbox,
        CtxField::Uid => &c.uid,
    }
}

/// A string as rhai would hold it: `None` past its size limit.
fn checked(s: Cow<'_, str>) -> Option<Val<'_>> {
    (s.len() <= MAX_STRING_SIZE).then_some(Val::Str(s))
}

fn verdict(value: Val<'_>) -> Option<Verdict> {
    match value {
        Val::Verdict(v) => Some(v),
        _ => None,
    }
}
