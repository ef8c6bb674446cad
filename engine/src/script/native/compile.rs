//! Translation of a stage function's rhai AST into the native subset (see the module doc).
//! Every function here returns a [`Refusal`] naming the first construct outside the subset.

use std::fmt;

use rhai::{ASTFlags, ASTNode, Dynamic, Expr as R, FnCallExpr, ImmutableString, Position, Stmt as S, AST};

use super::{Call, Expr, IntOp, List, NativeFn, Stmt, MAX_LOCALS};
use crate::script::catalog::{self, Entry, Form, Imp, Recv, Ty};
use crate::script::decision::Stage;

/// Why a stage function stays in rhai: the construct, and the line it is on (0: the file or
/// the function as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub line: usize,
    pub what: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => f.write_str(&self.what),
            line => write!(f, "line {line}: {}", self.what),
        }
    }
}

type Res<T> = Result<T, Refusal>;

fn refuse<T>(pos: Position, what: impl Into<String>) -> Res<T> {
    Err(Refusal { line: pos.line().unwrap_or(0), what: what.into() })
}

/// Translates `stage`'s function in `ast`, if the whole function stays inside the subset and
/// could not reach `max_operations`.
pub fn compile(ast: &AST, stage: Stage, max_operations: u64) -> Res<NativeFn> {
    // Top-level statements run before every call (and may import modules): rhai's job.
    if let Some(first) = ast.statements().first() {
        return refuse(first.position(), "top-level statements in the file (they run before every call)");
    }
    let (name, arity) = (stage.name(), stage.arity());
    // Exactly one definition: a method typed to some type (`fn Ctx.connect(x)`) may share the
    // name and arity, and the walk below could not tell the two bodies apart.
    let mut defs = ast.iter_functions().filter(|f| f.name == name && f.params.len() == arity);
    let whole = |what: &str| Err(Refusal { line: 0, what: what.into() });
    let def = match (defs.next(), defs.next()) {
        (None, _) => return whole("not defined"),
        (Some(_), Some(_)) => return whole("defined twice (once as a typed method `fn Type.name`)"),
        (Some(def), None) => def,
    };
    if def.this_type.is_some() {
        return whole("a typed method (`fn Type.name`)");
    }
    let mut t = Translator {
        env: def.params.iter().zip([Binding::Ctx, Binding::Msg]).map(|(p, b)| ((*p).into(), b)).collect(),
        script_fns: ast.iter_functions().map(|f| f.name.into()).collect(),
        locals: 0,
        nodes: 0,
    };
    // rhai exposes a function's body only through a walk; its top-level statements are the
    // nodes at depth one.
    // (`clone_functions_only_filtered` keeps every function when cloning into an empty module.)
    let mut only = ast.clone_functions_only();
    only.retain_functions(|_, _, n, a| n == name && a == arity);
    let mut body = Vec::new();
    let mut refused = None;
    only.walk(&mut |path: &[ASTNode]| {
        if let [ASTNode::Stmt(stmt)] = path {
            match t.stmt(stmt) {
                Ok(s) => body.push(s),
                Err(r) => refused = Some(r),
            }
        }
        refused.is_none()
    });
    if let Some(refusal) = refused {
        return Err(refusal);
    }
    // rhai counts an operation per statement and expression evaluated; a loop-free body
    // evaluates each node at most once. Twice that plus the call itself is a safe bound.
    let bound = u64::try_from(t.nodes).unwrap_or(u64::MAX).saturating_mul(2).saturating_add(16);
    if bound > max_operations {
        return whole(&format!("max_operations bound: up to {bound} operations, max_operations is {max_operations}"));
    }
    Ok(NativeFn { body })
}

enum Binding {
    Ctx,
    Msg,
    Local(usize, Ty),
    /// A literal list (`let users = ["a", "b"];`), substituted where used.
    List(Vec<ImmutableString>),
}

/// What a dotted chain stands on: `ctx`, `msg`, a value or a list.
enum Subject {
    Ctx,
    Msg,
    Value(Expr, Ty),
    List(List),
}

impl Subject {
    fn recv(&self) -> Option<Recv> {
        match self {
            Subject::Ctx => Some(Recv::Ctx),
            Subject::Msg => Some(Recv::Msg),
            Subject::Value(_, Ty::Str) => Some(Recv::Str),
            Subject::Value(_, Ty::Verdict) => Some(Recv::Verdict),
            Subject::List(_) => Some(Recv::List),
            Subject::Value(..) => None,
        }
    }
}

