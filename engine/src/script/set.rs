//! A compiled script set: every `*.rhai` file directly in the scripts folder, in file-name
//! order, compiled once per (re)load with the engine that will run it.
//!
//! A stage call runs the stage's function of each file in order until one returns a verdict
//! (docs/scripting.md). Each call runs under `max_operations` and a wall-clock deadline enforced by the
//! progress callback; errors, limits and timeouts become a [`ScriptError`] and `on_error`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, Scope, AST};

use super::context::ScriptCtx;
use super::decision::{Decision, ScriptError, Stage, Verdict};
use super::invoke::{self, CallStatements};
use super::native::{self, NativeFn, Refusal};
use super::source::{check_stage_functions, error_of, import_position, innermost, script_files, stage_positions};
use super::{analysis, api, resolver::JailedResolver, runner, sandbox};
use crate::config::{OnError, ScriptsConfig};
use crate::message::MessageView;

/// Sandbox limits beyond operations and time.
pub(crate) const MAX_STRING_SIZE: usize = 4 * 1024 * 1024;
pub(crate) const MAX_ARRAY_SIZE: usize = 100_000;
const MAX_MAP_SIZE: usize = 100_000;
const MAX_CALL_LEVELS: usize = 32;
const MAX_EXPR_DEPTH: usize = 64;
const MAX_FN_EXPR_DEPTH: usize = 32;
const MAX_MODULES: usize = 64;
/// How often (in operations) the progress callback looks at the clock.
const DEADLINE_CHECK_EVERY: u64 = 256;

/// One compiled file.
pub struct ScriptFile {
    pub name: Arc<str>,
    ast: AST,
    /// Where each stage function is defined (`LINE`, `COL`): errors rhai reports without a
    /// position (an empty `loop {}` running out of time, a bad return value) point there.
    stage_positions: HashMap<Stage, (usize, usize)>,
    /// Whether its hooks may block (plugin calls, imports): see [`runner`](super::runner).
    may_block: bool,
    /// Whether its hooks may read the message body (see [`analysis`](super::analysis)).
    reads_body: bool,
    /// Its stage functions translated to run without rhai, or why they cannot be (see
    /// [`native`](super::native)), by `Stage as usize`.
    native: [Result<NativeFn, Refusal>; Stage::ALL.len()],
}

/// Every file of the folder, compiled, plus the engine and limits that run them.
pub struct ScriptSet {
    engine: Engine,
    /// Tells this set's function-resolution caches from another set's (see [`invoke`]).
    generation: u64,
    /// The `stage(ctx[, msg])` statements a call evaluates.
    calls: CallStatements,
    files: Vec<ScriptFile>,
    /// For each stage (`Stage as usize`: a hash lookup per call showed in the instruction
    /// counts), the indices of the files defining its function, in file-name order.
    by_stage: [Vec<usize>; Stage::ALL.len()],
    timeout: Duration,
    max_operations: u64,
    on_error: OnError,
}

/// Extension point for plugins: called on the engine before any script is compiled.
pub type EngineHook = dyn Fn(&mut Engine) + Send + Sync;

impl ScriptSet {
    /// Builds the sandboxed engine with the whole API registered.
    pub fn build_engine(config: &ScriptsConfig, extend: Option<&EngineHook>) -> Engine {
        let mut engine = Engine::new();
        engine.set_max_operations(config.max_operations);
        engine.set_max_string_size(MAX_STRING_SIZE);
        engine.set_max_array_size(MAX_ARRAY_SIZE);
        engine.set_max_map_size(MAX_MAP_SIZE);
        engine.set_max_call_levels(MAX_CALL_LEVELS);
        engine.set_max_expr_depths(MAX_EXPR_DEPTH, MAX_FN_EXPR_DEPTH);
        engine.set_max_modules(MAX_MODULES);
        engine.disable_symbol("eval");
        // Undefined variables and modules are compile errors: a call into a plugin that is not
        // enabled (`kv::get` without "kv") fails `mailflow check`, not the first message.
        engine.set_strict_variables(true);
        engine.set_module_resolver(JailedResolver::new(&config.dir));
        engine.on_progress(|ops| {
            if ops % DEADLINE_CHECK_EVERY == 0 && sandbox::past_deadline() {
                return Some(Dynamic::from("timeout"));
            }
            None
        });
        api::register(&mut engine);
        if let Some(extend) = extend {
            extend(&mut engine);
        }
        engine
    }

