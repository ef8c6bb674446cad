//! MAIL, RCPT and DATA: the transaction, each of their refusals, and what reaches the spool.

use super::{Harness, Options};

/// Client lines up to a transaction with one recipient.
const OPEN: &str = "S: 220 *
    C: EHLO client.test
    S: 250-*
    S: 250-*
    S: 250-*
    S: 250-*
    S: 250-*
    S: 250-*
    S: 250 HELP";

#[tokio::test]
async fn a_message_is_spooled_before_the_250() {
    let mut h = Harness::plain();
    let mut c = h.connect();
    c.play(OPEN).await;
    c.play(
        "C: MAIL FROM:<alice@sender.test>
         S: 250 2.1.0 Sender OK
         C: RCPT TO:<me@example.test>
         S: 250 2.1.5 Recipient OK
         C: RCPT TO:<Me@Example.test>
         S: 250 2.1.5 Recipient OK
         C: DATA
         S: 354 End data with <CR><LF>.<CR><LF>
         C: Subject: hi
         C:
         C: ..dot-stuffed line
         C: .
         S: 250 2.0.0 Ok: queued as *",
    )
    .await;
    let accepted = h.accepted().await;
    assert_eq!(accepted.len(), 1);
    let record = &accepted[0].record;
    assert_eq!(record.envelope.sender, "alice@sender.test");
    // The same recipient twice (in another case) is one recipient.
    assert_eq!(record.envelope.recipients, vec!["me@example.test".to_string()]);
    let body = String::from_utf8_lossy(&accepted[0].body);
    assert!(body.starts_with("Received: from client.test"), "{body}");
    assert!(body.ends_with("Subject: hi\r\n\r\n.dot-stuffed line\r\n"), "{body}");
}

#[tokio::test]
async fn order_of_commands_is_enforced() {
    let mut h = Harness::plain();
    let mut c = h.connect();
    c.play(
        "S: 220 *
         C: MAIL FROM:<a@b.test>
         S: 503 5.5.1 Send HELO/EHLO first
         C: HELO client.test
         S: 250 *
         C: RCPT TO:<me@example.test>
         S: 503 5.5.1 Need MAIL before RCPT
         C: DATA
         S: 503 5.5.1 Need MAIL command
         C: MAIL FROM:<a@b.test>
         S: 250 2.1.0 Sender OK
         C: MAIL FROM:<a@b.test>
         S: 503 5.5.1 Nested MAIL command
         C: DATA
         S: 503 5.5.1 Need RCPT command
         C: RSET
         S: 250 2.0.0 Reset OK
         C: RCPT TO:<me@example.test>
         S: 503 5.5.1 Need MAIL before RCPT",
    )
    .await;
    assert!(h.nothing_accepted());
}

#[tokio::test]
async fn bad_addresses_and_parameters() {
    let h = Harness::plain();
    let mut c = h.connect();
    c.play(OPEN).await;
    c.play(
        "C: MAIL FROM:a@b.test
         S: 501 *
         C: MAIL FROM:<a@b.test> FROB=1
         S: 555 5.5.4 Unsupported parameter FROB*
         C: MAIL FROM:<@relay.test:a@b.test>
         S: 550 5.7.1 Relaying denied*
         C: MAIL FROM:<j\u{f6}@b.test>
         S: 553 5.6.7 Non-ASCII sender address needs SMTPUTF8
         C: MAIL FROM:<a@b.test> SIZE=99999999999999999999999
         S: 552 5.3.4 Message size exceeds fixed limit of * bytes
         C: MAIL FROM:<>
         S: 250 2.1.0 Sender OK
         C: RCPT TO:<someone@elsewhere.test>
         S: 550 5.7.1 Relaying denied
         C: RCPT TO:<me%elsewhere.test@example.test>
         S: 550 5.7.1 Relaying denied*
         C: RCPT TO:<not an address>
         S: 501 *
         C: RCPT TO:<Postmaster>
         S: 250 2.1.5 Recipient OK",
    )
    .await;
}

#[tokio::test]
async fn mail_parameters_need_ehlo() {
    let h = Harness::plain();
    let mut c = h.connect();
    c.play(
        "S: 220 *
         C: HELO client.test
         S: 250 *
         C: MAIL FROM:<a@b.test> SIZE=10
         S: 555 5.5.4 MAIL parameters need EHLO",
    )
    .await;
}

#[tokio::test]
async fn too_many_recipients_is_a_temporary_refusal() {
    let h = Harness::new(Options { smtp: "max_recipients = 2", ..Options::default() });
    let mut c = h.connect();
    c.play(OPEN).await;
    c.play(
        "C: MAIL FROM:<a@b.test>
         S: 250 *
         C: RCPT TO:<one@example.test>
         S: 250 *
         C: RCPT TO:<two@example.test>
         S: 250 *
         C: RCPT TO:<three@example.test>
         S: 452 4.5.3 Too many recipients",
    )
    .await;
}

#[tokio::test]
async fn oversize_bare_lf_and_loops_are_refused_after_the_dot() {
    let mut h =
        Harness::new(Options { smtp: "max_message_size = 2000\nmax_received_headers = 3", ..Options::default() });
    let mut c = h.connect();
    c.play(OPEN).await;
    let tx = "C: MAIL FROM:<a@b.test>\nS: 250 *\nC: RCPT TO:<me@example.test>\nS: 250 *\nC: DATA\nS: 354 *";
    c.play(tx).await;
    c.send(format!("Subject: big\r\n\r\n{}\r\n.\r\n", "y".repeat(5000)).as_bytes()).await;
    c.play("S: 552 5.3.4 Message size exceeds fixed limit of 2000 bytes").await;
    c.play(tx).await;
    c.send(b"Subject: bare\r\n\r\nline\nother\r\n.\r\n").await;
    c.play("S: 554 5.6.0 Message contains bare CR or LF line endings*").await;
    c.play(tx).await;
    c.send("Received: from a\r\n".repeat(4).as_bytes()).await;
    c.send(b"Subject: loop\r\n\r\nbody\r\n.\r\n").await;
    c.play("S: 554 5.4.6 Too many hops (4 Received headers): mail loop?").await;
    // The session goes on after each refusal, and nothing was stored.
    c.play("C: NOOP\nS: 250 2.0.0 OK").await;
    assert!(h.nothing_accepted());
}

#[tokio::test]
async fn an_empty_message_and_pipelined_data() {
    let mut h = Harness::plain();
    let mut c = h.connect();
    c.play(OPEN).await;
    c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<me@example.test>\r\nDATA\r\n").await;
    c.play("S: 250 2.1.0 Sender OK\nS: 250 2.1.5 Recipient OK\nS: 354 *").await;
    // The end of DATA and the next command in one write.
    c.send(b".\r\nNOOP\r\n").await;
    c.play("S: 250 2.0.0 Ok: queued as *\nS: 250 2.0.0 OK").await;
    assert_eq!(h.accepted().await.len(), 1);
}
