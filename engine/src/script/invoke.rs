//! Calling one file's stage function with rhai's function-resolution cache kept warm.
//!
//! `Engine::call_fn_with_options` starts every call with an empty resolution cache, and rhai
//! caches a resolution only the second time a call site's function is looked up within that
//! cache. A stage function typically calls each method once (`ctx.sender.ends_with(..)`), so
//! every call resolved every function from scratch: 72 resolutions per message for the
//! benchmark's 20 rules, 18 % of the script's instructions (bench/results/findings.md, "Sixth
//! pass"). Here each thread keeps one cache per file of the current script set, so from the
//! second message on a method call is one hash lookup.
//!
//! The call is what `call_fn_with_options(eval_ast = true)` does — the file's top-level
//! statements, then `stage(ctx[, msg])` — through rhai's `internals` API (the only way to pass
//! a cache in). A cache is only valid for the functions it was filled from, so it is keyed by
//! the set's generation and the file's index; a file whose top-level `import` brings global
//! functions clears its cache on each call (rhai does that itself).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use rhai::Caches;
use rhai::{Dynamic, Engine, EvalAltResult, Position, Scope, AST};

use super::context::ScriptCtx;
use super::decision::Stage;
use crate::message::MessageView;

/// Scope names of the call's arguments. The call statement is compiled against them, and they
/// are pushed after the file's top-level statements ran, so they shadow any variable of the
/// same name those statements declared.
const CTX: &str = "ctx";
const MSG: &str = "msg";
/// Where the compiled call statement stands (its own one-line source).
const CALL_POSITION: Position = Position::new(1, 1);

/// A new generation number for each compiled script set.
pub fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    /// This thread's caches: the set generation they belong to, one slot per file (boxed: a
    /// `Caches` is over a kilobyte, moved in and out on every call).
    static CACHES: RefCell<(u64, Vec<Option<Box<Caches>>>)> = const { RefCell::new((0, Vec::new())) };
}

/// The compiled `stage(ctx)` / `stage(ctx, msg)` statements, one per stage.
pub struct CallStatements {
    by_stage: Vec<AST>,
}

impl CallStatements {
    pub fn compile(engine: &Engine) -> Result<CallStatements, rhai::ParseError> {
        // Variables, not constants: the optimizer would fold a constant's value into the call.
        let mut scope = Scope::new();
        scope.push(CTX, ());
        scope.push(MSG, ());
        let by_stage = Stage::ALL
            .iter()
            .map(|stage| {
                let args = if stage.arity() == 2 { format!("{CTX}, {MSG}") } else { CTX.to_string() };
                engine.compile_with_scope(&scope, format!("{}({args})", stage.name()))
            })
            .collect::<Result<_, _>>()?;
        Ok(CallStatements { by_stage })
    }

    fn of(&self, stage: Stage) -> &AST {
        &self.by_stage[stage as usize]
    }
}

/// Runs `file`'s function for `stage` (file `index` of set `generation`), with this thread's
/// cache for that file.
#[allow(deprecated)] // `eval_statements_raw`: the internals entry point that takes a cache
#[allow(clippy::too_many_arguments)]
pub fn call(
    engine: &Engine,
    calls: &CallStatements,
    generation: u64,
    index: usize,
    file: &AST,
    stage: Stage,
    ctx: &ScriptCtx,
    msg: Option<&MessageView>,
) -> Result<Dynamic, Box<EvalAltResult>> {
    let mut caches = take(generation, index);
    let mut global = engine.new_global_runtime_state();
    global.lib.push(file.shared_lib().clone());
    global.embedded_module_resolver = file.resolver().cloned();
    let mut scope = Scope::new();
    // The file's top-level statements, then the call: only the call's errors go through
    // `call_error` (a top-level error keeps its position in the file, even 1:1).
    let result = engine.eval_statements_raw(&mut global, &mut caches, &mut scope, file.statements()).and_then(|_| {
        scope.push(CTX, ctx.clone());
        if let Some(msg) = msg {
            scope.push(MSG, msg.clone());
        }
        engine
            .eval_statements_raw(&mut global, &mut caches, &mut scope, calls.of(stage).statements())
            .map_err(|e| call_error(*e, stage))
    });
    put_back(generation, index, caches);
    result
}

/// As `call_fn` does: an error inside the stage function is reported as itself, not as "error
/// in call to function connect", and an error rhai places at the call statement itself (a
/// timeout stops the call there) has no position, not the call statement's own 1:1.
fn call_error(e: EvalAltResult, stage: Stage) -> Box<EvalAltResult> {
    let mut e = match e {
        EvalAltResult::ErrorInFunctionCall(name, _, inner, _) if name == stage.name() => inner,
        other => Box::new(other),
    };
    if e.position() == CALL_POSITION {
        e.set_position(Position::NONE);
    }
    e
}

fn take(generation: u64, index: usize) -> Box<Caches> {
    CACHES
        .with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != generation {
                *c = (generation, Vec::new());
            }
            c.1.get_mut(index).and_then(Option::take)
        })
        .unwrap_or_default()
}

fn put_back(generation: u64, index: usize, caches: Box<Caches>) {
    CACHES.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 == generation {
            if c.1.len() <= index {
                c.1.resize_with(index + 1, || None);
            }
            c.1[index] = Some(caches);
        }
    });
}