fn ty_name(ty: Ty) -> &'static str {
    match ty {
        Ty::Str => "a string",
        Ty::Int => "an integer",
        Ty::Bool => "a bool",
        Ty::List => "a list",
        Ty::Verdict => "a verdict",
        Ty::Unit => "an action",
    }
}

struct Translator {
    env: Vec<(ImmutableString, Binding)>,
    /// Names of the file's script functions: a call to one of these names is rhai's to resolve.
    script_fns: Vec<ImmutableString>,
    locals: usize,
    nodes: usize,
}

impl Translator {
    fn block(&mut self, stmts: &[S]) -> Res<Vec<Stmt>> {
        let depth = self.env.len();
        let block = stmts.iter().map(|s| self.stmt(s)).collect();
        self.env.truncate(depth);
        block
    }

    fn stmt(&mut self, stmt: &S) -> Res<Stmt> {
        self.nodes += 1;
        let pos = stmt.position();
        match stmt {
            S::Noop(_) => Ok(Stmt::Block(Vec::new())),
            S::If(flow, _) => {
                let cond = self.typed(&flow.expr, Ty::Bool)?;
                Ok(Stmt::If(cond, self.block(flow.body.statements())?, self.block(flow.branch.statements())?))
            }
            S::Block(block) => Ok(Stmt::Block(self.block(block.statements())?)),
            S::Var(var, flags, _) if !flags.contains(ASTFlags::EXPORTED) => {
                let (ident, value, _) = &**var;
                let binding = match self.subject(value)? {
                    Subject::List(List::Literal(items)) => Binding::List(items),
                    Subject::Value(expr, ty @ (Ty::Str | Ty::Int | Ty::Bool)) => {
                        if self.locals >= MAX_LOCALS {
                            return refuse(pos, format!("more than {MAX_LOCALS} `let` variables"));
                        }
                        let slot = self.locals;
                        self.locals += 1;
                        self.env.push((ident.name.clone(), Binding::Local(slot, ty)));
                        return Ok(Stmt::Let(slot, expr));
                    }
                    Subject::Value(_, ty) => return refuse(pos, format!("`let` of {}", ty_name(ty))),
                    Subject::List(_) => return refuse(pos, "`let` of a list other than a literal"),
                    Subject::Ctx | Subject::Msg => return refuse(pos, "`let` of ctx or msg"),
                };
                self.env.push((ident.name.clone(), binding));
                Ok(Stmt::Block(Vec::new()))
            }
            S::Return(value, flags, _) if flags.is_empty() => match value {
                None => Ok(Stmt::Return(None)),
                Some(value) => Ok(Stmt::Return(Some(self.value(value)?.0))),
            },
            S::FnCall(call, pos) => Ok(Stmt::Expr(self.call(call, *pos)?.0)),
            S::Expr(expr) => Ok(Stmt::Expr(self.value(expr)?.0)),
            other => refuse(pos, statement_name(other)),
        }
    }

    /// An expression of a value type (lists are not values here: they are only read).
    fn value(&mut self, expr: &R) -> Res<(Expr, Ty)> {
        match self.subject(expr)? {
            Subject::Value(expr, ty) => Ok((expr, ty)),
            Subject::List(_) => refuse(expr.position(), "a list used as a value (only read with `in`, `len`…)"),
            Subject::Ctx | Subject::Msg => refuse(expr.position(), "ctx or msg used as a value"),
        }
    }

    fn typed(&mut self, expr: &R, want: Ty) -> Res<Expr> {
        let (e, ty) = self.value(expr)?;
        if ty != want {
            return refuse(expr.position(), format!("{} where {} is expected", ty_name(ty), ty_name(want)));
        }
        Ok(e)
    }

