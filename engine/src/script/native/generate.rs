//! Generated rule bodies: a seeded generator writes stage functions from the native subset's
//! grammar (and some just outside it), and each one runs through the native tier and through
//! rhai on the same contexts and messages; verdicts, actions, log lines and errors must agree.
//! Deterministic: a failure names the seed and the source, and reproduces.

use super::tests::{contexts, messages, set_of};
use crate::script::decision::Stage;
use crate::script::set::ScriptSet;

/// splitmix64: small, seedable, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// One of `items`, the last (the bad one) once in twenty times.
    fn arg<'a>(&mut self, items: &[&'a str]) -> &'a str {
        let last = items.len() - 1;
        if self.chance(5) {
            items[last]
        } else {
            items[self.below(last)]
        }
    }
}

/// Values that meet the test contexts and messages, so tests go both ways.
const STRINGS: &[&str] = &[
    r#""""#,
    r#""bob@example.org""#,
    r#""example""#,
    r#""192.0.2.""#,
    r#""127.0.0.1""#,
    r#""localhost""#,
    r#""@Example.NET""#,
    r#""INVOICE""#,
    r#""invoice""#,
    r#""YES""#,
    r#""ΐ""#,
    r#""ǅ ß""#,
    r#""imap""#,
    r#""\\Seen""#,
    r#""x""#,
    r#""work""#,
    r#""INBOX""#,
    r#""42""#,
    r#""boss@example.org""#,
    r#""hello""#,
];
/// Prefixes, suffixes and middles of the test values, for `contains`, `starts_with`, `ends_with`.
const NEEDLES: &[&str] = &[
    r#""192.0.2.""#,
    r#""@Example.NET""#,
    r#""Alice""#,
    r#"".org""#,
    r#""bob@""#,
    r#""example""#,
    r#""mx.""#,
    r#""Your""#,
    r#""INVOICE""#,
    r#""ΐ""#,
    r#""ΟΣ""#,
    r#""Ö""#,
    r#""""#,
];
/// Arguments: the last one of each list is refused by the API (a script error), and is picked
/// rarely, so that most functions run to their end.
const HEADERS: &[&str] =
    &[r#""Subject""#, r#""X-Spam-Flag""#, r#""received""#, r#""List-Id""#, r#""X-Missing""#, r#""Bad Name""#];
const ADDRESSES: &[&str] = &[r#""archive@example.org""#, r#""carol@example.org""#, r#""not an address""#];
const FOLDERS: &[&str] = &[r#""Junk""#, r#""Lists/Rust""#, r#""../escape""#];
const FLAGS: &[&str] = &[r#""\\Flagged""#, r#""$Label1""#, r#""bad(flag""#];
const REJECT_CODES: &[&str] = &["550", "553", "599", "450"];
const TEMPFAIL_CODES: &[&str] = &["451", "452", "421", "250"];
const CTX_STR: &[&str] = &["remote_ip", "helo", "auth_user", "sender", "rcpt", "account", "protocol", "mailbox", "uid"];
const MSG_STR: &[&str] = &["subject", "from", "date", "message_id"];

#[derive(Clone, Copy, PartialEq)]
enum Ty {
    Str,
    Int,
    Bool,
}

/// Writes one stage function's body.
struct Gen<'r> {
    rng: &'r mut Rng,
    stage: Stage,
    /// The stage takes `msg`.
    msg: bool,
    /// Variables in scope: name, type (`None`: a literal list).
    vars: Vec<(String, Option<Ty>)>,
    /// `let` variables declared so far (the subset allows eight).
    lets: usize,
    lines: Vec<String>,
}

impl Gen<'_> {
    fn body(&mut self) -> String {
        let n = 1 + self.rng.below(4);
        for _ in 0..n {
            self.stmt(0);
        }
        std::mem::take(&mut self.lines).join("\n")
    }

    fn line(&mut self, depth: usize, text: String) {
        self.lines.push(format!("{}{text}", "    ".repeat(depth + 1)));
    }

    fn block(&mut self, depth: usize) {
        let scope = self.vars.len();
        for _ in 0..1 + self.rng.below(2) {
            self.stmt(depth + 1);
        }
        self.vars.truncate(scope);
    }

    fn stmt(&mut self, depth: usize) {
        match self.rng.below(if depth < 2 { 10 } else { 7 }) {
            0 | 1 => {
                let verdict = self.verdict();
                // Without `return`, a verdict is the block's value if it is the last statement.
                let text = if self.rng.chance(80) { format!("return {verdict};") } else { format!("{verdict};") };
                self.line(depth, text);
            }
            2 if self.lets < 8 => {
                let (name, ty) = (format!("v{}", self.lets), [Ty::Str, Ty::Int, Ty::Bool][self.rng.below(3)]);
                let value = self.expr(ty, 2);
                let keyword = if self.rng.chance(20) { "const" } else { "let" };
                self.line(depth, format!("{keyword} {name} = {value};"));
                self.vars.push((name, Some(ty)));
                self.lets += 1;
            }
            3 => {
                let name = format!("l{}", self.lines.len());
                let list = self.literal_list();
                self.line(depth, format!("let {name} = {list};"));
                self.vars.push((name, None));
            }
            4 if self.rng.chance(10) => self.line(depth, "return;".into()),
            4..=6 => {
                let action = self.action();
                self.line(depth, format!("{action};"));
            }
            _ => {
                let cond = self.expr(Ty::Bool, 3);
                self.line(depth, format!("if {cond} {{"));
                self.block(depth);
                if self.rng.chance(40) {
                    self.line(depth, "} else {".into());
                    self.block(depth);
                }
                self.line(depth, "}".into());
            }
        }
    }

    /// Whether an action or verdict only valid at some stages may be used here (and, once in
    /// twenty times, where it is an error).
    fn at(&mut self, stages: &[Stage]) -> bool {
        stages.contains(&self.stage) || self.rng.chance(5)
    }

    fn verdict(&mut self) -> String {
        match self.rng.below(8) {
            0 => "accept()".into(),
            1 => "reject()".into(),
            2 => format!("reject({})", self.expr(Ty::Str, 1)),
            3 => format!("reject({}, {})", self.rng.arg(REJECT_CODES), self.expr(Ty::Str, 1)),
            4 => "tempfail()".into(),
            5 => format!("tempfail({})", self.expr(Ty::Str, 1)),
            6 => format!("tempfail({}, {})", self.rng.arg(TEMPFAIL_CODES), self.expr(Ty::Str, 1)),
            _ if self.at(&[Stage::Data, Stage::Fetched]) => "discard()".into(),
            _ => "accept()".into(),
        }
    }

    fn action(&mut self) -> String {
        let envelope = [Stage::RcptTo, Stage::Data];
        match self.rng.below(if self.msg { 13 } else { 4 }) {
            0 | 1 => format!("log({})", self.expr(Ty::Str, 2)),
            2 if self.at(&envelope) => format!("ctx.add_rcpt({})", self.rng.arg(ADDRESSES)),
            3 if self.at(&envelope) => format!("ctx.remove_rcpt({})", self.expr(Ty::Str, 1)),
            2 | 3 => format!("log({})", self.expr(Ty::Str, 1)),
            4 => format!("msg.add_header({}, {})", self.rng.arg(HEADERS), self.expr(Ty::Str, 1)),
            5 => format!("msg.set_header({}, {})", self.rng.arg(HEADERS), self.expr(Ty::Str, 1)),
            6 => format!("msg.remove_header({})", self.rng.arg(HEADERS)),
            7 => format!("msg.set_subject({})", self.expr(Ty::Str, 1)),
            8 => format!("msg.file_into({})", self.rng.arg(FOLDERS)),
            9 => format!("msg.{}({})", ["forward", "redirect"][self.rng.below(2)], self.rng.arg(ADDRESSES)),
            10 => format!("msg.flag({})", self.rng.arg(FLAGS)),
            11 => "msg.mark_seen()".into(),
            _ if self.at(&[Stage::Fetched]) => "msg.delete()".into(),
            _ => "msg.mark_seen()".into(),
        }
    }

    fn var_of(&mut self, ty: Option<Ty>) -> Option<String> {
        let names: Vec<_> = self.vars.iter().filter(|(_, t)| *t == ty).map(|(n, _)| n.clone()).collect();
        (!names.is_empty()).then(|| names[self.rng.below(names.len())].clone())
    }

    fn literal_list(&mut self) -> String {
        let items: Vec<_> = (0..self.rng.below(4)).map(|_| self.rng.pick(STRINGS)).collect();
        format!("[{}]", items.join(", "))
    }

    fn list(&mut self) -> String {
        match self.rng.below(if self.msg { 7 } else { 3 }) {
            0 => self.literal_list(),
            1 => self.var_of(None).unwrap_or_else(|| "[]".into()),
            2 => "ctx.recipients".into(),
            3 => "msg.to".into(),
            4 => "msg.cc".into(),
            5 => "msg.flags".into(),
            _ => format!("msg.headers({})", self.rng.pick(HEADERS)),
        }
    }

    /// An operand or a method's receiver: parenthesized unless it is a single term.
    fn term(&mut self, ty: Ty, depth: usize) -> String {
        let e = self.expr(ty, depth);
        if e.contains(' ') || e.starts_with('!') {
            format!("({e})")
        } else {
            e
        }
    }

    fn expr(&mut self, ty: Ty, depth: usize) -> String {
        if self.rng.chance(25) {
            if let Some(var) = self.var_of(Some(ty)) {
                return var;
            }
        }
        let leaf = depth == 0 || self.rng.chance(30);
        match ty {
            Ty::Str => self.string(leaf, depth),
            Ty::Int => self.int(leaf, depth),
            Ty::Bool => self.boolean(leaf, depth),
        }
    }

    fn string(&mut self, leaf: bool, depth: usize) -> String {
        let choice = if leaf { [0, 1, 2, 7][self.rng.below(4)] } else { self.rng.below(8) };
        match choice {
            0 => self.rng.pick(STRINGS).into(),
            1 | 7 => format!("ctx.{}", self.rng.pick(CTX_STR)),
            2 if self.msg => format!("msg.{}", self.rng.pick(MSG_STR)),
            2 => self.rng.pick(STRINGS).into(),
            3 if self.msg => format!("msg.header({})", self.rng.pick(HEADERS)),
            3 | 4 => format!("{} + {}", self.term(Ty::Str, depth - 1), self.term(Ty::Str, depth - 1)),
            5 => format!("{}.to_lower()", self.term(Ty::Str, depth - 1)),
            _ => format!("{}.to_upper()", self.term(Ty::Str, depth - 1)),
        }
    }

    fn int(&mut self, leaf: bool, depth: usize) -> String {
        match self.rng.below(if leaf { 2 } else { 5 }) {
            0 => ["0", "1", "2", "3", "5", "12", "100", "1000", "-1"][self.rng.below(9)].into(),
            1 if self.msg => "msg.size".into(),
            1 => "7".into(),
            2 => format!("{}.len()", self.term(Ty::Str, depth - 1)),
            3 => format!("{}.len", self.term(Ty::Str, depth - 1)),
            _ => format!("{}.len()", self.list()),
        }
    }

    fn boolean(&mut self, leaf: bool, depth: usize) -> String {
        if leaf {
            return match self.rng.below(3) {
                0 => ["true", "false"][self.rng.below(2)].into(),
                1 => "ctx.tls".into(),
                _ if self.msg => format!("msg.has_header({})", self.rng.pick(HEADERS)),
                _ => "!ctx.tls".into(),
            };
        }
        let d = depth - 1;
        match self.rng.below(14) {
            0 => format!("{} == {}", self.term(Ty::Str, d), self.term(Ty::Str, d)),
            1 => format!("{} != {}", self.term(Ty::Str, d), self.term(Ty::Str, d)),
            2 => {
                let method = ["contains", "starts_with", "ends_with"][self.rng.below(3)];
                let haystack = match self.rng.below(3) {
                    0 => format!("ctx.{}", self.rng.pick(CTX_STR)),
                    1 if self.msg => format!("msg.{}", self.rng.pick(MSG_STR)),
                    _ => self.term(Ty::Str, d),
                };
                let needle = if self.rng.chance(70) { self.rng.pick(NEEDLES).into() } else { self.term(Ty::Str, d) };
                format!("{haystack}.{method}({needle})")
            }
            3 => format!("{}.is_empty{}", self.term(Ty::Str, d), ["()", ""][self.rng.below(2)]),
            4 if self.rng.chance(50) => {
                let op = ["<", "<=", ">", ">=", "==", "!="][self.rng.below(6)];
                format!("{} {op} {}", self.term(Ty::Int, d), self.term(Ty::Int, d))
            }
            4 => {
                // A length against a small number: counts characters, not bytes.
                let op = ["<", "<=", ">", ">=", "==", "!="][self.rng.below(6)];
                format!("{}.len() {op} {}", self.term(Ty::Str, d), self.rng.below(14))
            }
            5 => format!("!({})", self.term(Ty::Bool, d)),
            6 => format!("({} && {})", self.term(Ty::Bool, d), self.term(Ty::Bool, d)),
            7 => format!("({} || {})", self.term(Ty::Bool, d), self.term(Ty::Bool, d)),
            8 => format!("{} in {}", self.term(Ty::Str, d), self.list()),
            9 => format!("{} !in {}", self.term(Ty::Str, d), self.list()),
            10 => format!("{} in {}", self.term(Ty::Str, d), self.term(Ty::Str, d)),
            11 => format!("{}.contains({})", self.list(), self.term(Ty::Str, d)),
            12 => format!("{}.is_empty()", self.list()),
            _ => format!("{} == {}", self.term(Ty::Bool, d), self.term(Ty::Bool, d)),
        }
    }
}

/// A file with every stage's function, each body generated from `rng`.
fn file(rng: &mut Rng) -> String {
    let mut out = String::new();
    for stage in Stage::ALL {
        let msg = stage.arity() == 2;
        let body = Gen { rng: &mut *rng, stage, msg, vars: Vec::new(), lets: 0, lines: Vec::new() }.body();
        let params = if msg { "ctx, msg" } else { "ctx" };
        out.push_str(&format!("fn {}({params}) {{\n{body}\n}}\n", stage.name()));
    }
    out
}

/// Every stage of `set` on every context (and message), as text to compare.
fn outcomes(set: &ScriptSet) -> Vec<String> {
    let (contexts, messages) = (contexts(), messages());
    let mut out = Vec::new();
    for stage in Stage::ALL {
        for ctx in &contexts {
            for msg in messages.iter().take(if stage.arity() == 2 { messages.len() } else { 1 }) {
                let d = set.call(stage, ctx, (stage.arity() == 2).then_some(msg), "test");
                out.push(format!(
                    "{stage} {:?} {:?} {:?} {:?} {:?}",
                    d.verdict, d.decided_by, d.actions, d.logs, d.error
                ));
            }
        }
    }
    out
}

/// How many files (of six functions each) each agreement test generates: two tests, so that
/// they run in parallel (compiling a set costs ≈ 10 ms in a debug build).
const FILES: usize = 180;

#[test]
fn generated_functions_decide_as_rhai_does() {
    agree(0x6d61_696c_666c_6f77);
}

#[test]
fn more_generated_functions_decide_as_rhai_does() {
    agree(0x6e61_7469_7665_2121);
}

/// Generates [`FILES`] files from `seed`; each must translate whole (unless under a tight
/// limit) and decide as rhai does.
fn agree(seed: u64) {
    let mut rng = Rng(seed);
    let mut native = 0;
    for index in 0..FILES {
        let source = file(&mut rng);
        // Mostly without limit; some under a tight `max_operations`, where the translation
        // must step aside for the functions that could reach it.
        let limit = if rng.chance(85) { 1_000_000 } else { [5, 13, 34, 55, 89, 144][rng.below(6)] };
        let (_dir, set) = set_of(&source, limit);
        if limit == 1_000_000 {
            let refused: Vec<_> =
                set.explain().into_iter().filter_map(|(_, s, _, r)| r.map(|r| (s, r.clone()))).collect();
            assert!(refused.is_empty(), "seed {seed:#x} file {index}: not translated: {refused:?}\n{source}");
        }
        native += set.native_count();
        let fast = outcomes(&set);
        let slow = outcomes(&set.rhai_only());
        for (a, b) in fast.iter().zip(&slow) {
            assert_eq!(a, b, "seed {seed:#x} file {index} (max_operations {limit}):\n{source}");
        }
    }
    assert!(native > FILES * 5, "only {native} functions ran natively");
}

/// Constructs outside the subset, each with what `explain` must name.
const OUTSIDE: &[(&str, &str)] = &[
    ("for x in [1, 2] { log(\"x\"); }", "`for` loop"),
    ("while ctx.tls { log(\"w\"); break; }", "`while` loop"),
    ("loop { break; }", "`loop`"),
    ("let m = #{ a: 1 };", "map"),
    ("let m = #{ a: ctx.sender };", "object map"),
    ("let n = 1; n = 2;", "assignment"),
    ("log(`id ${ctx.sender}`);", "string interpolation"),
    ("if ctx.sender.len() > 1.5 { log(\"f\"); }", "floating-point"),
    ("log(ctx.sender[0]);", "indexing"),
    ("throw \"no\";", "`throw`"),
    ("log(helper(ctx.sender));", "call to script function `helper`"),
    ("log(parse_int(\"1\"));", "call to `parse_int()`"),
    ("if ctx.recipients.len() > 1 { log(ctx.recipients); }", "a list used as a value"),
    ("if ctx.sender == 1 { log(\"i\"); }", "`==` between a string and an integer"),
    ("switch ctx.sender { \"a\" => log(\"a\"), _ => () }", "`switch`"),
];

#[test]
fn functions_just_outside_the_subset_are_refused_with_their_reason() {
    let mut rng = Rng(7);
    for (construct, reason) in OUTSIDE {
        for _ in 0..5 {
            // A generated subset body with the construct on a line of its own among it.
            let mut gen =
                Gen { rng: &mut rng, stage: Stage::Connect, msg: false, vars: Vec::new(), lets: 0, lines: Vec::new() };
            let body = gen.body();
            let mut lines: Vec<&str> = body.lines().collect();
            // Between top-level statements, before any `return` (the optimizer drops dead code,
            // and the branches of an `if` on a constant).
            let top = |l: &str| l.len() > 4 && !l[4..].starts_with([' ', '}']);
            let end = lines.iter().position(|l| l.starts_with("    return")).unwrap_or(lines.len());
            let places: Vec<_> = (0..=end).filter(|&i| i == lines.len() || top(lines[i])).collect();
            let at = places[rng.below(places.len())];
            lines.insert(at, construct);
            let source = format!("fn helper(x) {{ x }}\nfn connect(ctx) {{\n{}\n}}\n", lines.join("\n"));
            let (_dir, set) = set_of(&source, 1_000_000);
            let explained = set.explain();
            let Some((_, _, _, Some(refusal))) = explained.iter().find(|(_, s, _, _)| *s == Stage::Connect) else {
                panic!("translated:\n{source}");
            };
            // Line 1 is the helper, line 2 the `fn`: the construct is on line `at + 3`.
            let text = refusal.to_string();
            assert_eq!(refusal.line, at + 3, "{text:?}:\n{source}");
            assert!(text.contains(reason), "{text:?} does not name {reason:?}:\n{source}");
            assert_eq!(outcomes(&set), outcomes(&set.rhai_only()), "{source}");
        }
    }
}
