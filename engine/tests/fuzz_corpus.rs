//! Replays every fuzz corpus entry (`fuzz/corpus/<target>/*`) through its harness, so each change
//! is checked against every input the fuzzers ever kept, and every crash they ever found.
//! A corpus directory that is missing or empty fails the test: a renamed target must take its
//! corpus along.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use mailflow::fuzz_targets::TARGETS;

#[test]
fn every_corpus_entry_passes_its_harness() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut failures = Vec::new();
    let mut total = 0;
    for (name, harness) in TARGETS {
        let dir = corpus.join(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
        let mut files: Vec<_> = entries.map(|e| e.expect("corpus entry").path()).filter(|p| p.is_file()).collect();
        files.sort();
        assert!(!files.is_empty(), "corpus {} is empty", dir.display());
        for file in files {
            let data = std::fs::read(&file).expect("corpus file");
            total += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| harness(&data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failures.push(format!("{name}/{}: {message}", file.file_name().unwrap_or_default().to_string_lossy()));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {total} corpus entries failed:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_target_has_a_cargo_fuzz_binary() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        assert!(fuzz.join(format!("fuzz_targets/{name}.rs")).is_file(), "fuzz/fuzz_targets/{name}.rs missing");
        assert!(manifest.contains(&format!("name = \"{name}\"")), "fuzz/Cargo.toml has no [[bin]] {name}");
    }
}