    fn subject(&mut self, expr: &R) -> Res<Subject> {
        self.nodes += 1;
        let value = |expr, ty| Ok(Subject::Value(expr, ty));
        let pos = expr.position();
        match expr {
            R::StringConstant(s, _) => value(Expr::Str(s.clone()), Ty::Str),
            R::IntegerConstant(i, _) => value(Expr::Int(*i), Ty::Int),
            R::BoolConstant(b, _) => value(Expr::Bool(*b), Ty::Bool),
            R::DynamicConstant(d, _) => {
                constant(d).map_or_else(|| refuse(pos, format!("a constant of type {}", d.type_name())), Ok)
            }
            R::Array(items, _) => {
                // rhai counts an operation per item.
                self.nodes += items.len();
                let strings = items.iter().map(|i| match i {
                    R::StringConstant(s, _) => Some(s.clone()),
                    _ => None,
                });
                match strings.collect::<Option<_>>() {
                    Some(items) => Ok(Subject::List(List::Literal(items))),
                    None => refuse(pos, "an array literal with items other than strings"),
                }
            }
            R::Variable(var, _, _) => {
                let (_, name, namespace, _) = &**var;
                if !namespace.is_empty() {
                    return refuse(pos, format!("module variable {namespace}::{name}"));
                }
                let Some((_, binding)) = self.env.iter().rev().find(|(n, _)| n == name) else {
                    return refuse(pos, format!("variable `{name}` not bound in the function"));
                };
                match binding {
                    Binding::Ctx => Ok(Subject::Ctx),
                    Binding::Msg => Ok(Subject::Msg),
                    Binding::Local(slot, ty) => value(Expr::Local(*slot), *ty),
                    Binding::List(items) => Ok(Subject::List(List::Literal(items.clone()))),
                }
            }
            R::Dot(chain, flags, _) if flags.is_empty() => {
                let base = self.subject(&chain.lhs)?;
                self.apply(base, &chain.rhs)
            }
            R::And(operands, _) => value(Expr::And(self.bools(operands)?), Ty::Bool),
            R::Or(operands, _) => value(Expr::Or(self.bools(operands)?), Ty::Bool),
            R::FnCall(call, pos) => {
                let (expr, ty) = self.call(call, *pos)?;
                match ty {
                    Ty::List => unreachable_list(*pos),
                    _ => value(expr, ty),
                }
            }
            other => refuse(pos, expression_name(other)),
        }
    }

    fn bools(&mut self, operands: &[R]) -> Res<Vec<Expr>> {
        operands.iter().map(|o| self.typed(o, Ty::Bool)).collect()
    }

    /// The right-hand side of a dot: a property, a method call or a further chain.
    fn apply(&mut self, base: Subject, rhs: &R) -> Res<Subject> {
        self.nodes += 1;
        let pos = rhs.position();
        match rhs {
            R::Property(property, _) => {
                let name = property.2.as_str();
                let entry = self.entry(&base, Form::Property, name, 0, pos)?;
                build(entry, Some(base), Vec::new(), pos)
            }
            R::MethodCall(call, _) => {
                self.usable(call, pos)?;
                let entry = self.entry(&base, Form::Method, &call.name, call.args.len(), pos)?;
                let args = self.args(entry, call)?;
                build(entry, Some(base), args, pos)
            }
            R::Dot(chain, flags, _) if flags.is_empty() => {
                let middle = self.apply(base, &chain.lhs)?;
                self.apply(middle, &chain.rhs)
            }
            other => refuse(pos, expression_name(other)),
        }
    }