    /// Compiles every `*.rhai` file directly in `config.dir`. A missing folder is an empty set.
    /// Any error fails the whole set: errors come back one per file, `FILE:LINE:COL: message`.
    pub fn compile(config: &ScriptsConfig, extend: Option<&EngineHook>) -> Result<ScriptSet, Vec<ScriptError>> {
        let engine = Self::build_engine(config, extend);
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for path in script_files(&config.dir).map_err(|e| vec![e])? {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let source = match std::fs::read_to_string(&path) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(ScriptError { file: name, line: 0, col: 0, message: format!("cannot read: {e}") });
                    continue;
                }
            };
            // Imported modules run their top-level statements now, at compile time: bound
            // them by the same deadline as a hook call so a runaway module cannot stall a reload.
            sandbox::begin(sandbox::CallState {
                deadline: Instant::now() + Duration::from_millis(config.timeout_ms),
                file: name.as_str().into(),
                stage: Stage::Connect,
                ctx: None,
                actions: Vec::new(),
                logs: Vec::new(),
                timed_out: false,
                leash: None,
                preempted: false,
                verdict_line: 0,
            });
            let compiled = engine.compile_into_self_contained(&Scope::new(), &source);
            let timed_out = sandbox::end().is_some_and(|s| s.timed_out);
            let stage_positions = stage_positions(&source);
            match compiled {
                Ok(ast) => {
                    if let Err((stage, message)) = check_stage_functions(&ast) {
                        let (line, col) = stage_positions.get(&stage).copied().unwrap_or((1, 1));
                        errors.push(ScriptError { file: name, line, col, message });
                        continue;
                    }
                    let native = Stage::ALL.map(|stage| native::compile(&ast, stage, config.max_operations));
                    files.push(ScriptFile {
                        name: name.into(),
                        ast,
                        native,
                        stage_positions,
                        may_block: analysis::may_block(&source),
                        reads_body: analysis::reads_body(&source),
                    });
                }
                Err(e) => {
                    let mut error = error_of(&name, &e);
                    if error.file == name && error.line == 0 {
                        if let Some((line, col)) = import_position(&source, &error.message) {
                            (error.line, error.col) = (line, col);
                        }
                    }
                    if timed_out || matches!(innermost(&e), EvalAltResult::ErrorTerminated(..)) {
                        error.message = format!("timed out after {} ms (timeout_ms) while loading", config.timeout_ms);
                    } else if matches!(innermost(&e), EvalAltResult::ErrorTooManyOperations(..)) {
                        error.message =
                            format!("exceeded {} operations (max_operations) while loading", config.max_operations);
                    }
                    errors.push(error);
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut by_stage: [Vec<usize>; Stage::ALL.len()] = Default::default();
        for (index, file) in files.iter().enumerate() {
            for stage in Stage::ALL {
                if file.ast.iter_functions().any(|f| f.name == stage.name() && f.params.len() == stage.arity()) {
                    by_stage[stage as usize].push(index);
                }
            }
        }
        let calls = CallStatements::compile(&engine)
            .map_err(|e| vec![ScriptError { file: String::new(), line: 0, col: 0, message: e.to_string() }])?;
        Ok(ScriptSet {
            engine,
            generation: invoke::next_generation(),
            calls,
            files,
            by_stage,
            timeout: Duration::from_millis(config.timeout_ms),
            max_operations: config.max_operations,
            on_error: config.on_error,
        })
    }

    /// The same set with every stage function left to rhai (no [`native`] translation): what
    /// the native tier is compared against, in its tests and in
    /// `engine/benches/script_instructions.rs` (`MF_NATIVE=0`). Not part of the API: public
    /// only because the bench is another crate.
    #[doc(hidden)]
    pub fn rhai_only(mut self) -> ScriptSet {
        for file in &mut self.files {
            file.native = Stage::ALL.map(|_| Err(Refusal { line: 0, what: "native tier turned off".into() }));
        }
        self
    }

    /// How many stage functions of the set run natively.
    pub fn native_count(&self) -> usize {
        self.files.iter().map(|f| f.native.iter().filter(|n| n.is_ok()).count()).sum()
    }

    /// Every stage function of every file, in file and stage order: the file, the stage, the
    /// line of its `fn`, and why it stays in rhai (`None`: it runs natively). What `mailflow
    /// check --explain` prints.
    pub fn explain(&self) -> Vec<(&str, Stage, usize, Option<&Refusal>)> {
        let mut out = Vec::new();
        for (index, file) in self.files.iter().enumerate() {
            for stage in Stage::ALL.into_iter().filter(|s| self.by_stage[*s as usize].contains(&index)) {
                let line = file.stage_positions.get(&stage).map_or(0, |p| p.0);
                out.push((&*file.name, stage, line, file.native[stage as usize].as_ref().err()));
            }
        }
        out
    }

    pub fn file_names(&self) -> Vec<&str> {
        self.files.iter().map(|f| &*f.name).collect()
    }

    /// Whether any file defines the stage's function (lets callers skip building arguments).
    pub fn has_stage(&self, stage: Stage) -> bool {
        !self.by_stage[stage as usize].is_empty()
    }

    /// Whether some hook of `stage` may read the message body (`msg.body_text`, `msg.raw`,
    /// a plugin...): when not, a poller may hand it a header-only message.
    pub fn stage_reads_body(&self, stage: Stage) -> bool {
        self.any_file_of(stage, |f| f.reads_body)
    }

    fn any_file_of(&self, stage: Stage, test: impl Fn(&ScriptFile) -> bool) -> bool {
        self.by_stage[stage as usize].iter().any(|&i| test(&self.files[i]))
    }

    /// Runs `stage` for a caller that cannot await and so blocks its thread until the call is
    /// over (the pollers' hook code, on a blocking thread): inline on a leash when every hook of the stage is plain
    /// rhai, on a thread of its own otherwise (see [`runner`]); writes the hooks' `log` lines
    /// once the call is over. SMTP sessions use [`Self::call_awaited`].
    pub fn call_blocking(&self, stage: Stage, ctx: &ScriptCtx, msg: Option<&MessageView>, id: &str) -> Decision {
        let decision = runner::run(
            self.any_file_of(stage, |f| f.may_block),
            |leash| self.call_leashed(stage, ctx, msg, id, Some(leash)),
            || self.call(stage, ctx, msg, id),
        );
        log_lines(&decision, stage, id);
        decision
    }

    /// [`Self::call_blocking`] for a caller that awaits (an SMTP session): a hook that may
    /// block, or outran the leash, runs on a blocking-pool thread (see [`runner::run_async`]).
    /// So does a hook that may read the body of a message over [`INLINE_BODY_LIMIT`]: parsing
    /// it is one native call the leash cannot stop, and it would hold every session of the
    /// thread meanwhile.
    pub async fn call_awaited(
        self: &Arc<Self>,
        stage: Stage,
        ctx: &ScriptCtx,
        msg: Option<&MessageView>,
        id: &str,
    ) -> Decision {
        let decision = runner::run_async(
            self.must_leave_the_session_thread(stage, msg),
            |leash| self.call_leashed(stage, ctx, msg, id, Some(leash)),
            || {
                let (set, ctx, msg, id) = (self.clone(), ctx.clone(), msg.cloned(), id.to_string());
                // What the call logs stays in the session's span on the other thread too.
                let span = tracing::Span::current();
                move || span.in_scope(|| set.call(stage, &ctx, msg.as_ref(), &id))
            },
        )
        .await;
        log_lines(&decision, stage, id);
        decision
    }

    /// Whether [`Self::call_awaited`] sends the call to the blocking pool at once.
    fn must_leave_the_session_thread(&self, stage: Stage, msg: Option<&MessageView>) -> bool {
        self.any_file_of(stage, |f| f.may_block)
            || msg.is_some_and(|m| m.size() > INLINE_BODY_LIMIT) && self.stage_reads_body(stage)
    }

    /// Runs `stage` over the set. `id` tags log lines (session or message id). Never panics and
    /// never fails: script errors are in `Decision::error`, with `on_error` applied.
    pub fn call(&self, stage: Stage, ctx: &ScriptCtx, msg: Option<&MessageView>, id: &str) -> Decision {
        self.call_leashed(stage, ctx, msg, id, None).unwrap_or_default()
    }

    /// [`Self::call`], stopped at `leash` if given: `None` then means "stopped there, nothing
    /// decided" (see [`runner`]).
    fn call_leashed(
        &self,
        stage: Stage,
        ctx: &ScriptCtx,
        msg: Option<&MessageView>,
        id: &str,
        leash: Option<Instant>,
    ) -> Option<Decision> {
        let mut decision = Decision::default();
        for &index in &self.by_stage[stage as usize] {
            let file = &self.files[index];
            sandbox::begin(sandbox::CallState {
                deadline: Instant::now() + self.timeout,
                leash,
                file: file.name.clone(),
                stage,
                ctx: Some(ctx.clone()),
                actions: Vec::new(),
                logs: Vec::new(),
                timed_out: false,
                preempted: false,
                verdict_line: 0,
            });
            let result = match (stage.arity(), msg) {
                (2, None) => Err("internal: stage needs a message".into()),
                _ => match file.native[stage as usize].as_ref().ok().and_then(|f| f.run(ctx, msg)) {
                    Some(value) => Ok(value),
                    None => {
                        // Not translated, or it failed: rhai runs it (and reports the error).
                        sandbox::forget_collected();
                        invoke::call(&self.engine, &self.calls, self.generation, index, &file.ast, stage, ctx, msg)
                    }
                },
            };
            let state = sandbox::end();
            if state.as_ref().is_some_and(|s| s.preempted) {
                return None;
            }
            let (actions, logs, timed_out, verdict_line) =
                state.map(|s| (s.actions, s.logs, s.timed_out, s.verdict_line)).unwrap_or_default();
            decision.logs.extend(logs);
            let outcome = match result {
                Ok(value) if value.is::<Verdict>() => Ok(value.try_cast::<Verdict>()),
                // rhai hands back a block's last value even after a `;` (`kv::incr(k);` as the
                // last statement returns a number): anything but a verdict means "no verdict".
                Ok(_) => Ok(None),
                Err(e) => {
                    let mut error = self.runtime_error(&file.name, &e, timed_out);
                    if *error.file == *file.name && error.line == 0 {
                        // rhai knew no position: point at the stage function.
                        (error.line, error.col) = file.stage_positions.get(&stage).copied().unwrap_or((0, 0));
                    }
                    Err(error)
                }
            };
            match outcome {
                Ok(None) => decision.actions.extend(actions),
                Ok(Some(verdict)) => {
                    decision.actions.extend(actions);
                    decision.verdict = Some(verdict);
                    decision.decided_by = Some(file.name.to_string());
                    decision.decided_at = (verdict_line > 0).then_some(verdict_line);
                    break;
                }
                Err(error) => {
                    tracing::warn!(target: "mailflow::script", stage = %stage, id, error = %error, "script failed; on_error applies");
                    // A failing stage acts as if no script had acted: drop every action.
                    decision.actions.clear();
                    decision.verdict = match self.on_error {
                        OnError::Tempfail => Some(Verdict::Tempfail {
                            code: 451,
                            status: "4.3.0".into(),
                            text: format!("Temporary local problem in script {}, try again later", file.name),
                        }),
                        OnError::Accept => None,
                    };
                    decision.decided_by = Some(file.name.to_string());
                    decision.decided_at = (error.line > 0 && *error.file == *file.name).then_some(error.line);
                    decision.error = Some(error);
                    break;
                }
            }
        }
        crate::prometheus::script_call(
            stage.name(),
            decision.verdict.as_ref().map_or("none", Verdict::name),
            decision.error.is_some(),
        );
        Some(decision)
    }

    fn runtime_error(&self, file: &str, e: &EvalAltResult, timed_out: bool) -> ScriptError {
        let mut error = error_of(file, e);
        if timed_out || matches!(innermost(e), EvalAltResult::ErrorTerminated(..)) {
            error.message = format!("timed out after {} ms (timeout_ms)", self.timeout.as_millis());
        } else if matches!(innermost(e), EvalAltResult::ErrorTooManyOperations(..)) {
            error.message = format!("exceeded {} operations (max_operations)", self.max_operations);
        }
        error
    }
}

/// Largest message whose body a hook may parse inline on a session thread (mail-parser takes a
/// few milliseconds per megabyte).
pub const INLINE_BODY_LIMIT: usize = 256 * 1024;

/// Writes the hooks' `log` lines of a call, once it is over.
fn log_lines(decision: &Decision, stage: Stage, id: &str) {
    for line in &decision.logs {
        tracing::info!(target: "mailflow::script", file = %line.file, stage = %stage, id, "{}", line.text);
    }
}

#[cfg(test)]
#[path = "set_tests.rs"]
mod tests;
