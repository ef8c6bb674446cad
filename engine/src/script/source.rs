//! Where scripts come from and where their errors point: the `*.rhai` files of the scripts
//! folder in name order, the stage functions' arity, and the `FILE:LINE:COL` of an error
//! (rhai reports some errors without a position, or inside a module: they are pointed at the
//! stage function or the `import` line).
//!
//! Security: only files directly in the scripts folder are loaded; modules resolve through
//! the jailed resolver (`resolver.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rhai::{EvalAltResult, Position, AST};

use super::decision::{ScriptError, Stage};

/// The `*.rhai` files directly in `dir`, sorted by file name.
pub(super) fn script_files(dir: &Path) -> Result<Vec<PathBuf>, ScriptError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ScriptError {
                file: dir.display().to_string(),
                line: 0,
                col: 0,
                message: format!("cannot read scripts folder: {e}"),
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "rhai"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort_by_key(|p| p.file_name().map(|n| n.to_os_string()));
    Ok(files)
}

/// A stage function with the wrong number of parameters is almost surely a mistake: say so at
/// compile time rather than silently never calling it.
pub(super) fn check_stage_functions(ast: &AST) -> Result<(), (Stage, String)> {
    for f in ast.iter_functions() {
        if let Some(stage) = Stage::parse(f.name) {
            if f.params.len() != stage.arity() {
                let expected = if stage.arity() == 2 { "(ctx, msg)" } else { "(ctx)" };
                return Err((
                    stage,
                    format!("fn {}() must take {expected}, it takes {} parameter(s)", f.name, f.params.len()),
                ));
            }
        }
    }
    Ok(())
}

/// `LINE`, `COL` (1-based) of each stage function's `fn` keyword in `source`. rhai's function
/// metadata carries no position, so this is a line scan for `[private] fn NAME(`; good enough
/// for pointing at the definition in an error.
pub(super) fn stage_positions(source: &str) -> HashMap<Stage, (usize, usize)> {
    let mut found = HashMap::new();
    for (index, line) in source.lines().enumerate() {
        let trimmed = line.trim_start();
        let col = line.len() - trimmed.len() + 1;
        let definition = trimmed.strip_prefix("private").map(str::trim_start).unwrap_or(trimmed);
        let Some(rest) = definition.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if let Some(stage) = Stage::parse(&name) {
            found.entry(stage).or_insert((index + 1, col));
        }
    }
    found
}

/// `LINE`, `COL` of the `import "PATH"` whose PATH an error `message` names (rhai resolves
/// static imports at compile time without a position).
pub(super) fn import_position(source: &str, message: &str) -> Option<(usize, usize)> {
    for (index, line) in source.lines().enumerate() {
        let Some(at) = line.find("import") else {
            continue;
        };
        let rest = &line[at + "import".len()..];
        let Some(open) = rest.find('"') else {
            continue;
        };
        let quoted = &rest[open + 1..];
        let Some(close) = quoted.find('"') else {
            continue;
        };
        let path = &quoted[..close];
        if !path.is_empty() && message.contains(&format!("not found: {path}")) {
            return Some((index + 1, at + "import".len() + open + 1));
        }
    }
    None
}

pub(super) fn innermost(e: &EvalAltResult) -> &EvalAltResult {
    match e {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _) | EvalAltResult::ErrorInModule(_, inner, _) => {
            innermost(inner)
        }
        other => other,
    }
}

/// `FILE:LINE:COL: message` for an error raised while compiling or running `file`, pointing at
/// the innermost position (and module file) that rhai reports.
pub fn error_of(file: &str, e: &EvalAltResult) -> ScriptError {
    let mut source = file.to_string();
    let mut pos = e.position();
    let mut current = e;
    loop {
        match current {
            EvalAltResult::ErrorInFunctionCall(_, src, inner, p) => {
                if !src.is_empty() {
                    source = format!("{src}.rhai");
                }
                if !p.is_none() {
                    pos = *p;
                }
                current = inner;
            }
            EvalAltResult::ErrorInModule(name, inner, p) => {
                if !name.is_empty() {
                    source = format!("{name}.rhai");
                }
                if !p.is_none() {
                    pos = *p;
                }
                current = inner;
            }
            other => {
                if !other.position().is_none() {
                    pos = other.position();
                }
                break;
            }
        }
    }
    let message = match current {
        EvalAltResult::ErrorParsing(kind, _) => kind.to_string(),
        other => {
            let text = other.to_string();
            // rhai appends " (line x, position y)"; the prefix already says where.
            text.split(" (line ").next().unwrap_or(&text).to_string()
        }
    };
    let message = match message.strip_prefix("Undefined module: ") {
        Some(name) if crate::config::AVAILABLE_PLUGINS.contains(&name.trim()) => {
            format!("{message} (the {} plugin is not enabled: add it to [plugins] enabled)", name.trim())
        }
        _ => message,
    };
    let (line, col) = position(pos);
    ScriptError { file: source, line, col, message }
}

pub(super) fn position(pos: Position) -> (usize, usize) {
    (pos.line().unwrap_or(0), pos.position().unwrap_or(0))
}
