//! Translation of a stage function's rhai AST into the native subset (see the module doc).
//! Every function here returns `None` for anything outside the subset.

use rhai::{ASTFlags, ASTNode, Dynamic, Expr as R, FnCallExpr, ImmutableString, Stmt as S, AST};

use super::{Call, CtxField, Expr, IntOp, List, MsgField, NativeFn, Stmt, StrTest, Ty, MAX_LOCALS};
use crate::script::decision::Stage;

/// Translates `stage`'s function in `ast`, if the whole function stays inside the subset and
/// could not reach `max_operations`.
pub fn compile(ast: &AST, stage: Stage, max_operations: u64) -> Option<NativeFn> {
    // Top-level statements run before every call (and may import modules): rhai's job.
    if !ast.statements().is_empty() {
        return None;
    }
    let (name, arity) = (stage.name(), stage.arity());
    // Exactly one definition: a method typed to some type (`fn Ctx.connect(x)`) may share the
    // name and arity, and the walk below could not tell the two bodies apart.
    let mut defs = ast.iter_functions().filter(|f| f.name == name && f.params.len() == arity);
    let (def, None) = (defs.next()?, defs.next()) else { return None };
    if def.this_type.is_some() {
        return None;
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
    let mut complete = true;
    only.walk(&mut |path: &[ASTNode]| {
        if let [ASTNode::Stmt(stmt)] = path {
            match t.stmt(stmt) {
                Some(s) => body.push(s),
                None => complete = false,
            }
        }
        complete
    });
    // rhai counts an operation per statement and expression evaluated; a loop-free body
    // evaluates each node at most once. Twice that plus the call itself is a safe bound.
    let bound = u64::try_from(t.nodes).unwrap_or(u64::MAX).saturating_mul(2).saturating_add(16);
    (complete && bound <= max_operations).then_some(NativeFn { body })
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

struct Translator {
    env: Vec<(ImmutableString, Binding)>,
    /// Names of the file's script functions: a call to one of these names is rhai's to resolve.
    script_fns: Vec<ImmutableString>,
    locals: usize,
    nodes: usize,
}

impl Translator {
    fn block(&mut self, stmts: &[S]) -> Option<Vec<Stmt>> {
        let depth = self.env.len();
        let block = stmts.iter().map(|s| self.stmt(s)).collect();
        self.env.truncate(depth);
        block
    }

    fn stmt(&mut self, stmt: &S) -> Option<Stmt> {
        self.nodes += 1;
        match stmt {
            S::Noop(_) => Some(Stmt::Block(Vec::new())),
            S::If(flow, _) => {
                let cond = self.typed(&flow.expr, Ty::Bool)?;
                Some(Stmt::If(cond, self.block(flow.body.statements())?, self.block(flow.branch.statements())?))
            }
            S::Block(block) => Some(Stmt::Block(self.block(block.statements())?)),
            S::Var(var, flags, _) if !flags.contains(ASTFlags::EXPORTED) => {
                let (ident, value, _) = &**var;
                let binding = match self.subject(value)? {
                    Subject::List(List::Literal(items)) => Binding::List(items),
                    Subject::Value(expr, ty @ (Ty::Str | Ty::Int | Ty::Bool)) if self.locals < MAX_LOCALS => {
                        let slot = self.locals;
                        self.locals += 1;
                        self.env.push((ident.name.clone(), Binding::Local(slot, ty)));
                        return Some(Stmt::Let(slot, expr));
                    }
                    _ => return None,
                };
                self.env.push((ident.name.clone(), binding));
                Some(Stmt::Block(Vec::new()))
            }
            S::Return(value, flags, _) if flags.is_empty() => match value {
                None => Some(Stmt::Return(None)),
                Some(value) => Some(Stmt::Return(Some(self.value(value)?.0))),
            },
            S::FnCall(call, _) => Some(Stmt::Expr(self.call(call)?.0)),
            S::Expr(expr) => Some(Stmt::Expr(self.value(expr)?.0)),
            _ => None,
        }
    }

    /// An expression of a value type (lists are not values here: they are only read).
    fn value(&mut self, expr: &R) -> Option<(Expr, Ty)> {
        match self.subject(expr)? {
            Subject::Value(expr, ty) => Some((expr, ty)),
            _ => None,
        }
    }

    fn typed(&mut self, expr: &R, want: Ty) -> Option<Expr> {
        let (expr, ty) = self.value(expr)?;
        (ty == want).then_some(expr)
    }

    fn subject(&mut self, expr: &R) -> Option<Subject> {
        self.nodes += 1;
        let value = |expr, ty| Some(Subject::Value(expr, ty));
        match expr {
            R::StringConstant(s, _) => value(Expr::Str(s.clone()), Ty::Str),
            R::IntegerConstant(i, _) => value(Expr::Int(*i), Ty::Int),
            R::BoolConstant(b, _) => value(Expr::Bool(*b), Ty::Bool),
            R::DynamicConstant(d, _) => constant(d),
            R::Array(items, _) => {
                // rhai counts an operation per item.
                self.nodes += items.len();
                let strings = items.iter().map(|i| match i {
                    R::StringConstant(s, _) => Some(s.clone()),
                    _ => None,
                });
                Some(Subject::List(List::Literal(strings.collect::<Option<_>>()?)))
            }
            R::Variable(var, _, _) => {
                let (_, name, namespace, _) = &**var;
                if !namespace.is_empty() {
                    return None;
                }
                match &self.env.iter().rev().find(|(n, _)| n == name)?.1 {
                    Binding::Ctx => Some(Subject::Ctx),
                    Binding::Msg => Some(Subject::Msg),
                    Binding::Local(slot, ty) => value(Expr::Local(*slot), *ty),
                    Binding::List(items) => Some(Subject::List(List::Literal(items.clone()))),
                }
            }
            R::Dot(chain, flags, _) if flags.is_empty() => {
                let base = self.subject(&chain.lhs)?;
                self.apply(base, &chain.rhs)
            }
            R::And(operands, _) => value(Expr::And(self.bools(operands)?), Ty::Bool),
            R::Or(operands, _) => value(Expr::Or(self.bools(operands)?), Ty::Bool),
            R::FnCall(call, _) => {
                let (expr, ty) = self.call(call)?;
                value(expr, ty)
            }
            _ => None,
        }
    }

    fn bools(&mut self, operands: &[R]) -> Option<Vec<Expr>> {
        operands.iter().map(|o| self.typed(o, Ty::Bool)).collect()
    }

    /// The right-hand side of a dot: a property, a method call or a further chain.
    fn apply(&mut self, base: Subject, rhs: &R) -> Option<Subject> {
        self.nodes += 1;
        match rhs {
            R::Property(property, _) => property_of(base, &property.2),
            R::MethodCall(call, _) => self.method(base, call),
            R::Dot(chain, flags, _) if flags.is_empty() => {
                let middle = self.apply(base, &chain.lhs)?;
                self.apply(middle, &chain.rhs)
            }
            _ => None,
        }
    }

    /// The arguments of a call, each of the wanted type.
    fn args(&mut self, call: &FnCallExpr, want: &[Ty]) -> Option<Vec<Expr>> {
        if call.args.len() != want.len() {
            return None;
        }
        call.args.iter().zip(want).map(|(a, ty)| self.typed(a, *ty)).collect()
    }

    fn arg(&mut self, call: &FnCallExpr) -> Option<Box<Expr>> {
        self.args(call, &[Ty::Str])?.pop().map(Box::new)
    }

    fn usable(&self, call: &FnCallExpr) -> bool {
        !call.is_qualified() && !call.capture_parent_scope && !self.script_fns.contains(&call.name)
    }

    fn method(&mut self, base: Subject, call: &FnCallExpr) -> Option<Subject> {
        if !self.usable(call) {
            return None;
        }
        let unit = |call| Some(Subject::Value(Expr::Call(call), Ty::Unit));
        let name = call.name.as_str();
        match base {
            Subject::Msg => match (name, call.args.len()) {
                ("header", 1) => Some(Subject::Value(Expr::Header(self.arg(call)?), Ty::Str)),
                ("has_header", 1) => Some(Subject::Value(Expr::HasHeader(self.arg(call)?), Ty::Bool)),
                ("headers", 1) => Some(Subject::List(List::Headers(self.arg(call)?))),
                ("file_into", 1) => unit(Call::FileInto(self.arg(call)?)),
                ("remove_header", 1) => unit(Call::RemoveHeader(self.arg(call)?)),
                ("set_subject", 1) => unit(Call::SetSubject(self.arg(call)?)),
                ("forward", 1) => unit(Call::Forward(self.arg(call)?)),
                ("redirect", 1) => unit(Call::Redirect(self.arg(call)?)),
                ("flag", 1) => unit(Call::Flag(self.arg(call)?)),
                ("add_header" | "set_header", 2) => {
                    let mut args = self.args(call, &[Ty::Str, Ty::Str])?.into_iter().map(Box::new);
                    let (field, value) = (args.next()?, args.next()?);
                    unit(if name == "add_header" {
                        Call::AddHeader(field, value)
                    } else {
                        Call::SetHeader(field, value)
                    })
                }
                ("mark_seen", 0) => unit(Call::MarkSeen),
                ("delete", 0) => unit(Call::Delete),
                _ => None,
            },
            Subject::Ctx => match (name, call.args.len()) {
                ("add_rcpt", 1) => unit(Call::AddRcpt(self.arg(call)?)),
                ("remove_rcpt", 1) => unit(Call::RemoveRcpt(self.arg(call)?)),
                _ => None,
            },
            Subject::Value(s, Ty::Str) => {
                let s = Box::new(s);
                let value = |expr, ty| Some(Subject::Value(expr, ty));
                match (name, call.args.len()) {
                    ("contains", 1) => value(Expr::StrTest(StrTest::Contains, s, self.arg(call)?), Ty::Bool),
                    ("starts_with", 1) => value(Expr::StrTest(StrTest::StartsWith, s, self.arg(call)?), Ty::Bool),
                    ("ends_with", 1) => value(Expr::StrTest(StrTest::EndsWith, s, self.arg(call)?), Ty::Bool),
                    ("to_lower", 0) => value(Expr::Lower(s), Ty::Str),
                    ("to_upper", 0) => value(Expr::Upper(s), Ty::Str),
                    ("len", 0) => value(Expr::StrLen(s), Ty::Int),
                    ("is_empty", 0) => value(Expr::StrEmpty(s), Ty::Bool),
                    _ => None,
                }
            }
            Subject::List(list) => match (name, call.args.len()) {
                ("len", 0) => Some(Subject::Value(Expr::ListLen(list), Ty::Int)),
                ("is_empty", 0) => Some(Subject::Value(Expr::ListEmpty(list), Ty::Bool)),
                ("contains", 1) => Some(Subject::Value(Expr::ListHas(list, self.arg(call)?), Ty::Bool)),
                _ => None,
            },
            Subject::Value(..) => None,
        }
    }

    /// A function or operator call (not a method call).
    fn call(&mut self, call: &FnCallExpr) -> Option<(Expr, Ty)> {
        if !self.usable(call) {
            return None;
        }
        let name = call.name.as_str();
        // `x !in list` is `!contains(list, x)` whose inner call keeps the `!in` token.
        if call.op_token.is_some() && name != "contains" {
            return self.operator(name, &call.args);
        }
        let verdict = |call| Some((Expr::Call(call), Ty::Unit));
        match (name, call.args.len()) {
            // `x in list` and `x in string` are `contains(list, x)`.
            ("contains", 2) => match self.subject(&call.args[0])? {
                Subject::List(list) => {
                    Some((Expr::ListHas(list, Box::new(self.typed(&call.args[1], Ty::Str)?)), Ty::Bool))
                }
                Subject::Value(s, Ty::Str) => {
                    let needle = self.typed(&call.args[1], Ty::Str)?;
                    Some((Expr::StrTest(StrTest::Contains, Box::new(s), Box::new(needle)), Ty::Bool))
                }
                _ => None,
            },
            ("accept", 0) => verdict(Call::Accept),
            ("discard", 0) => verdict(Call::Discard),
            ("reject" | "tempfail", n @ 0..=2) => {
                let types: &[Ty] = match n {
                    0 => &[],
                    1 => &[Ty::Str],
                    _ => &[Ty::Int, Ty::Str],
                };
                let args = self.args(call, types)?;
                verdict(if name == "reject" { Call::Reject(args) } else { Call::Tempfail(args) })
            }
            ("log", 1) => verdict(Call::Log(self.arg(call)?)),
            _ => None,
        }
    }

    fn operator(&mut self, name: &str, args: &[R]) -> Option<(Expr, Ty)> {
        if name == "!" {
            let [operand] = args else { return None };
            return Some((Expr::Not(Box::new(self.typed(operand, Ty::Bool)?)), Ty::Bool));
        }
        let [lhs, rhs] = args else { return None };
        let (lhs, lt) = self.value(lhs)?;
        let (rhs, rt) = self.value(rhs)?;
        if lt != rt {
            return None;
        }
        let (lhs, rhs) = (Box::new(lhs), Box::new(rhs));
        let expr = match (name, lt) {
            ("==" | "!=", Ty::Str | Ty::Int | Ty::Bool) => Expr::Eq(lhs, rhs, name == "!="),
            ("<", Ty::Int) => Expr::IntCmp(lhs, rhs, IntOp::Lt),
            ("<=", Ty::Int) => Expr::IntCmp(lhs, rhs, IntOp::Le),
            (">", Ty::Int) => Expr::IntCmp(lhs, rhs, IntOp::Gt),
            (">=", Ty::Int) => Expr::IntCmp(lhs, rhs, IntOp::Ge),
            ("+", Ty::Str) => return Some((Expr::Concat(lhs, rhs), Ty::Str)),
            _ => return None,
        };
        Some((expr, Ty::Bool))
    }
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

fn property_of(base: Subject, name: &str) -> Option<Subject> {
    let str = |field| Some(Subject::Value(Expr::Ctx(field), Ty::Str));
    let msg = |field| Some(Subject::Value(Expr::Msg(field), Ty::Str));
    match base {
        Subject::Ctx => match name {
            "remote_ip" => str(CtxField::RemoteIp),
            "helo" => str(CtxField::Helo),
            "auth_user" => str(CtxField::AuthUser),
            "sender" => str(CtxField::Sender),
            "rcpt" => str(CtxField::Rcpt),
            "account" => str(CtxField::Account),
            "protocol" => str(CtxField::Protocol),
            "mailbox" => str(CtxField::Mailbox),
            "uid" => str(CtxField::Uid),
            "tls" => Some(Subject::Value(Expr::Tls, Ty::Bool)),
            "recipients" => Some(Subject::List(List::Recipients)),
            _ => None,
        },
        Subject::Msg => match name {
            "subject" => msg(MsgField::Subject),
            "from" => msg(MsgField::From),
            "date" => msg(MsgField::Date),
            "message_id" => msg(MsgField::MessageId),
            "size" => Some(Subject::Value(Expr::Size, Ty::Int)),
            "to" => Some(Subject::List(List::To)),
            "cc" => Some(Subject::List(List::Cc)),
            "flags" => Some(Subject::List(List::Flags)),
            _ => None,
        },
        Subject::Value(s, Ty::Str) => match name {
            "len" => Some(Subject::Value(Expr::StrLen(Box::new(s)), Ty::Int)),
            "is_empty" => Some(Subject::Value(Expr::StrEmpty(Box::new(s)), Ty::Bool)),
            _ => None,
        },
        Subject::List(list) => match name {
            "len" => Some(Subject::Value(Expr::ListLen(list), Ty::Int)),
            "is_empty" => Some(Subject::Value(Expr::ListEmpty(list), Ty::Bool)),
            _ => None,
        },
        Subject::Value(..) => None,
    }
}
