//! The verbs outside a mail transaction: greeting, EHLO/HELO, NOOP, RSET, VRFY, EXPN, HELP,
//! QUIT, unknown verbs, overlong lines, pipelining.

use super::Harness;

#[tokio::test]
async fn greeting_ehlo_and_quit() {
    let h = Harness::plain();
    let mut c = h.connect();
    c.play(
        "S: 220 mx.test ESMTP mailflow
         C: EHLO client.test
         S: 250-mx.test greets 192.0.2.7
         S: 250-PIPELINING
         S: 250-SIZE *
         S: 250-8BITMIME
         S: 250-ENHANCEDSTATUSCODES
         S: 250-SMTPUTF8
         S: 250 HELP
         C: QUIT
         S: 221 2.0.0 mx.test closing connection",
    )
    .await;
    c.closed().await;
    c.session_ended().await;
}

#[tokio::test]
async fn helo_advertises_nothing() {
    let h = Harness::plain();
    let mut c = h.connect();
    c.play(
        "S: 220 *
         C: HELO client.test
         S: 250 mx.test greets 192.0.2.7
         C: HELO again.test
         S: 250 mx.test greets 192.0.2.7",
    )
    .await;
}

#[tokio::test]
async fn noop_rset_vrfy_expn_help() {
    let h = Harness::plain();
    let mut c = h.connect();
    c.play(
        "S: 220 *
         C: NOOP
         S: 250 2.0.0 OK
         C: RSET
         S: 250 2.0.0 Reset OK
         C: VRFY someone
         S: 252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery
         C: EXPN list
         S: 502 5.5.1 EXPN not available
         C: HELP
         S: 214-2.0.0 mailflow: commands *
         S: 214 2.0.0 See RFC 5321; scripts decide at every stage
         C: quit
         S: 221 *",
    )
    .await;
}

#[tokio::test]
async fn unknown_and_unimplemented_verbs() {
    let h = Harness::plain();
    let mut c = h.connect();
    c.play(
        "S: 220 *
         C: FROB x
         S: 500 5.5.2 Syntax error, command unrecognized: FROB
         C: bWU6czNjcmV0
         S: 500 5.5.2 Syntax error, command unrecognized
         C:
         S: 500 5.5.2 Syntax error, command unrecognized
         C: ETRN example.test
         S: 502 5.5.1 ETRN not implemented",
    )
    .await;
}

#[tokio::test]
async fn an_overlong_line_is_refused_and_the_session_goes_on() {
    let h = Harness::plain();
    let mut c = h.connect();
    c.play("S: 220 *").await;
    // Longer than the 512 octets of RFC 5321 §4.5.3.1.4, and longer than one read.
    let long = format!("NOOP {}\r\n", "x".repeat(3000));
    c.send(long.as_bytes()).await;
    c.play(
        "S: 500 5.5.2 Line too long (max 512 octets)
         C: NOOP
         S: 250 2.0.0 OK",
    )
    .await;
}

#[tokio::test]
async fn pipelined_commands_get_their_replies_in_order() {
    let h = Harness::plain();
    let mut c = h.connect();
    c.play("S: 220 *").await;
    c.send(b"EHLO a.test\r\nNOOP\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<me@example.test>\r\nRSET\r\nQUIT\r\n").await;
    c.play(
        "S: 250-mx.test greets 192.0.2.7
         S: 250-PIPELINING
         S: 250-SIZE *
         S: 250-8BITMIME
         S: 250-ENHANCEDSTATUSCODES
         S: 250-SMTPUTF8
         S: 250 HELP
         S: 250 2.0.0 OK
         S: 250 2.1.0 Sender OK
         S: 250 2.1.5 Recipient OK
         S: 250 2.0.0 Reset OK
         S: 221 *",
    )
    .await;
    c.closed().await;
}

#[tokio::test]
async fn the_client_closing_ends_the_session() {
    let h = Harness::plain();
    let mut c = h.connect();
    c.play("S: 220 *\nC: EHLO a.test").await;
    c.session_ended().await;
}

/// Every connection's task holds this future and is copied with it when spawned: the TLS
/// continuation and the DATA and AUTH handlers are boxed so that it stays small. (Measured in
/// the debug build the tests run in: 4.5 KB; 8.6 KB with the TLS session inline.)
#[tokio::test]
async fn a_plaintext_session_future_stays_small() {
    let h = Harness::plain();
    let (_client, server) = tokio::io::duplex(1024);
    let session = crate::smtp::session::Session::new(server, h.shared.clone(), super::CLIENT_IP, "X".into(), None);
    let run = session.run();
    assert!(std::mem::size_of_val(&run) < 6 * 1024, "{} bytes", std::mem::size_of_val(&run));
}
