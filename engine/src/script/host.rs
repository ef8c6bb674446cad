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
    /// What the status page shows: when the live set was loaded, the last reload's result.
    status: std::sync::Mutex<ReloadStatus>,
}

/// The live set's load time and the last reload attempt's result.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// Unix milliseconds when the live set was compiled.
    pub loaded_at: u64,
    /// Unix milliseconds of the last reload attempt (0: none since the start).
    pub attempted_at: u64,
    /// The last attempt's errors; empty when it succeeded (or none was made).
    pub errors: Vec<ScriptError>,
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
            status: std::sync::Mutex::new(ReloadStatus {
                loaded_at: crate::trace::now_ms(),
                ..ReloadStatus::default()
            }),
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

    /// When the live set was loaded and how the last reload went.
    pub fn status(&self) -> ReloadStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn compile_and_swap(&self, config: &ScriptsConfig) -> Result<(), Vec<ScriptError>> {
        let result = self.compile_and_swap_inner(config);
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        status.attempted_at = crate::trace::now_ms();
        match &result {
            Ok(()) => {
                status.loaded_at = status.attempted_at;
                status.errors.clear();
            }
            Err(errors) => status.errors = errors.clone(),
        }
        result
    }

    fn compile_and_swap_inner(&self, config: &ScriptsConfig) -> Result<(), Vec<ScriptError>> {
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
