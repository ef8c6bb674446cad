//! STARTTLS and AUTH: offers, order, every refusal, and a session that really goes over TLS.

use super::{b64, plain_response, Harness, Options, PASSWORD};

fn tls_auth() -> Harness {
    Harness::new(Options { tls: true, auth: true, ..Options::default() })
}

#[tokio::test]
async fn starttls_restarts_the_session_over_tls() {
    let mut h = tls_auth();
    let mut c = h.connect();
    c.play(
        "S: 220 *
         C: EHLO client.test
         S: 250-mx.test greets 192.0.2.7
         S: 250-PIPELINING
         S: 250-SIZE *
         S: 250-8BITMIME
         S: 250-ENHANCEDSTATUSCODES
         S: 250-SMTPUTF8
         S: 250-HELP
         S: 250 STARTTLS
         C: MAIL FROM:<a@b.test>
         S: 250 2.1.0 Sender OK
         C: STARTTLS
         S: 220 2.0.0 Ready to start TLS",
    )
    .await;
    c.start_tls().await;
    // No greeting again; HELO and the open transaction are forgotten; AUTH is offered now,
    // STARTTLS no longer.
    c.play(
        "C: MAIL FROM:<a@b.test>
         S: 503 5.5.1 Send HELO/EHLO first
         C: EHLO client.test
         S: 250-mx.test greets 192.0.2.7
         S: 250-PIPELINING
         S: 250-SIZE *
         S: 250-8BITMIME
         S: 250-ENHANCEDSTATUSCODES
         S: 250-SMTPUTF8
         S: 250-HELP
         S: 250 AUTH PLAIN LOGIN
         C: STARTTLS
         S: 503 5.5.1 Already in TLS
         C: MAIL FROM:<a@b.test>
         S: 250 *
         C: RCPT TO:<me@example.test>
         S: 250 *
         C: DATA
         S: 354 *
         C: Subject: over TLS
         C:
         C: .
         S: 250 2.0.0 Ok: queued as *
         C: QUIT
         S: 221 *",
    )
    .await;
    let accepted = h.accepted().await;
    assert!(accepted[0].record.envelope.tls);
    let body = String::from_utf8_lossy(&accepted[0].body);
    assert!(body.contains("with ESMTPS"), "{body}");
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let h = tls_auth();
    let mut c = h.connect();
    c.play("S: 220 *\nC: HELO client.test\nS: 250 *").await;
    // CVE-2011-0411: a command injected behind STARTTLS must not run inside TLS.
    c.send(b"STARTTLS\r\nRSET\r\n").await;
    c.play("S: 220 2.0.0 Ready to start TLS").await;
    c.start_tls().await;
    c.play("C: NOOP\nS: 250 2.0.0 OK").await;
}

#[tokio::test]
async fn starttls_without_a_certificate() {
    let h = Harness::plain();
    let mut c = h.connect();
    c.play("S: 220 *\nC: STARTTLS\nS: 502 5.5.1 STARTTLS not available").await;
}

#[tokio::test]
async fn a_failed_handshake_closes_the_connection() {
    let h = tls_auth();
    let mut c = h.connect();
    c.play("S: 220 *\nC: STARTTLS\nS: 220 *").await;
    c.send(b"this is not a TLS client hello\r\n").await;
    let alert = c.line().await;
    assert!(alert.starts_with('\u{15}'), "expected a TLS alert record, got {alert:?}");
    c.closed().await;
    c.session_ended().await;
}

