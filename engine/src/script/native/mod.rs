//! decide: stage functions simple enough to run without rhai's evaluator.
//!
//! Most rules are a few `if` tests on `ctx` and `msg` getters ending in a verdict or an
//! action: `if ctx.sender.ends_with("@spam.example") { return reject(); }`. rhai walks such a
//! rule as a tree of dynamically typed calls: a getter, a method lookup, a `Dynamic` per
//! value, a size check per result — 3–7 k instructions per rule and ≈ 5 k per stage call, most
//! of what the benchmark's 20 rules cost per message (bench/results/findings.md).
//!
//! At compile time each stage function whose body stays inside a small, statically typed
//! subset of the language is translated here once: `if`/`else`, `let`/`const`, `return` of a
//! verdict, `==`, `!=`, `+` on strings, integer comparisons, `!`, `&&`, `||`, `in`, and the
//! calls the API catalog ([`catalog`](super::catalog)) gives a native shape: the `ctx` and
//! `msg` getters, verdicts and actions, and the string and list methods. Anything else
//! (loops, helpers, plugins, maps, other types, a file with top-level statements) leaves the
//! whole function to rhai, and [`compile`] says which construct did (`mailflow check
//! --explain`). The translation calls the same API functions rhai would, through the same
//! catalog entries, so verdicts, actions and log lines are the same.
//!
//! Errors are rhai's: when anything fails at run time (a bad folder name, a reply code out of
//! range, a string over the size limit) [`NativeFn::run`] returns `None`, the caller drops what
//! the call collected and runs the function in rhai, which reports the error with its
//! position. A function whose operation count could reach `max_operations` is left to rhai, so
//! that limit behaves as before. Plugins only add namespaced functions (`kv::get`), which are
//! outside the subset; a script function named like an API function it calls (say its own
//! `reject`) also leaves the function to rhai, as rhai would call the script's.

mod compile;
mod eval;
#[cfg(test)]
mod generate;
#[cfg(test)]
mod tests;

use rhai::ImmutableString;

use super::api::FnResult;
use super::catalog::{ListOp, StrOp};
use super::context::{Context, ScriptCtx};
use super::decision::Verdict;
use crate::message::MessageView;

pub use compile::{compile, Refusal};

/// Most `let` variables a translated function may have.
const MAX_LOCALS: usize = 8;

/// A translated stage function.
#[derive(Debug)]
pub struct NativeFn {
    body: Vec<Stmt>,
}

#[derive(Debug)]
enum Stmt {
    If(Expr, Vec<Stmt>, Vec<Stmt>),
    Block(Vec<Stmt>),
    Let(usize, Expr),
    /// `return;` or `return verdict(..);`
    Return(Option<Expr>),
    /// An expression evaluated for its effect (an action) or as the block's last value.
    Expr(Expr),
}

/// Expressions; API calls hold the catalog entry's function.
#[derive(Debug)]
enum Expr {
    Str(ImmutableString),
    Int(i64),
    Bool(bool),
    Local(usize),
    CtxStr(fn(&Context) -> &str),
    CtxBool(fn(&Context) -> bool),
    MsgStr(fn(&MessageView) -> &str),
    MsgInt(fn(&MessageView) -> i64),
    MsgStrOf(fn(&MessageView, &str) -> String, Box<Expr>),
    MsgBoolOf(fn(&MessageView, &str) -> bool, Box<Expr>),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    /// `==` (or `!=` when the flag is set) between two values of the same type.
    Eq(Box<Expr>, Box<Expr>, bool),
    IntCmp(Box<Expr>, Box<Expr>, IntOp),
    Concat(Box<Expr>, Box<Expr>),
    /// A string method on a value, with its argument if it takes one.
    StrOp(StrOp, Box<Expr>, Option<Box<Expr>>),
    /// A list method, with its argument if it takes one.
    ListOp(ListOp, List, Option<Box<Expr>>),
    Call(Call),
}

#[derive(Debug, Clone, Copy)]
enum IntOp {
    Lt,
    Le,
    Gt,
    Ge,
}

/// A list of strings, read where it lives (no array is built).
#[derive(Debug)]
enum List {
    Literal(Vec<ImmutableString>),
    Ctx(fn(&Context) -> &[String]),
    Msg(fn(&MessageView) -> &[String]),
    MsgOf(fn(&MessageView, &str) -> Vec<String>, fn(&MessageView, &str) -> (usize, usize), Box<Expr>),
}

/// API functions with effects or verdicts, called exactly as rhai would call them.
#[derive(Debug)]
enum Call {
    Ctx1(fn(&mut ScriptCtx, &str) -> FnResult<()>, Box<Expr>),
    Msg0(fn(&mut MessageView) -> FnResult<()>),
    Msg1(fn(&mut MessageView, &str) -> FnResult<()>, Box<Expr>),
    Msg2(fn(&mut MessageView, &str, &str) -> FnResult<()>, Box<Expr>, Box<Expr>),
    /// Verdicts carry the line of their call (see [`crate::script::sandbox::note_verdict_line`]).
    Verdict0(fn() -> FnResult<Verdict>, usize),
    Verdict1(fn(&str) -> FnResult<Verdict>, Box<Expr>, usize),
    Verdict2(fn(i64, &str) -> FnResult<Verdict>, Box<Expr>, Box<Expr>, usize),
    Log(fn(ImmutableString), Box<Expr>),
}
