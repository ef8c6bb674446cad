//! Unit tests of the compiled script set.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::script::context::Context;
use crate::script::Action;

fn config(dir: &Path) -> ScriptsConfig {
    ScriptsConfig { dir: dir.to_path_buf(), timeout_ms: 200, max_operations: 1 << 40, ..ScriptsConfig::default() }
}

fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn hooks_that_may_block_or_parse_a_large_body_leave_the_session_thread() {
    let body_reader =
        folder(&[("10-b.rhai", "fn data(ctx, msg) { if msg.body_text.contains(\"x\") { reject(\"no\") } }")]);
    let header_reader = folder(&[("10-h.rhai", "fn data(ctx, msg) { if msg.subject == \"x\" { reject(\"no\") } }")]);
    let body_reader = ScriptSet::compile(&config(body_reader.path()), None).unwrap();
    let header_reader = ScriptSet::compile(&config(header_reader.path()), None).unwrap();
    let message = |size: usize| {
        let mut raw = b"Subject: x\r\n\r\n".to_vec();
        raw.resize(size, b'a');
        MessageView::new(Arc::new(raw))
    };
    let (small, large) = (message(INLINE_BODY_LIMIT), message(INLINE_BODY_LIMIT + 1));
    assert!(!body_reader.must_leave_the_session_thread(Stage::Data, Some(&small)));
    assert!(body_reader.must_leave_the_session_thread(Stage::Data, Some(&large)));
    assert!(!header_reader.must_leave_the_session_thread(Stage::Data, Some(&large)));
    assert!(!body_reader.must_leave_the_session_thread(Stage::Data, None));
}

fn data(set: &ScriptSet) -> Decision {
    let msg = MessageView::new(Arc::new(b"Subject: x\r\n\r\nbody\r\n".to_vec()));
    set.call(Stage::Data, &ScriptCtx::new(Context::default()), Some(&msg), "t")
}

#[test]
fn finds_stage_functions_and_imports() {
    let source = "// c\nimport \"lib/x\" as x;\n  fn data(ctx, msg) {}\nprivate fn helo(ctx) {}\nfn other() {}\n";
    let found = stage_positions(source);
    assert_eq!(found.get(&Stage::Data), Some(&(3, 3)));
    assert_eq!(found.get(&Stage::Helo), Some(&(4, 1)));
    assert_eq!(found.len(), 2);
    assert_eq!(import_position(source, "Module not found: lib/x"), Some((2, 8)));
    assert_eq!(import_position(source, "Module not found: lib/y"), None);
}

#[test]
fn errors_without_a_position_point_at_the_stage_function() {
    let dir = folder(&[("10-a.rhai", "// one\n\nfn data(ctx, msg) {\n    loop {}\n}\n")]);
    let set = ScriptSet::compile(&config(dir.path()), None).unwrap();
    let started = Instant::now();
    let decision = data(&set);
    assert!(started.elapsed() < Duration::from_secs(2));
    let error = decision.error.unwrap();
    assert_eq!((error.file.as_str(), error.line, error.col), ("10-a.rhai", 3, 1));
    assert_eq!(error.message, "timed out after 200 ms (timeout_ms)");
    assert!(matches!(decision.verdict, Some(Verdict::Tempfail { code: 451, .. })));
}

#[test]
fn compile_errors_carry_positions() {
    let dir = folder(&[
        ("10-arity.rhai", "\n\nfn rcpt_to(ctx, extra) {}\n"),
        ("20-import.rhai", "// x\nimport \"lib/none\" as n;\nfn helo(ctx) {}\n"),
    ]);
    let errors = ScriptSet::compile(&config(dir.path()), None).err().unwrap();
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(shown[0], "10-arity.rhai:3:1: fn rcpt_to() must take (ctx), it takes 2 parameter(s)");
    assert!(shown[1].starts_with("20-import.rhai:2:8: Module not found: lib/none"), "{}", shown[1]);
}

#[test]
fn a_runaway_module_cannot_stall_loading() {
    let dir = folder(&[
        ("10-a.rhai", "import \"lib/slow\" as slow;\nfn helo(ctx) {}\n"),
        ("lib/slow.rhai", "let n = 0;\nloop { n += 1; }\n"),
    ]);
    let started = Instant::now();
    let errors = ScriptSet::compile(&config(dir.path()), None).err().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.contains("while loading"), "{}", errors[0]);
}

#[test]
fn a_failing_file_drops_the_stage_actions() {
    let dir = folder(&[
        ("10-a.rhai", "fn data(ctx, msg) { msg.file_into(\"A\"); }\n"),
        ("20-b.rhai", "fn data(ctx, msg) {\n    throw \"no\";\n}\n"),
    ]);
    let decision = data(&ScriptSet::compile(&config(dir.path()), None).unwrap());
    assert!(decision.actions.is_empty());
    let error = decision.error.unwrap();
    assert_eq!((error.file.as_str(), error.line), ("20-b.rhai", 2));
    assert_eq!(decision.decided_by.as_deref(), Some("20-b.rhai"));
}