#[tokio::test]
async fn auth_needs_tls_ehlo_and_an_account() {
    let h = Harness::plain();
    let mut c = h.connect();
    c.play("S: 220 *\nC: EHLO a.test\nS: 250-*\nS: 250-*\nS: 250-*\nS: 250-*\nS: 250-*\nS: 250-*\nS: 250 HELP").await;
    c.play("C: AUTH PLAIN\nS: 502 5.5.1 AUTH not available").await;

    let h = Harness::new(Options { auth: true, ..Options::default() });
    let mut c = h.connect();
    c.play("S: 220 *\nC: AUTH PLAIN\nS: 538 5.7.11 Encryption required for requested authentication mechanism").await;

    let h = Harness::new(Options { auth: true, smtp: "allow_plain_auth = true", ..Options::default() });
    let mut c = h.connect();
    c.play("S: 220 *\nC: AUTH PLAIN\nS: 503 5.5.1 Send EHLO first\nC: HELO a.test\nS: 250 *").await;
    c.play("C: AUTH PLAIN\nS: 503 5.5.1 Send EHLO first").await;
}

/// A plaintext session with AUTH allowed, after EHLO.
async fn authable(h: &Harness) -> super::Client {
    let mut c = h.connect();
    c.play(
        "S: 220 *
         C: EHLO a.test
         S: 250-*
         S: 250-*
         S: 250-*
         S: 250-*
         S: 250-*
         S: 250-*
         S: 250-HELP
         S: 250 AUTH PLAIN LOGIN",
    )
    .await;
    c
}

fn plain_auth() -> Harness {
    Harness::new(Options { auth: true, smtp: "allow_plain_auth = true", ..Options::default() })
}

#[tokio::test]
async fn auth_plain_with_and_without_initial_response() {
    let h = plain_auth();
    let mut c = authable(&h).await;
    c.play(&format!("C: AUTH PLAIN {}\nS: 235 2.7.0 Authentication successful", plain_response("", "me", PASSWORD)))
        .await;
    c.play("C: AUTH PLAIN\nS: 503 5.5.1 Already authenticated").await;
    // Authenticated: any recipient.
    c.play("C: MAIL FROM:<me@example.test>\nS: 250 *\nC: RCPT TO:<you@elsewhere.test>\nS: 250 2.1.5 Recipient OK")
        .await;

    let mut c = authable(&h).await;
    c.play(&format!("C: AUTH PLAIN\nS: 334 \nC: {}\nS: 235 *", plain_response("me", "me", PASSWORD))).await;
}

#[tokio::test]
async fn auth_login_exchange_and_cancel() {
    let h = plain_auth();
    let mut c = authable(&h).await;
    c.play(&format!(
        "C: AUTH LOGIN\nS: 334 VXNlcm5hbWU6\nC: {}\nS: 334 UGFzc3dvcmQ6\nC: {}\nS: 235 *",
        b64("me"),
        b64(PASSWORD)
    ))
    .await;
    let mut c = authable(&h).await;
    c.play("C: AUTH LOGIN\nS: 334 VXNlcm5hbWU6\nC: *\nS: 501 5.0.0 Authentication cancelled").await;
    c.play("C: AUTH LOGIN !!notbase64\nS: 501 5.5.2 Cannot decode the response").await;
}

#[tokio::test]
async fn auth_refusals() {
    let h = plain_auth();
    let mut c = authable(&h).await;
    c.play("C: AUTH CRAM-MD5\nS: 504 5.5.4 Mechanism not supported; use PLAIN or LOGIN").await;
    c.play(&format!(
        "C: AUTH PLAIN {}\nS: 535 5.7.8 Authorization identity must match the authentication identity",
        plain_response("admin", "me", PASSWORD)
    ))
    .await;
    c.play(&format!(
        "C: AUTH PLAIN {}\nS: 535 5.7.8 Authentication credentials invalid",
        plain_response("", "me", "wrong")
    ))
    .await;
    c.play("C: MAIL FROM:<a@b.test>\nS: 250 *\nC: AUTH PLAIN\nS: 503 5.5.1 AUTH not allowed during a mail transaction")
        .await;
    // Not authenticated: still no relaying.
    c.play("C: RCPT TO:<you@elsewhere.test>\nS: 550 5.7.1 Relaying denied").await;
}
