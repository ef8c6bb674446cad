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
//! verdict, the `ctx` and `msg` getters and actions, string tests (`==`, `!=`, `+`,
//! `contains`, `starts_with`, `ends_with`, `to_lower`, `to_upper`, `len`, `is_empty`), integer
//! comparisons, `!`, `&&`, `||`, `in` and `.len()` on string lists. Anything else (loops,
//! helpers, plugins, maps, other types, a file with top-level statements) leaves the whole
//! function to rhai. The translation calls the same API functions rhai would, so verdicts,
//! actions and log lines are the same.
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
mod tests;

use rhai::ImmutableString;

pub use compile::compile;

/// Most `let` variables a translated function may have.
const MAX_LOCALS: usize = 8;

/// A translated stage function.
#[derive(Debug)]
pub struct NativeFn {
    body: Vec<Stmt>,
}

/// Static types of the subset: every expression has one, checked at translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Str,
    Int,
    Bool,
    /// Actions: only as statements.
    Unit,
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

#[derive(Debug)]
enum Expr {
    Str(ImmutableString),
    Int(i64),
    Bool(bool),
    Local(usize),
    /// A string field of `ctx`.
    Ctx(CtxField),
    /// `ctx.tls`.
    Tls,
    /// A string field of `msg`.
    Msg(MsgField),
    /// `msg.size`.
    Size,
    Header(Box<Expr>),
    HasHeader(Box<Expr>),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    /// `==` (or `!=` when the flag is set) between two values of the same type.
    Eq(Box<Expr>, Box<Expr>, bool),
    IntCmp(Box<Expr>, Box<Expr>, IntOp),
    Concat(Box<Expr>, Box<Expr>),
    StrTest(StrTest, Box<Expr>, Box<Expr>),
    Lower(Box<Expr>),
    Upper(Box<Expr>),
    StrLen(Box<Expr>),
    StrEmpty(Box<Expr>),
    ListLen(List),
    ListEmpty(List),
    ListHas(List, Box<Expr>),
    Call(Call),
}

#[derive(Debug, Clone, Copy)]
enum IntOp {
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy)]
enum StrTest {
    Contains,
    StartsWith,
    EndsWith,
}

/// A list of strings, read where it lives (no array is built).
#[derive(Debug)]
enum List {
    Literal(Vec<ImmutableString>),
    Recipients,
    To,
    Cc,
    Flags,
    Headers(Box<Expr>),
}

#[derive(Debug, Clone, Copy)]
enum CtxField {
    RemoteIp,
    Helo,
    AuthUser,
    Sender,
    Rcpt,
    Account,
    Protocol,
    Mailbox,
    Uid,
}

#[derive(Debug, Clone, Copy)]
enum MsgField {
    Subject,
    From,
    Date,
    MessageId,
}

/// API functions with effects or verdicts, called exactly as rhai would call them.
#[derive(Debug)]
enum Call {
    Accept,
    Discard,
    Reject(Vec<Expr>),
    Tempfail(Vec<Expr>),
    Log(Box<Expr>),
    AddRcpt(Box<Expr>),
    RemoveRcpt(Box<Expr>),
    FileInto(Box<Expr>),
    AddHeader(Box<Expr>, Box<Expr>),
    SetHeader(Box<Expr>, Box<Expr>),
    RemoveHeader(Box<Expr>),
    SetSubject(Box<Expr>),
    Forward(Box<Expr>),
    Redirect(Box<Expr>),
    Flag(Box<Expr>),
    MarkSeen,
    Delete,
}
