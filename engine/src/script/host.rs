//! The script host: the live [`ScriptSet`], swapped atomically on reload.
//!
//! Sessions take the current set once, when they start, and finish on it; a reload never
//! disturbs a session in flight. A set that fails to compile is never activated: the previous
//! one stays live and each error is logged as `FILE:LINE:COL: message`.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::decision::ScriptError;
use super::set::{EngineHook, ScriptSet};
use crate::config::ScriptsConfig;

/// Shared by every session and poller.
pub struct ScriptHost {
    current: ArcSwap<ScriptSet>,
    config: ScriptsConfig,
    extend: Option<Arc<EngineHook>>,
}

impl ScriptHost {
    /// Compiles the folder; fails with every error when any file does not compile.
    pub fn load(config: ScriptsConfig, extend: Option<Arc<EngineHook>>) -> Result<ScriptHost, Vec<ScriptError>> {
        let set = ScriptSet::compile(&config, extend.as_deref())?;
        Ok(ScriptHost { current: ArcSwap::from_pointee(set), config, extend })
    }

    /// The live set. Keep the `Arc` for the whole session.
    pub fn current(&self) -> Arc<ScriptSet> {
        self.current.load_full()
    }

    /// Recompiles the folder and swaps the new set in if it compiled; otherwise logs each
    /// error and keeps the old set.
    pub fn reload(&self) -> Result<(), Vec<ScriptError>> {
        match ScriptSet::compile(&self.config, self.extend.as_deref()) {
            Ok(set) => {
                let files = set.file_names().join(", ");
                self.current.store(Arc::new(set));
                crate::prometheus::script_reload(true);
                tracing::info!(target: "mailflow::script", files = %files, "scripts reloaded");
                Ok(())
            }
            Err(errors) => {
                for error in &errors {
                    tracing::error!(target: "mailflow::script", "{error}");
                }
                tracing::error!(target: "mailflow::script", "scripts not reloaded: the previous set stays live");
                crate::prometheus::script_reload(false);
                Err(errors)
            }
        }
    }

    pub fn config(&self) -> &ScriptsConfig {
        &self.config
    }
}
