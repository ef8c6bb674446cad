//! The native tier against rhai: the same rules, contexts and messages through a set with
//! translations and through the same set left to rhai must decide the same. The bulk of the
//! rules is generated (`generate.rs`); the ones here each document an edge case.

use std::sync::Arc;

use crate::config::ScriptsConfig;
use crate::message::MessageView;
use crate::script::context::{Context, ScriptCtx};
use crate::script::decision::Stage;
use crate::script::set::ScriptSet;

pub(super) fn set_of(source: &str, max_operations: u64) -> (tempfile::TempDir, ScriptSet) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("10-rules.rhai"), source).expect("write");
    let config = ScriptsConfig { dir: dir.path().to_path_buf(), max_operations, ..ScriptsConfig::default() };
    let set = ScriptSet::compile(&config, None).unwrap_or_else(|e| panic!("{source}: {e:?}"));
    (dir, set)
}

pub(super) fn contexts() -> Vec<ScriptCtx> {
    let plain = Context {
        remote_ip: "192.0.2.7".into(),
        helo: "mx.example.net".into(),
        sender: "Alice@Example.NET".into(),
        rcpt: "bob@example.org".into(),
        recipients: vec!["bob@example.org".into(), "carol@example.org".into()],
        ..Context::default()
    };
    let local = Context {
        remote_ip: "127.0.0.1".into(),
        helo: "localhost".into(),
        tls: true,
        auth_user: "bob".into(),
        listener: "mx".into(),
        sender: String::new(),
        rcpt: "postmaster@example.org".into(),
        recipients: vec!["postmaster@example.org".into()],
        account: "work".into(),
        protocol: "imap".into(),
        mailbox: "INBOX".into(),
        uid: "42".into(),
        ..Context::default()
    };
    let unicode =
        Context { helo: "ǅ ß İ ΐ ΟΔΟΣ".into(), sender: "ΐ@ΟΔΟΣ.example".into(), ..Context::default() };
    vec![ScriptCtx::new(plain), ScriptCtx::new(local), ScriptCtx::new(Context::default()), ScriptCtx::new(unicode)]
}

pub(super) fn messages() -> Vec<MessageView> {
    let list = "Received: from a by b; Fri, 27 Nov 2026 10:00:00 +0000\r\n\
        Received: from c by d; Fri, 27 Nov 2026 10:00:01 +0000\r\n\
        From: \"Boss\" <boss@example.org>\r\nTo: bob@example.org, Carol <carol@example.org>\r\n\
        Cc: dave@example.org\r\nSubject: =?UTF-8?Q?Your_INVOICE_=C3=A9t=C3=A9?=\r\n\
        List-Id: <rust.lists.example.org>\r\nX-Spam-Flag: YES\r\nMessage-ID: <a1@example.org>\r\n\
        Date: Fri, 27 Nov 2026 10:00:00 +0000\r\n\r\nHello\r\n";
    let bare = "Subject: hello\r\n\r\nbody\r\n";
    let unicode =
        "Subject: =?UTF-8?B?x4Ugw58gxLAgzpAgzp/OlM6fzqM=?=\r\nFrom: =?UTF-8?Q?=C3=9F?= <x@example.org>\r\n\r\n.\r\n";
    vec![
        MessageView::with_flags(Arc::new(list.as_bytes().to_vec()), vec!["\\Seen".into()]),
        MessageView::new(Arc::new(bare.as_bytes().to_vec())),
        MessageView::new(Arc::new(unicode.as_bytes().to_vec())),
    ]
}