    /// The catalog entry for a call on `base`, or why there is none.
    fn entry(&self, base: &Subject, form: Form, name: &str, args: usize, pos: Position) -> Res<&'static Entry> {
        let call = if form == Form::Method { "()" } else { "" };
        let Some(recv) = base.recv() else {
            let ty = match base {
                Subject::Value(_, ty) => ty_name(*ty),
                _ => "a value",
            };
            return refuse(pos, format!("`.{name}{call}` on {ty}"));
        };
        catalog::lookup(recv, form, name, args).or_else(|rhai_only| {
            let shown = match recv {
                Recv::Ctx => format!("ctx.{name}{call}"),
                Recv::Msg => format!("msg.{name}{call}"),
                Recv::Str => format!("string .{name}{call}"),
                Recv::List => format!("list .{name}{call}"),
                Recv::Verdict => format!("verdict .{name}{call}"),
                Recv::Global => format!("{name}{call}"),
            };
            let why = if rhai_only { "has no native form" } else { "with these arguments has no native form" };
            refuse(pos, format!("`{shown}` {why}"))
        })
    }

    /// The arguments of a call, each of the type its entry wants.
    fn args(&mut self, entry: &Entry, call: &FnCallExpr) -> Res<Vec<Expr>> {
        let (params, _) = entry.signature().unwrap_or((&[], Ty::Unit));
        call.args.iter().zip(params).map(|(a, ty)| self.typed(a, *ty)).collect()
    }

    fn usable(&self, call: &FnCallExpr, pos: Position) -> Res<()> {
        if call.is_qualified() {
            return refuse(pos, format!("call to plugin or module function {}::{}", call.namespace, call.name));
        }
        if call.capture_parent_scope {
            return refuse(pos, format!("call `{}!` capturing the scope", call.name));
        }
        if self.script_fns.contains(&call.name) {
            return refuse(pos, format!("call to script function `{}`", call.name));
        }
        Ok(())
    }

    /// A function or operator call (not a method call).
    fn call(&mut self, call: &FnCallExpr, pos: Position) -> Res<(Expr, Ty)> {
        self.usable(call, pos)?;
        let name = call.name.as_str();
        // `x !in list` is `!contains(list, x)` whose inner call keeps the `!in` token.
        if call.op_token.is_some() && name != "contains" {
            return self.operator(name, &call.args, pos);
        }
        if let ("contains", [haystack, needle]) = (name, call.args.as_slice()) {
            // `x in list` and `x in string` are `contains(list, x)`.
            let base = self.subject(haystack)?;
            let entry = self.entry(&base, Form::Method, "contains", 1, pos)?;
            let needle = self.typed(needle, Ty::Str)?;
            return match build(entry, Some(base), vec![needle], pos)? {
                Subject::Value(expr, ty) => Ok((expr, ty)),
                _ => unreachable_list(pos),
            };
        }
        let entry = catalog::lookup(Recv::Global, Form::Method, name, call.args.len()).or_else(|rhai_only| {
            let why = if rhai_only { "has no native form" } else { "is not in the native subset" };
            refuse(pos, format!("call to `{name}()` {why}"))
        })?;
        let args = self.args(entry, call)?;
        match build(entry, None, args, pos)? {
            Subject::Value(expr, ty) => Ok((expr, ty)),
            _ => unreachable_list(pos),
        }
    }

    fn operator(&mut self, name: &str, args: &[R], pos: Position) -> Res<(Expr, Ty)> {
        if name == "!" {
            let [operand] = args else { return refuse(pos, "`!` with two operands") };
            return Ok((Expr::Not(Box::new(self.typed(operand, Ty::Bool)?)), Ty::Bool));
        }
        let [lhs, rhs] = args else { return refuse(pos, format!("operator `{name}`")) };
        let (lhs, lt) = self.value(lhs)?;
        let (rhs, rt) = self.value(rhs)?;
        if lt != rt {
            return refuse(pos, format!("`{name}` between {} and {}", ty_name(lt), ty_name(rt)));
        }
        let (lhs, rhs) = (Box::new(lhs), Box::new(rhs));
        let expr = match (name, lt) {
            ("==" | "!=", Ty::Str | Ty::Int | Ty::Bool) => Expr::Eq(lhs, rhs, name == "!="),
            ("<", Ty::Int) => Expr::IntCmp(lhs, rhs, IntOp::Lt),
            ("<=", Ty::Int) => Expr::IntCmp(lhs, rhs, IntOp::Le),
            (">", Ty::Int) => Expr::IntCmp(lhs, rhs, IntOp::Gt),
            (">=", Ty::Int) => Expr::IntCmp(lhs, rhs, IntOp::Ge),
            ("+", Ty::Str) => return Ok((Expr::Concat(lhs, rhs), Ty::Str)),
            _ => return refuse(pos, format!("operator `{name}` on {}", ty_name(lt))),
        };
        Ok((expr, Ty::Bool))
    }
}

