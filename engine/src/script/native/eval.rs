//! Running a translated stage function.

use std::borrow::Cow;

use rhai::{Dynamic, ImmutableString};

use super::{Call, Expr, IntOp, List, NativeFn, Stmt, MAX_LOCALS};
use crate::message::MessageView;
use crate::script::catalog::{ListOp, StrOp};
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
            Expr::CtxStr(f) => checked(Cow::Borrowed(f(&self.ctx.0)))?,
            Expr::CtxBool(f) => Val::Bool(f(&self.ctx.0)),
            Expr::MsgStr(f) => checked(Cow::Borrowed(f(self.msg?)))?,
            Expr::MsgInt(f) => Val::Int(f(self.msg?)),
            Expr::MsgStrOf(f, arg) => {
                let arg = self.str(arg)?;
                checked(Cow::Owned(f(self.msg?, &arg)))?
            }
            Expr::MsgBoolOf(f, arg) => {
                let arg = self.str(arg)?;
                Val::Bool(f(self.msg?, &arg))
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
            Expr::StrOp(op, s, arg) => {
                let s = self.str(s)?;
                let mut arg = || arg.as_ref().and_then(|a| self.str(a));
                match op {
                    StrOp::Contains => Val::Bool(s.contains(&*arg()?)),
                    StrOp::StartsWith => Val::Bool(s.starts_with(&*arg()?)),
                    StrOp::EndsWith => Val::Bool(s.ends_with(&*arg()?)),
                    StrOp::ToLower => checked(Cow::Owned(s.to_lowercase()))?,
                    StrOp::ToUpper => checked(Cow::Owned(s.to_uppercase()))?,
                    // rhai counts characters, not bytes.
                    StrOp::Len => Val::Int(i64::try_from(s.chars().count()).unwrap_or(i64::MAX)),
                    StrOp::IsEmpty => Val::Bool(s.is_empty()),
                }
            }
            Expr::ListOp(op, list, arg) => match (op, arg) {
                (ListOp::Contains, Some(needle)) => {
                    let needle = self.str(needle)?;
                    self.list(list, Query::Has(&needle))?
                }
                (ListOp::Len, None) => self.list(list, Query::Len)?,
                (ListOp::IsEmpty, None) => self.list(list, Query::Empty)?,
                _ => return None,
            },
            Expr::Call(call) => self.call(call)?,
        };
        Some(value)
    }

    /// `op` over the list's strings, where they live. `None` where rhai's array would break
    /// its size limits (counted as rhai counts them: elements, and all their bytes as a string).
    fn list(&mut self, list: &'a List, op: Query<'_>) -> Option<Val<'a>> {
        fn over<'v, S: AsRef<str>>(items: &[S], op: Query<'_>) -> Option<Val<'v>> {
            let bytes: usize = items.iter().map(|s| s.as_ref().len()).sum();
            if items.len() > MAX_ARRAY_SIZE || bytes > MAX_STRING_SIZE {
                return None;
            }
            Some(match op {
                Query::Len => Val::Int(i64::try_from(items.len()).unwrap_or(i64::MAX)),
                Query::Empty => Val::Bool(items.is_empty()),
                Query::Has(needle) => Val::Bool(items.iter().any(|i| i.as_ref() == needle)),
            })
        }
        match list {
            List::Literal(items) => over(items, op),
            List::Ctx(f) => over(f(&self.ctx.0), op),
            List::Msg(f) => over(f(self.msg?), op),
            List::MsgOf(all, count, name) => {
                let name = self.str(name)?;
                let m = self.msg?;
                let (count, bytes) = count(m, &name);
                // A value, unfolded, decoded and made valid UTF-8, is at most three times its
                // raw bytes: below that, rhai's array is within its limits and only the count
                // is needed.
                if count <= MAX_ARRAY_SIZE && bytes.saturating_mul(3) <= MAX_STRING_SIZE {
                    match op {
                        Query::Len => return Some(Val::Int(i64::try_from(count).unwrap_or(i64::MAX))),
                        Query::Empty => return Some(Val::Bool(count == 0)),
                        Query::Has(_) => {}
                    }
                }
                over(&all(m, &name), op)
            }
        }
    }

    fn call(&mut self, call: &'a Call) -> Option<Val<'a>> {
        let done = |r: Result<(), _>| r.ok().map(|()| Val::Unit);
        let decided = |r: Result<_, _>| r.ok().map(Val::Verdict);
        match call {
            Call::Verdict0(f, line) => {
                crate::script::sandbox::note_verdict_line(*line);
                decided(f())
            }
            Call::Verdict1(f, t, line) => {
                crate::script::sandbox::note_verdict_line(*line);
                decided(f(&self.str(t)?))
            }
            Call::Verdict2(f, code, t, line) => {
                crate::script::sandbox::note_verdict_line(*line);
                let code = self.int(code)?;
                decided(f(code, &self.str(t)?))
            }
            Call::Log(f, t) => {
                f(ImmutableString::from(self.str(t)?.as_ref()));
                Some(Val::Unit)
            }
            Call::Ctx1(f, a) => done(f(&mut self.ctx.clone(), &self.str(a)?)),
            Call::Msg0(f) => done(f(&mut self.msg?.clone())),
            Call::Msg1(f, a) => done(f(&mut self.msg?.clone(), &self.str(a)?)),
            Call::Msg2(f, a, b) => {
                let (a, b) = (self.str(a)?, self.str(b)?);
                done(f(&mut self.msg?.clone(), &a, &b))
            }
        }
    }
}

/// What a list expression computes.
enum Query<'n> {
    Len,
    Empty,
    Has(&'n str),
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
