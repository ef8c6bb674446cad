//! `mailflow check`: validate the config and compile every script; print each error as
//! `FILE:LINE:COL: message`. With `--explain`, also one line per stage function: whether it
//! runs natively (see `script::native`) or in rhai, and which construct keeps it there.

use crate::config::LoadedConfig;
use crate::script::ScriptSet;
use crate::{errln, out, outln};

/// Returns the process exit code.
pub fn run(config: Option<&std::path::Path>, explain: bool) -> i32 {
    let loaded = match LoadedConfig::load(config) {
        Ok(loaded) => loaded,
        Err(e) => {
            errln!("{e}");
            return 1;
        }
    };
    let extend = match crate::state::in_memory()
        .map_err(|e| e.to_string())
        .and_then(|store| crate::plugins::hook_for(&loaded.config, store).map_err(|e| e.to_string()))
    {
        Ok(extend) => extend,
        Err(e) => {
            errln!("{}: {e}", loaded.source.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
            return 1;
        }
    };
    // The certificate and key must load, as `mailflow run` needs them to start.
    if let (Some(cert), Some(key)) = (&loaded.config.smtp.tls_cert, &loaded.config.smtp.tls_key) {
        if let Err(e) = crate::smtp::tls::load_config(cert, key) {
            errln!("{}: {e}", loaded.source.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
            return 1;
        }
    }
    // Every DKIM key must load (at run time a bad one only means unsigned mail: found here).
    let (_, key_errors) = crate::outbound::Signer::from_config(&loaded.config);
    if !key_errors.is_empty() {
        for e in key_errors {
            errln!("{}: {e}", loaded.source.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
        }
        return 1;
    }
    if let Err(e) = crate::config::signing::check_srs(&loaded.config) {
        errln!("{}: {e}", loaded.source.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
        return 1;
    }
    match ScriptSet::compile(&loaded.config.scripts, extend.as_deref()) {
        Ok(set) => {
            let names = set.file_names();
            outln!(
                "ok: config {}, {} script(s) in {}{}",
                loaded.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into()),
                names.len(),
                loaded.config.scripts.dir.display(),
                if names.is_empty() { String::new() } else { format!(": {}", names.join(", ")) }
            );
            if explain {
                out!("{}", explanation(&set));
            }
            0
        }
        Err(errors) => {
            let dir = &loaded.config.scripts.dir;
            for e in errors {
                let path = dir.join(&e.file);
                let shown = if path.exists() { path.display().to_string() } else { e.file.clone() };
                errln!("{shown}:{}:{}: {}", e.line, e.col, e.message);
            }
            1
        }
    }
}

/// One line per stage function: `FILE:LINE: fn STAGE: native`, or `...: rhai: WHY`.
fn explanation(set: &ScriptSet) -> String {
    let mut out = String::new();
    for (file, stage, line, refusal) in set.explain() {
        let how = match refusal {
            None => "native".to_string(),
            Some(why) => format!("rhai: {why}"),
        };
        out.push_str(&format!("{file}:{line}: fn {stage}: {how}\n"));
    }
    out
}
