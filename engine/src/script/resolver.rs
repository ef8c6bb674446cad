//! `import "lib/x" as x;` resolves inside the scripts folder and nowhere else: absolute paths
//! and `..` are refused before the file resolver sees them, and the file found is resolved to
//! its real path (symlinks followed) and refused unless that lies inside the real path of the
//! scripts folder.
//!
//! Security: module paths come from scripts, and a computed `import` may be built from message
//! text; a symlink planted in the scripts folder must not reach files outside it either.

use std::path::{Component, Path, PathBuf};

use rhai::module_resolvers::FileModuleResolver;
use rhai::{Engine, EvalAltResult, Module, ModuleResolver, Position};

type SharedModule = std::sync::Arc<Module>;

/// A file resolver jailed to one folder. Built fresh on every reload, so an edited module is
/// never served from a stale cache.
pub struct JailedResolver {
    inner: FileModuleResolver,
    /// The scripts folder with symlinks resolved: every module's real path must lie inside.
    root: PathBuf,
}

impl JailedResolver {
    pub fn new(dir: &Path) -> JailedResolver {
        let mut inner = FileModuleResolver::new_with_path_and_extension(dir, "rhai");
        inner.enable_cache(false);
        // A folder that cannot be resolved admits nothing: no real path starts with it.
        let root = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        JailedResolver { inner, root }
    }
}

fn refused(path: &str, why: &str, pos: Position) -> Box<EvalAltResult> {
    EvalAltResult::ErrorModuleNotFound(format!("{path} ({why})"), pos).into()
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
            return Err(refused(path, "modules must be inside the scripts folder", pos));
        }
        // A file that does not exist is left to the inner resolver ("module not found").
        if let Ok(real) = self.inner.get_file_path(path, None).canonicalize() {
            if !real.starts_with(&self.root) {
                return Err(refused(path, "a symlink leads outside the scripts folder", pos));
            }
        }
        // Always resolve relative to the scripts folder, not to the importing file.
        let _ = source;
        self.inner.resolve(engine, None, path, pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(dir: &Path, path: &str) -> Result<(), String> {
        let engine = Engine::new();
        JailedResolver::new(dir).resolve(&engine, None, path, Position::NONE).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn symlinks_out_of_the_folder_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let scripts = tmp.path().join("scripts");
        std::fs::create_dir_all(scripts.join("lib")).unwrap();
        std::fs::write(tmp.path().join("outside.rhai"), "fn f() { 1 }").unwrap();
        std::fs::create_dir(tmp.path().join("elsewhere")).unwrap();
        std::fs::write(tmp.path().join("elsewhere/x.rhai"), "fn f() { 1 }").unwrap();
        std::fs::write(scripts.join("lib/ok.rhai"), "fn f() { 1 }").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside.rhai"), scripts.join("lib/evil.rhai")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), scripts.join("linked")).unwrap();
        // A symlink that stays inside the folder is fine.
        std::os::unix::fs::symlink("ok.rhai", scripts.join("lib/alias.rhai")).unwrap();

        assert_eq!(import(&scripts, "lib/ok"), Ok(()));
        assert_eq!(import(&scripts, "lib/alias"), Ok(()));
        for path in ["lib/evil", "linked/x"] {
            let err = import(&scripts, path).unwrap_err();
            assert!(err.contains("a symlink leads outside the scripts folder"), "{path}: {err}");
        }
        let err = import(&scripts, "lib/missing").unwrap_err();
        assert!(err.contains("lib/missing"), "{err}");
    }

    #[test]
    fn the_scripts_folder_itself_may_be_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("real")).unwrap();
        std::fs::write(tmp.path().join("real/ok.rhai"), "fn f() { 1 }").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("real"), tmp.path().join("scripts")).unwrap();
        assert_eq!(import(&tmp.path().join("scripts"), "ok"), Ok(()));
    }
}
