//! The exchange over real sockets with stand-ins that misbehave as a real spamd cannot be
//! made to (silent, chatty, garbled); the real spamd is in tests/integration/test_spam.py.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

fn message() -> MessageSource {
    MessageSource::Memory(Arc::new(b"Subject: hi\r\n\r\nhello\r\n".to_vec()))
}

/// A TCP listener on loopback whose one connection is handled by `serve`.
fn stand_in(serve: impl FnOnce(TcpStream) + Send + 'static) -> Address {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = Address::Tcp(listener.local_addr().unwrap().to_string());
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            serve(stream);
        }
    });
    address
}

#[test]
fn addresses() {
    assert!(matches!(Address::parse("127.0.0.1:783"), Ok(Address::Tcp(_))));
    assert!(matches!(Address::parse("[::1]:783"), Ok(Address::Tcp(_))));
    assert!(matches!(Address::parse("/run/spamd.sock"), Ok(Address::Unix(_))));
    for bad in ["localhost", "h:x", ":783", ""] {
        assert!(Address::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_silent_scanner_is_a_timeout_within_the_budget() {
    // Holds the connection open, says nothing.
    let address = stand_in(|_stream| std::thread::sleep(Duration::from_secs(5)));
    let started = Instant::now();
    let err = symbols(&address, "", &message(), Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, SpamdError::Timeout(300)), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1000), "{:?}", started.elapsed());
}

#[test]
fn the_request_carries_the_message_and_the_answer_is_read() {
    let (tx, rx) = std::sync::mpsc::channel();
    let address = stand_in(move |mut stream| {
        let mut request = Vec::new();
        let _ = stream.read_to_end(&mut request);
        let _ = stream.write_all(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.5 / 5.0\r\n\r\nA,B\r\n");
        let _ = tx.send(request);
    });
    let v = symbols(&address, "me", &message(), Duration::from_secs(5)).unwrap();
    assert_eq!(v.symbols, ["A", "B"]);
    let request = rx.recv().unwrap();
    assert_eq!(request, b"SYMBOLS SPAMC/1.5\r\nContent-length: 22\r\nUser: me\r\n\r\nSubject: hi\r\n\r\nhello\r\n");
}

#[test]
fn a_garbled_or_endless_answer_is_an_error() {
    let address = stand_in(|mut stream| {
        let _ = stream.read_to_end(&mut Vec::new());
        let _ = stream.write_all(b"220 smtp.example ESMTP\r\n");
    });
    let err = symbols(&address, "", &message(), Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, SpamdError::Protocol(ProtocolError::BadStatusLine(_))), "{err}");
    let address = stand_in(|mut stream| {
        let junk = vec![b'x'; 1024];
        while stream.write_all(&junk).is_ok() {}
    });
    let err = symbols(&address, "", &message(), Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, SpamdError::TooLarge), "{err}");
}

#[test]
fn nobody_listening_is_an_error_at_once() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = Address::Tcp(format!("127.0.0.1:{port}"));
    let started = Instant::now();
    let err = symbols(&address, "", &message(), Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, SpamdError::Io(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(1));
    let err = symbols(&Address::Unix("/nonexistent/spamd.sock".into()), "", &message(), Duration::from_secs(5));
    assert!(matches!(err, Err(SpamdError::Io(_))));
}
