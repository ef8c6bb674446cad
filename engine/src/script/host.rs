//! The script host: the live [`ScriptSet`], swapped atomically on reload.
//!
//! An SMTP session takes the current set at connect, at HELO and at each MAIL FROM, so a
//! transaction finishes on the set it started with while the next one sees a reload. A set that
//! fails to compile is never activated: the previous one stays live and each error is logged
//! as `FILE:LINE:COL: message`.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::decision::ScriptError;
use super::set::{EngineHook, ScriptSet};
use crate::config::ScriptsConfig;

/// Shared by every session and poller.
pub struct ScriptHost {
    current: ArcSwap<ScriptSet>,
    /// `timeout_ms`, `max_operations` and `on_error` may change on SIGHUP; `dir` stays.
    config: ArcSwap<ScriptsConfig>,
    extend: Option<Arc<EngineHook>>,
    /// One reload at a time: the watcher's and SIGHUP's could otherwise interleave, and a set
    /// compiled under the old limits be stored after one compiled under the new.
    reloading: std::sync::Mutex<()>,
}

impl ScriptHost {
    /// Compiles the folder; fails with every error when any file does not compile.
    pub fn load(config: ScriptsConfig, extend: Option<Arc<EngineHook>>) -> Result<ScriptHost, Vec<ScriptError>> {
        let set = ScriptSet::compile(&config, extend.as_deref())?;
        Ok(ScriptHost {
            current: ArcSwap::from_pointee(set),
            config: ArcSwap::from_pointee(config),
            extend,
            reloading: std::sync::Mutex::new(()),
        })
    }

    /// The live set. Keep the `Arc` for the whole session.
    pub fn current(&self) -> Arc<ScriptSet> {
        self.current.load_full()
    }

    /// Recompiles the folder and swaps the new set in if it compiled; otherwise logs each
    /// error and keeps the old set.
    pub fn reload(&self) -> Result<(), Vec<ScriptError>> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        self.compile_and_swap(&self.config.load())
    }

    /// [`Self::reload`] with new limits (SIGHUP re-read the config file); they take effect
    /// only together with a set that compiled under them.
    pub fn reload_with(&self, config: &ScriptsConfig) -> Result<(), Vec<ScriptError>> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        self.compile_and_swap(config)
    }

    fn compile_and_swap(&self, config: &ScriptsConfig) -> Result<(), Vec<ScriptError>> {
        match ScriptSet::compile(config, self.extend.as_deref()) {
            Ok(set) => {
                let files = set.file_names().join(", ");
                self.config.store(Arc::new(config.clone()));
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

    pub fn config(&self) -> Arc<ScriptsConfig> {
        self.config.load_full()
    }
}
