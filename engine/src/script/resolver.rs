//! `import "lib/x" as x;` resolves inside the scripts folder and nowhere else: absolute paths
//! and `..` are refused before the file resolver sees them.

use std::path::{Component, Path};

use rhai::module_resolvers::FileModuleResolver;
use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position};

type SharedModule = std::sync::Arc<Module>;

/// A file resolver jailed to one folder. Built fresh on every reload, so an edited module is
/// never served from a stale cache.
pub struct JailedResolver {
    inner: FileModuleResolver,
}

impl JailedResolver {
    pub fn new(dir: &Path) -> JailedResolver {
        let mut inner = FileModuleResolver::new_with_path_and_extension(dir, "rhai");
        inner.enable_cache(false);
        JailedResolver { inner }
    }
}

impl ModuleResolver for JailedResolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        let escapes = Path::new(path).components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes || path.contains('\\') {
            return Err(EvalAltResult::ErrorModuleNotFound(
                format!("{path} (modules must be inside the scripts folder)"),
                pos,
            )
            .into());
        }
        // Always resolve relative to the scripts folder, not to the importing file.
        let _ = source;
        self.inner.resolve(engine, None, path, pos)
    }
}
