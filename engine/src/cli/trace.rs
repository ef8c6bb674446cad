//! `mailflow trace ID [--json]`: what happened to one message (docs/web.md). Asks the running
//! daemon (it holds the state store) and, when none answers, reads the store itself, so the
//! trace survives restarts for `[web] trace_retention`.

use std::path::Path;

use crate::config::LoadedConfig;

/// Returns the process exit code: 0 found, 1 not found or no store.
pub fn run(config: Option<&Path>, id: &str, json: bool) -> i32 {
    let loaded = match LoadedConfig::load(config) {
        Ok(loaded) => loaded,
        Err(e) => {
            crate::errln!("{e}");
            return 1;
        }
    };
    let dir = &loaded.config.state.dir;
    let found = match crate::trace::socket::ask(dir, id) {
        Ok(found) => found,
        Err(_) => match read_store(dir, id) {
            Ok(found) => found,
            Err(e) => {
                crate::errln!("{e}");
                return 1;
            }
        },
    };
    let Some(trace) = found else {
        crate::errln!("{id}: no trace (unknown id, or older than [web] trace_retention)");
        return 1;
    };
    let text = if json {
        serde_json::to_string_pretty(&trace).map(|mut s| {
            s.push('\n');
            s
        })
    } else {
        Ok(crate::trace::text::render(&trace))
    };
    match text {
        Ok(text) => {
            super::output::write_out(format_args!("{text}"));
            0
        }
        Err(e) => {
            super::output::write_err(format_args!("{e}\n"));
            1
        }
    }
}

fn read_store(dir: &Path, id: &str) -> Result<Option<crate::trace::Trace>, String> {
    if !dir.join(crate::state::TRACE_FILE).exists() {
        return Ok(None);
    }
    let db = crate::state::open_file(dir, crate::state::TRACE_FILE).map_err(|e| e.to_string())?;
    crate::trace::store::load(&db, id).map_err(|e| e.to_string())
}
