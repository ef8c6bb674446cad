//! Scripts refusing at each stage, and the session's timeouts and shutdown (paused time).

use std::time::Duration;

use super::{Harness, Options};

fn with_script(source: &'static str) -> Harness {
    Harness::new(Options { scripts: vec![("policy.rhai", source)], ..Options::default() })
}

#[tokio::test]
async fn a_connect_reject_allows_only_quit() {
    let h = with_script(r#"fn connect(ctx) { return reject("5.7.1 go away"); }"#);
    let mut c = h.connect();
    c.play(
        "S: 554 5.7.1 go away
         C: EHLO a.test
         S: 503 5.5.1 Connection refused by policy; only QUIT
         C: QUIT
         S: 221 *",
    )
    .await;
    c.closed().await;
}

#[tokio::test]
async fn a_connect_tempfail_closes_with_421() {
    let h = with_script("fn connect(ctx) { return tempfail(); }");
    let mut c = h.connect();
    c.play("S: 421 *").await;
    c.closed().await;
}

#[tokio::test]
async fn scripts_refuse_at_helo_mail_rcpt_and_data() {
    let mut h = with_script(
        r#"
        fn helo(ctx) { if ctx.helo == "bad.test" { return reject("5.7.1 bad greeting"); } }
        fn mail_from(ctx) { if ctx.sender == "spam@b.test" { return reject(553, "5.7.1 no spam"); } }
        fn rcpt_to(ctx) { if ctx.rcpt == "gone@example.test" { return reject("5.1.1 no such user"); } }
        fn data(ctx, msg) { if msg.subject == "later" { return tempfail("4.3.0 busy"); } }
        "#,
    );
    let mut c = h.connect();
    c.play(
        "S: 220 *
         C: HELO bad.test
         S: 550 5.7.1 bad greeting
         C: HELO good.test
         S: 250 *
         C: MAIL FROM:<spam@b.test>
         S: 553 5.7.1 no spam
         C: MAIL FROM:<ok@b.test>
         S: 250 *
         C: RCPT TO:<gone@example.test>
         S: 550 5.1.1 no such user
         C: RCPT TO:<me@example.test>
         S: 250 *
         C: DATA
         S: 354 *
         C: Subject: later
         C:
         C: .
         S: 451 4.3.0 busy",
    )
    .await;
    assert!(h.nothing_accepted());
}

#[tokio::test]
async fn a_script_error_is_a_temporary_failure() {
    let h = with_script("fn mail_from(ctx) { throw \"boom\"; }");
    let mut c = h.connect();
    c.play("S: 220 *\nC: HELO a.test\nS: 250 *\nC: MAIL FROM:<a@b.test>\nS: 451 *").await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_client_gets_421_after_the_command_timeout() {
    let h = Harness::new(Options { smtp: "command_timeout = \"5m\"", ..Options::default() });
    let mut c = h.connect();
    c.wait = Duration::from_secs(3600);
    c.play("S: 220 *").await;
    let before = tokio::time::Instant::now();
    c.play("S: 421 4.4.2 mx.test Error: timeout exceeded").await;
    assert!(before.elapsed() >= Duration::from_secs(300), "{:?}", before.elapsed());
    c.closed().await;
}

#[tokio::test(start_paused = true)]
async fn a_stalled_message_gets_421_after_the_data_timeout() {
    let h = Harness::new(Options { smtp: "data_timeout = \"10m\"", ..Options::default() });
    let mut c = h.connect();
    c.wait = Duration::from_secs(3600);
    c.play(
        "S: 220 *
         C: HELO a.test
         S: 250 *
         C: MAIL FROM:<a@b.test>
         S: 250 *
         C: RCPT TO:<me@example.test>
         S: 250 *
         C: DATA
         S: 354 *
         C: Subject: half a message",
    )
    .await;
    let before = tokio::time::Instant::now();
    c.play("S: 421 4.4.2 mx.test Error: timeout exceeded").await;
    assert!(before.elapsed() >= Duration::from_secs(600), "{:?}", before.elapsed());
    c.closed().await;
}

#[tokio::test]
async fn shutdown_answers_421_between_commands() {
    let h = Harness::plain();
    let mut c = h.connect();
    c.play("S: 220 *\nC: NOOP\nS: 250 *").await;
    h.shut_down();
    c.play("S: 421 4.3.2 mx.test Service shutting down").await;
    c.closed().await;
}