/// An error in a file's top-level statements keeps its place, even at line 1, column 1
/// (where the compiled call statement also stands: only its errors lose that position).
#[test]
fn top_level_errors_keep_their_position() {
    let dir = folder(&[("10-a.rhai", "throw \"boom\";\nfn data(ctx, msg) {}\n")]);
    let set = ScriptSet::compile(&config(dir.path()), None).unwrap();
    let error = data(&set).error.expect("the top-level throw fails the call");
    assert_eq!((error.file.as_str(), error.line, error.col), ("10-a.rhai", 1, 1), "{}", error.message);
}

/// List properties stay read-only although they have setters (which only accept the value
/// they already hold, so rhai's write-back after `ctx.recipients.len()` is cheap): a
/// method that changes the copy changes nothing, and an assignment is refused.
#[test]
fn list_properties_stay_read_only() {
    let dir = folder(&[
        (
            "10-a.rhai",
            "fn data(ctx, msg) {\n  ctx.recipients.push(\"x@y\");\n  msg.cc.push(\"x@y\");\n  \
             if ctx.recipients.len() == 0 && msg.cc.len() == 0 && msg.to.len() == 0 { msg.file_into(\"Same\"); }\n}\n",
        ),
        ("30-c.rhai", "fn data(ctx, msg) {\n  msg.cc = [];\n  msg.file_into(\"Unchanged\");\n}\n"),
    ]);
    let set = ScriptSet::compile(&config(dir.path()), None).unwrap();
    let decision = data(&set);
    assert!(decision.error.is_none(), "{:?}", decision.error);
    let folders: Vec<_> = decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::FileInto { folder } => Some(folder.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(folders, ["Same", "Unchanged"]);

    let dir = folder(&[("20-b.rhai", "fn data(ctx, msg) {\n  ctx.recipients = [\"x@y\"];\n}\n")]);
    let set = ScriptSet::compile(&config(dir.path()), None).unwrap();
    let error = data(&set).error.expect("assigning ctx.recipients fails");
    assert!(error.message.contains("ctx.recipients is read-only"), "{}", error.message);
}

/// Each file's helpers are its own, call after call, although this thread keeps its
/// function-resolution caches between calls (`invoke`), and a new set is a new set.
#[test]
fn same_named_helpers_stay_apart_across_calls_and_reloads() {
    let folder_of = |a: &str, b: &str| {
        folder(&[
            ("10-a.rhai", &format!("fn pick() {{ \"{a}\" }}\nfn data(ctx, msg) {{ msg.file_into(pick()); }}\n")),
            ("20-b.rhai", &format!("fn pick() {{ \"{b}\" }}\nfn data(ctx, msg) {{ msg.file_into(pick()); }}\n")),
        ])
    };
    let folders = |set: &ScriptSet| -> Vec<String> {
        data(set)
            .actions
            .iter()
            .map(|a| match a {
                Action::FileInto { folder } => folder.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    };
    let first = folder_of("A", "B");
    let set = ScriptSet::compile(&config(first.path()), None).unwrap();
    for _ in 0..3 {
        assert_eq!(folders(&set), ["A", "B"]);
    }
    let second = folder_of("C", "D");
    let reloaded = ScriptSet::compile(&config(second.path()), None).unwrap();
    for _ in 0..3 {
        assert_eq!(folders(&reloaded), ["C", "D"]);
        assert_eq!(folders(&set), ["A", "B"]);
    }
}

#[test]
fn the_decision_names_the_line_of_the_verdict_natively_and_in_rhai() {
    let native = "fn data(ctx, msg) {\n    if msg.subject == \"y\" { return accept(); }\n    if msg.subject == \"x\" {\n        return reject(\"5.7.1 no\");\n    }\n}\n";
    let rhai_only = "fn data(ctx, msg) {\n    for i in 0..2 { log(\"x\"); }\n    tempfail();\n}\n";
    for (source, line) in [(native, 4), (rhai_only, 3)] {
        let dir = folder(&[("10-a.rhai", source)]);
        let native_set = ScriptSet::compile(&config(dir.path()), None).unwrap();
        let rhai_set = ScriptSet::compile(&config(dir.path()), None).unwrap().rhai_only();
        for set in [&native_set, &rhai_set] {
            let decision = data(set);
            assert_eq!((decision.decided_by.as_deref(), decision.decided_at), (Some("10-a.rhai"), Some(line)));
            let step = decision.trace_step(Stage::Data, Duration::ZERO);
            assert_eq!(step.decided_by, Some(format!("10-a.rhai:{line}")));
        }
    }
}