/// The expression of a catalog entry applied to `base` with its (typed) arguments.
fn build(entry: &Entry, base: Option<Subject>, args: Vec<Expr>, pos: Position) -> Res<Subject> {
    let mut args = args.into_iter().map(Box::new);
    let mut arg =
        || args.next().ok_or_else(|| Refusal { line: pos.line().unwrap_or(0), what: "missing argument".into() });
    let (_, ret) = entry.signature().unwrap_or((&[], Ty::Unit));
    let value = |expr| Ok(Subject::Value(expr, ret));
    let call = |call| Ok(Subject::Value(Expr::Call(call), ret));
    match (entry.imp, base) {
        (Imp::CtxStr(f), _) => value(Expr::CtxStr(f)),
        (Imp::CtxBool(f), _) => value(Expr::CtxBool(f)),
        (Imp::CtxList(f), _) => Ok(Subject::List(List::Ctx(f))),
        (Imp::MsgStr(f), _) => value(Expr::MsgStr(f)),
        (Imp::MsgInt(f), _) => value(Expr::MsgInt(f)),
        (Imp::MsgList(f), _) => Ok(Subject::List(List::Msg(f))),
        (Imp::MsgStrOf(f), _) => value(Expr::MsgStrOf(f, arg()?)),
        (Imp::MsgBoolOf(f), _) => value(Expr::MsgBoolOf(f, arg()?)),
        (Imp::MsgListOf(all, count), _) => Ok(Subject::List(List::MsgOf(all, count, arg()?))),
        (Imp::CtxAction1(f), _) => call(Call::Ctx1(f, arg()?)),
        (Imp::MsgAction0(f), _) => call(Call::Msg0(f)),
        (Imp::MsgAction1(f), _) => call(Call::Msg1(f, arg()?)),
        (Imp::MsgAction2(f), _) => call(Call::Msg2(f, arg()?, arg()?)),
        (Imp::Verdict0(f), _) => call(Call::Verdict0(f, pos.line().unwrap_or(0))),
        (Imp::Verdict1(f), _) => call(Call::Verdict1(f, arg()?, pos.line().unwrap_or(0))),
        (Imp::Verdict2(f), _) => call(Call::Verdict2(f, arg()?, arg()?, pos.line().unwrap_or(0))),
        (Imp::Log(f), _) => call(Call::Log(f, arg()?)),
        (Imp::Str(op), Some(Subject::Value(s, Ty::Str))) => value(Expr::StrOp(op, Box::new(s), args.next())),
        (Imp::List(op), Some(Subject::List(list))) => value(Expr::ListOp(op, list, args.next())),
        _ => refuse(pos, format!("`{}` has no native form", entry.display())),
    }
}

fn unreachable_list<T>(pos: Position) -> Res<T> {
    refuse(pos, "a function returning a list")
}

fn constant(value: &Dynamic) -> Option<Subject> {
    if let Ok(s) = value.as_immutable_string_ref() {
        return Some(Subject::Value(Expr::Str(s.clone()), Ty::Str));
    }
    if let Ok(i) = value.as_int() {
        return Some(Subject::Value(Expr::Int(i), Ty::Int));
    }
    if let Ok(b) = value.as_bool() {
        return Some(Subject::Value(Expr::Bool(b), Ty::Bool));
    }
    let array = value.read_lock::<rhai::Array>()?;
    let strings = array.iter().map(|v| v.as_immutable_string_ref().ok().map(|s| s.clone()));
    Some(Subject::List(List::Literal(strings.collect::<Option<_>>()?)))
}

fn statement_name(stmt: &S) -> &'static str {
    match stmt {
        S::Switch(..) => "`switch`",
        S::While(flow, _) if matches!(flow.expr, R::Unit(_)) => "`loop`",
        S::While(..) => "`while` loop",
        S::Do(..) => "`do` loop",
        S::For(..) => "`for` loop",
        S::Var(..) => "`export`",
        S::Assignment(..) => "assignment",
        S::TryCatch(..) => "`try`/`catch`",
        S::BreakLoop(_, flags, _) if flags.contains(ASTFlags::BREAK) => "`break`",
        S::BreakLoop(..) => "`continue`",
        S::Return(..) => "`throw`",
        S::Import(..) => "`import`",
        S::Export(..) => "`export`",
        _ => "a statement outside the native subset",
    }
}

fn expression_name(expr: &R) -> &'static str {
    match expr {
        R::FloatConstant(..) => "a floating-point number",
        R::CharConstant(..) => "a character literal",
        R::InterpolatedString(..) => "string interpolation",
        R::Map(..) => "an object map `#{…}`",
        R::Unit(..) => "`()`",
        R::ThisPtr(..) => "`this`",
        R::Stmt(..) => "a block used as a value",
        R::Index(..) => "indexing `[…]`",
        R::Coalesce(..) => "`??`",
        R::Dot(..) => "`?.`",
        R::Custom(..) => "custom syntax",
        _ => "an expression outside the native subset",
    }
}