/// Stage functions of the subset, each with the stage it is written for and an edge case.
const TRANSLATED: &[(Stage, &str)] = &[
    // Upper- and lower-casing of characters whose case maps change length, counted in chars.
    (
        Stage::Helo,
        r#"log(ctx.helo.to_upper() + "|" + ctx.helo.to_lower()); log("n" + ctx.sender.to_lower()); if ctx.helo.len() == 12 { accept() }"#,
    ),
    // `x !in list` and `x !in string` are a negated `contains` call.
    (Stage::RcptTo, r#"if ctx.rcpt !in ["bob@example.org"] { return reject(); } if "x" !in ctx.rcpt { log("no x"); }"#),
    // A block's value is its last statement's, returned or not.
    (Stage::Connect, r#"if ctx.tls { accept() } else if ctx.remote_ip == "" { reject() }"#),
    (Stage::Connect, r#"accept(); log("after")"#),
    (Stage::Connect, r#"{ tempfail() }"#),
    (Stage::Connect, r#"reject(); let x = 1;"#),
    (Stage::Data, r#"const limit = 1000; if msg.size < limit { return discard(); } true"#),
    // Arguments bind by position; names shadow.
    (
        Stage::RcptTo,
        r#"let ctx_ = ctx.rcpt; { let ctx_ = "inner"; log(ctx_); } log(ctx_); const L = ["a@example.org"]; if ctx.rcpt in L { accept() }"#,
    ),
    // Errors at run time: rhai runs the function again and reports them.
    (Stage::Data, r#"log("before"); msg.add_header("X-A", "1"); msg.file_into("../escape");"#),
    (Stage::Data, r#"msg.add_header("X-A", "1"); if msg.size > 1 { return reject(250, "not a refusal"); }"#),
    (Stage::RcptTo, r#"log("x"); return discard();"#),
    (Stage::Helo, r#"ctx.add_rcpt("a@example.org")"#),
    // Values over the size limits (see `values_over_the_size_limits_fall_back_to_rhai`).
    (Stage::Data, r#"log("x"); let big = msg.header("X-Big"); if big.to_upper().len() > 0 { accept() }"#),
    (Stage::Data, r#"let big = msg.header("X-Big"); let twice = big + big; reject()"#),
    (Stage::Data, r#"if msg.headers("X-Big").len() > 0 || msg.headers("X-Big").is_empty() { accept() }"#),
];

/// Functions rhai keeps: outside the subset, or its result would differ.
const LEFT_TO_RHAI: &[&str] = &[
    r#"fn connect(ctx) { log("plain"); } fn Ctx.connect(ctx) { log("typed"); }"#,
    r#"fn connect(ctx) { for x in [1, 2] { log(x); } }"#,
    r#"fn connect(ctx) { check(ctx) } fn check(c) { c.remote_ip == "1" }"#,
    r#"fn connect(ctx) { return reject(); } fn reject() { 1 }"#,
    r#"fn connect(ctx) { if ctx.remote_ip == 1 { return reject(); } }"#,
    r#"fn connect(ctx) { let x = #{a: 1}; }"#,
    r#"fn connect(ctx) { let x = ctx.recipients; }"#,
    r#"fn connect(ctx) { let x = 1; x = 2; }"#,
    r#"fn connect(ctx) { throw "no"; }"#,
    r#"fn connect(ctx) { log(1 + 2); }"#,
    r#"fn connect(ctx) { log("n " + ctx.helo.len()); }"#,
    r#"let top = 1; fn connect(ctx) { return reject(); }"#,
    r#"fn connect(ctx) { ctx.remote_ip?.len() }"#,
];

fn run_all(set: &ScriptSet, stage: Stage) -> Vec<String> {
    let mut out = Vec::new();
    for ctx in contexts() {
        for msg in messages() {
            let d = set.call(stage, &ctx, (stage.arity() == 2).then_some(&msg), "test");
            out.push(format!("{:?} {:?} {:?} {:?} {:?}", d.verdict, d.decided_by, d.actions, d.logs, d.error));
        }
    }
    out
}

#[test]
fn translated_functions_decide_as_rhai_does() {
    for (stage, body) in TRANSLATED {
        let params = if stage.arity() == 2 { "ctx, msg" } else { "ctx" };
        let source = format!("fn {}({params}) {{\n{body}\n}}\n", stage.name());
        let (_dir, set) = set_of(&source, 1_000_000);
        assert_eq!(set.native_count(), 1, "not translated: {source}");
        let native = run_all(&set, *stage);
        let rhai = run_all(&set.rhai_only(), *stage);
        assert_eq!(native, rhai, "{source}");
    }
}

#[test]
fn arguments_bind_by_position_and_names_shadow() {
    let source = r#"fn data(msg, ctx) {
        if msg.remote_ip == "127.0.0.1" { ctx.file_into("Local"); }
        let msg = "x"; if msg == "x" { log(msg); }
    }"#;
    let (_dir, set) = set_of(source, 1_000_000);
    assert_eq!(set.native_count(), 1);
    assert_eq!(run_all(&set, Stage::Data), run_all(&set.rhai_only(), Stage::Data));
}

#[test]
fn values_over_the_size_limits_fall_back_to_rhai() {
    // 3 MB of "ΐ", twice: upper-cased one is over the 4 MiB string limit, and so are both
    // together (`big + big`, `msg.headers("X-Big")`).
    let value = "ΐ".repeat(1_500_000);
    let big = format!("X-Big: {value}\r\nX-Big: {value}\r\n\r\nbody\r\n");
    let msg = MessageView::new(Arc::new(big.into_bytes()));
    let bodies: Vec<_> = TRANSLATED
        .iter()
        .filter(|(_, b)| b.contains(r#"msg.header("X-Big")"#) || b.contains(r#"msg.headers("X-Big")"#))
        .collect();
    assert_eq!(bodies.len(), 3);
    for (_, body) in bodies {
        let (_dir, set) = set_of(&format!("fn data(ctx, msg) {{ {body} }}"), 1_000_000);
        assert_eq!(set.native_count(), 1);
        let native = set.call(Stage::Data, &contexts()[0], Some(&msg), "test");
        let error = native.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
        assert!(error.contains("too large") || error.contains("size"), "{body}: {error:?}");
        let rhai = set.rhai_only().call(Stage::Data, &contexts()[0], Some(&msg), "test");
        assert_eq!(format!("{:?} {:?}", native.error, native.logs), format!("{:?} {:?}", rhai.error, rhai.logs));
    }
}

#[test]
fn tight_operation_limits_decide_as_rhai_does() {
    for (stage, body) in TRANSLATED {
        let params = if stage.arity() == 2 { "ctx, msg" } else { "ctx" };
        let source = format!("fn {}({params}) {{\n{body}\n}}\n", stage.name());
        for limit in [1, 2, 3, 5, 8, 13, 21, 34, 55, 89] {
            let (_dir, set) = set_of(&source, limit);
            let native = run_all(&set, *stage);
            assert_eq!(native, run_all(&set.rhai_only(), *stage), "max_operations {limit}: {source}");
        }
    }
}

#[test]
fn the_rest_is_left_to_rhai() {
    for source in LEFT_TO_RHAI {
        let (_dir, set) = set_of(source, 1_000_000);
        assert_eq!(set.native_count(), 0, "translated: {source}");
    }
}

#[test]
fn a_function_that_could_reach_max_operations_is_left_to_rhai() {
    let source = r#"fn connect(ctx) { if ctx.remote_ip == "1" || ctx.helo == "2" { return reject(); } }"#;
    assert_eq!(set_of(source, 1_000).1.native_count(), 1);
    let (_dir, tight) = set_of(source, 5);
    assert_eq!(tight.native_count(), 0);
    let decision = tight.call(Stage::Connect, &contexts()[0], None, "test");
    assert!(decision.error.is_some_and(|e| e.message.contains("max_operations")));
}

#[test]
fn the_benchmark_rules_are_translated() {
    let source = include_str!("../../../../bench/scripts/rules/10-rules.rhai");
    let (_dir, set) = set_of(source, 1_000_000);
    assert_eq!(set.native_count(), 5);
    for stage in [Stage::Connect, Stage::Helo, Stage::MailFrom, Stage::RcptTo, Stage::Data] {
        assert_eq!(run_all(&set, stage), run_all(&set_of(source, 1_000_000).1.rhai_only(), stage), "{stage}");
    }
}
