//! A fixed amount of script work for an instruction counter: `N` messages (first argument,
//! default 1000) through the benchmark suite's rule set (`bench/scripts/rules`, 20 rules on the
//! five SMTP stages), as the daemon runs them. Timings on this machine swing by ±20 % from run
//! to run; callgrind's instruction counts do not. `bench/script-instructions` runs it under
//! callgrind at two sizes and prints the instructions per message (the difference, so start-up
//! cost drops out). `MF_RULES=FILE` runs another rule file instead (it must file every message):
//! how the price of one rule shape was measured (bench/results/findings.md, sixth pass).
//! `MF_NATIVE=0` leaves every stage function to rhai (no native tier), for comparison.

use std::sync::Arc;

use mailflow::config::ScriptsConfig;
use mailflow::message::MessageView;
use mailflow::script::{Context, ScriptCtx, ScriptSet, Stage};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let rules = std::env::var("MF_RULES")
        .unwrap_or(concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/scripts/rules/10-rules.rhai").to_string());
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(&rules, dir.path().join("10-rules.rhai")).unwrap_or_else(|e| panic!("{rules}: {e}"));
    let config = ScriptsConfig { dir: dir.path().to_path_buf(), ..ScriptsConfig::default() };
    let set = ScriptSet::compile(&config, None).expect("scripts compile");
    // `MF_NATIVE=0`: every stage function in rhai, as before the native tier.
    let set = if std::env::var("MF_NATIVE").is_ok_and(|v| v == "0") { set.rhai_only() } else { set };
    let ctx = ScriptCtx::new(Context {
        remote_ip: "127.0.0.1".into(),
        helo: "client.bench.test".into(),
        sender: "sender@bench.test".into(),
        rcpt: "rcpt@bench.test".into(),
        recipients: vec!["rcpt@bench.test".into()],
        ..Context::default()
    });
    let raw = Arc::new(message());
    let mut filed = 0;
    for _ in 0..n {
        for stage in [Stage::Connect, Stage::Helo, Stage::MailFrom, Stage::RcptTo] {
            set.call(stage, &ctx, None, "bench");
        }
        let view = MessageView::new(raw.clone());
        let decision = set.call(Stage::Data, &ctx, Some(&view), "bench");
        filed += decision.actions.len();
    }
    // The last data rule files every message: a set that stopped working would show here.
    assert_eq!(filed, n, "every message filed by the rules");
}

/// What smtp-source sends (a 4 KB message), with the Received line mailflow adds.
fn message() -> Vec<u8> {
    let mut raw = b"Received: from client.bench.test ([127.0.0.1]) by bench.test with ESMTP id A; Fri, 27 Nov 2026 10:00:00 +0000\r\n\
From: <sender@bench.test>\r\nTo: <rcpt@bench.test>\r\nDate: Fri, 27 Nov 2026 10:00:00 +0000\r\n\
Message-Id: <20261127100000.A@client.bench.test>\r\nSubject: test\r\n\r\n"
        .to_vec();
    while raw.len() < 4096 {
        raw.extend_from_slice(b"La de da de da 1.\r\n");
    }
    raw
}
