//! SMTP load client for the latency benchmark (bench/extra.py, section `latency`).
//!
//! `mailflow-loadclient PORT SESSIONS COUNT [SIZE] [TIMEOUT_S]`: SESSIONS threads, each on
//! one connection (TCP_NODELAY), send MAIL/RCPT/DATA with a SIZE-byte message (default 4096)
//! until COUNT messages are done in all. For every message it takes the time from writing the
//! final `.` to reading the whole `250` reply — what smtp-source cannot measure. Prints one
//! JSON object: `{"latencies_us": [...], "errors": [...], "wall_s": S}`.
//! With `LOADCLIENT_MESSAGE=FILE` the message is that file, sent as it is (CRLF line ends, no
//! line starting with a dot), instead of a generated one (the authentication benchmark sends
//! a DKIM-signed message this way).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Results {
    latencies_us: Vec<u64>,
    errors: Vec<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    if args.len() < 4 {
        eprintln!("usage: mailflow-loadclient PORT SESSIONS COUNT [SIZE] [TIMEOUT_S]");
        std::process::exit(2);
    }
    let (port, sessions, count) = (arg(1, 25) as u16, arg(2, 1).max(1) as usize, arg(3, 1000) as usize);
    let (size, timeout) = (arg(4, 4096) as usize, Duration::from_secs(arg(5, 120)));
    let body = match std::env::var_os("LOADCLIENT_MESSAGE") {
        Some(path) => match std::fs::read(&path) {
            Ok(bytes) => Arc::new(bytes),
            Err(e) => {
                eprintln!("LOADCLIENT_MESSAGE: {e}");
                std::process::exit(2);
            }
        },
        None => Arc::new(message(size)),
    };
    let left = Arc::new(AtomicUsize::new(count));
    let results = Arc::new(Mutex::new(Results { latencies_us: Vec::with_capacity(count), errors: Vec::new() }));
    let started = Instant::now();
    let deadline = started + timeout;
    let threads: Vec<_> = (0..sessions)
        .map(|_| {
            let (body, left, results) = (body.clone(), left.clone(), results.clone());
            std::thread::spawn(move || {
                if let Err(e) = session(port, &body, &left, &results, deadline) {
                    results.lock().unwrap_or_else(|p| p.into_inner()).errors.push(e.to_string());
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let wall = started.elapsed().as_secs_f64();
    let results = results.lock().unwrap_or_else(|p| p.into_inner());
    let lat: Vec<String> = results.latencies_us.iter().map(u64::to_string).collect();
    let errors: Vec<String> = results.errors.iter().take(20).map(|e| format!("{e:?}")).collect();
    println!(
        "{{\"latencies_us\": [{}], \"errors\": [{}], \"n_errors\": {}, \"wall_s\": {wall}}}",
        lat.join(","),
        errors.join(","),
        results.errors.len()
    );
}

/// A message of `size` bytes: headers, then 76-character lines (no line starts with a dot).
fn message(size: usize) -> Vec<u8> {
    let mut m = b"From: <sender@bench.test>\r\nTo: <rcpt@bench.test>\r\nSubject: latency\r\n\r\n".to_vec();
    while m.len() + 78 <= size {
        m.extend_from_slice(&[b'x'; 76]);
        m.extend_from_slice(b"\r\n");
    }
    m
}

fn session(
    port: u16,
    body: &[u8],
    left: &AtomicUsize,
    results: &Mutex<Results>,
    deadline: Instant,
) -> std::io::Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    expect(&mut reader, "220")?;
    command(&mut writer, &mut reader, "EHLO client.bench.test", "250")?;
    while Instant::now() < deadline && take_one(left) {
        command(&mut writer, &mut reader, "MAIL FROM:<sender@bench.test>", "250")?;
        command(&mut writer, &mut reader, "RCPT TO:<rcpt@bench.test>", "250")?;
        command(&mut writer, &mut reader, "DATA", "354")?;
        writer.write_all(body)?;
        let t0 = Instant::now();
        writer.write_all(b".\r\n")?;
        let reply = read_reply(&mut reader)?;
        let us = t0.elapsed().as_micros() as u64;
        let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
        if reply.starts_with("250") {
            r.latencies_us.push(us);
        } else {
            r.errors.push(reply);
        }
    }
    let _ = writer.write_all(b"QUIT\r\n");
    Ok(())
}

fn take_one(left: &AtomicUsize) -> bool {
    left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
}

fn command(writer: &mut TcpStream, reader: &mut BufReader<TcpStream>, line: &str, code: &str) -> std::io::Result<()> {
    writer.write_all(format!("{line}\r\n").as_bytes())?;
    expect(reader, code)
}

fn expect(reader: &mut BufReader<TcpStream>, code: &str) -> std::io::Result<()> {
    let reply = read_reply(reader)?;
    if reply.starts_with(code) {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("expected {code}, got {}", reply.trim_end())))
    }
}

/// One whole reply (every `NNN-` line up to the `NNN ` one), as text.
fn read_reply(reader: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return Ok(all);
        }
    }
}
