//! A small POP3 client (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH).
//!
//! No sound maintained crate exists (see DEPENDENCIES.md), so this is ours. Input: the
//! server's lines; output: parsed listings and message bytes. Every read is bounded (line
//! length, UIDL length, message size, header block size), so a hostile server gets an error,
//! not a crash or an unbounded buffer. The client knows whether a response is still being
//! read ([`Pop3Client::usable`]): only between two responses may RSET and QUIT be sent.
//!
//! Security: every byte from the server is untrusted.

use std::path::Path;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::config::AccountTls;
use crate::fetch::net::{ClientStream, CONNECT_TIMEOUT};
use crate::fetch::retry::excerpt;

/// RFC 1939 allows 512 octets per response line; be generous, but bounded.
pub const MAX_LINE: usize = 8192;
/// RFC 1939 §7: a UIDL is 1 to 70 characters 0x21–0x7E.
pub const MAX_UIDL: usize = 70;
/// Largest message accepted from a server.
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Longest line of a message held while it is read (RFC 5322 allows 998 octets; a server
/// that sends more in one line is broken or hostile).
pub const MAX_MESSAGE_LINE: usize = 4 * 1024 * 1024;
/// Largest header block accepted from `TOP n 0` (held in memory; real ones are a few KiB).
pub const MAX_HEADER: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Pop3Error {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("server said: {0}")]
    Negative(String),
    #[error("protocol: {0}")]
    Protocol(String),
    /// `AUTH` was refused (an OAuth2 token is then refreshed and tried once more).
    #[error("login refused: {0}")]
    LoginRefused(String),
}

/// One POP3 connection.
pub struct Pop3Client {
    stream: BufReader<ClientStream>,
    /// The APOP timestamp from the greeting, when the server offers APOP.
    timestamp: Option<String>,
    /// A command was sent and its response not read to the end (or the connection failed
    /// meanwhile): nothing more may be sent.
    in_response: bool,
    /// When the server last finished a response: how long the session has been silent.
    last_response: Instant,
    /// `DELE`s sent since the session began or the last `RSET`.
    marked: usize,
}

impl Pop3Client {
    /// `ca`: the account's `tls_ca` (see [`ClientStream::into_tls`]).
    pub async fn connect(host: &str, port: u16, tls: AccountTls, ca: Option<&Path>) -> Result<Pop3Client, Pop3Error> {
        let mut stream = ClientStream::connect(host, port).await?;
        if tls == AccountTls::Implicit {
            stream = stream.into_tls(host, ca).await?;
        }
        let mut client = Pop3Client::new(stream);
        let greeting = client.status_line().await?;
        client.timestamp = apop_timestamp(&greeting);
        if tls == AccountTls::Starttls {
            client.command("STLS", false).await.map_err(|e| {
                Pop3Error::Protocol(format!(
                    "the server refused STLS ({e}); tls = \"starttls\" never falls back to plain text"
                ))
            })?;
            // Anything buffered before the handshake is dropped with the reader.
            let stream = client.stream.into_inner().into_tls(host, ca).await?;
            client = Pop3Client::new(stream);
        }
        Ok(client)
    }

    fn new(stream: ClientStream) -> Pop3Client {
        Pop3Client {
            stream: BufReader::new(stream),
            timestamp: None,
            in_response: false,
            last_response: Instant::now(),
            marked: 0,
        }
    }

    /// USER/PASS, or APOP when the server offered it on a connection without TLS.
    pub async fn login(&mut self, user: &str, password: &str, tls: bool) -> Result<(), Pop3Error> {
        if let (Some(timestamp), false) = (self.timestamp.clone(), tls) {
            let digest = Md5::digest(format!("{timestamp}{password}").as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            if self.command(&format!("APOP {user} {hex}"), false).await.is_ok() {
                return Ok(());
            }
        }
        self.command(&format!("USER {user}"), false).await?;
        self.command(&format!("PASS {password}"), false).await.map(|_| ()).map_err(|e| match e {
            Pop3Error::Negative(_) => Pop3Error::Negative("authentication failed".into()),
            other => other,
        })
    }

    /// `AUTH` with an OAuth2 mechanism (RFC 5034): the initial response on the command line
    /// when that stays within 255 octets, else after the server's `+`.
    pub async fn auth(&mut self, sasl: &mut crate::oauth2::Sasl) -> Result<(), Pop3Error> {
        use base64::Engine as _;
        let inline = format!("AUTH {} {}", sasl.mechanism(), sasl.initial_base64());
        let mut next = if inline.len() <= 255 {
            sasl.sent_inline();
            inline
        } else {
            format!("AUTH {}", sasl.mechanism())
        };
        // Initial response, then at most an error challenge and its acknowledgement.
        for _ in 0..3 {
            let stream = self.stream.get_mut();
            stream.write_all(next.as_bytes()).await?;
            stream.write_all(b"\r\n").await?;
            stream.flush().await?;
            let line = self.line().await?;
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            let Some(challenge) = text.strip_prefix('+').filter(|_| !text.starts_with("+OK")) else {
                return status(&line).map(|_| ()).map_err(|e| match e {
                    Pop3Error::Negative(reason) => {
                        let detail = sasl.error.take().map(|e| format!(" ({e})")).unwrap_or_default();
                        Pop3Error::LoginRefused(format!("AUTH {}: {reason}{detail}", sasl.mechanism()))
                    }
                    other => other,
                });
            };
            let challenge = base64::engine::general_purpose::STANDARD.decode(challenge.trim()).unwrap_or_default();
            next = base64::engine::general_purpose::STANDARD.encode(sasl.respond(&challenge));
        }
        Err(Pop3Error::Protocol("AUTH: too many challenges".into()))
    }

    /// `LIST`: (message number, size in octets) for every message.
    pub async fn list(&mut self) -> Result<Vec<(u32, u64)>, Pop3Error> {
        self.command("LIST", true).await?;
        self.multiline_lines().await?.iter().map(|line| list_entry(line)).collect()
    }

    /// `UIDL`: (message number, unique id) for every message.
    pub async fn uidl(&mut self) -> Result<Vec<(u32, String)>, Pop3Error> {
        self.command("UIDL", true).await?;
        self.multiline_lines().await?.iter().map(|line| uidl_entry(line)).collect()
    }

    /// `RETR n` into `out` as it arrives (a large message then never sits in memory whole).
    /// When writing to `out` fails (a full disk), the rest of the message is read and thrown
    /// away, so the session stays usable, and the write error is returned.
    pub async fn retr_into(&mut self, n: u32, out: &mut impl std::io::Write) -> Result<(), Pop3Error> {
        self.command(&format!("RETR {n}"), true).await?;
        self.multiline_into(MAX_MESSAGE, out).await
    }

    /// `TOP n lines`: the header block of message `n`, the empty line after it and the first
    /// `lines` lines of the body; at most [`MAX_HEADER`] bytes.
    pub async fn top(&mut self, n: u32, lines: u32) -> Result<Vec<u8>, Pop3Error> {
        self.command(&format!("TOP {n} {lines}"), true).await?;
        self.multiline_bytes(MAX_HEADER).await
    }

    pub async fn stat(&mut self) -> Result<(u32, u64), Pop3Error> {
        let line = self.command("STAT", false).await?;
        stat_counts(&line)
    }

    /// `DELE n`: marks the message; the server deletes it at `QUIT`, not if `RSET` comes first.
    pub async fn dele(&mut self, n: u32) -> Result<(), Pop3Error> {
        self.command(&format!("DELE {n}"), false).await?;
        self.marked += 1;
        Ok(())
    }

    /// `RSET`: takes back every `DELE` of the session.
    pub async fn rset(&mut self) -> Result<(), Pop3Error> {
        self.command("RSET", false).await?;
        self.marked = 0;
        Ok(())
    }

    pub async fn noop(&mut self) -> Result<(), Pop3Error> {
        self.command("NOOP", false).await.map(|_| ())
    }

    /// `QUIT`: the server commits DELEs only now.
    pub async fn quit(mut self) -> Result<(), Pop3Error> {
        self.command("QUIT", false).await.map(|_| ())
    }

    /// Whether the connection is between two responses, so a command may be sent.
    pub fn usable(&self) -> bool {
        !self.in_response
    }

    /// `DELE`s that `QUIT` would commit.
    pub fn marked(&self) -> usize {
        self.marked
    }

    /// How long since the server last finished a response.
    pub fn silent_for(&self) -> Duration {
        self.last_response.elapsed()
    }

    /// Ends a session whose round failed: `RSET` when messages were marked for deletion (so
    /// the server deletes nothing this round), then `QUIT`, so the server ends the session
    /// and releases the mailbox at once. Nothing is sent on a connection mid-response or
    /// broken; errors are only logged: the round's own error is what counts.
    pub async fn abandon(mut self) {
        if !self.usable() {
            return;
        }
        if self.marked > 0 {
            let marked = self.marked;
            match self.rset().await {
                Ok(()) => tracing::info!(marked, "round failed: RSET, the server keeps every message"),
                Err(e) => {
                    tracing::warn!(error = %e, "round failed and RSET failed: ending without QUIT, so nothing is deleted");
                    return;
                }
            }
        }
        if let Err(e) = self.quit().await {
            tracing::debug!(error = %e, "QUIT after a failed round");
        }
    }

    /// Sends `command`; returns its status line. For a multi-line response (`multiline`), the
    /// response stays open until its body has been read.
    async fn command(&mut self, command: &str, multiline: bool) -> Result<String, Pop3Error> {
        self.in_response = true;
        let stream = self.stream.get_mut();
        stream.write_all(command.as_bytes()).await?;
        stream.write_all(b"\r\n").await?;
        stream.flush().await?;
        let status = self.status_line().await;
        // An unexpected line (neither +OK nor -ERR) leaves the session in an unknown state.
        if matches!(status, Err(Pop3Error::Negative(_))) || (status.is_ok() && !multiline) {
            self.response_done();
        }
        status
    }

    fn response_done(&mut self) {
        self.in_response = false;
        self.last_response = Instant::now();
    }

    async fn status_line(&mut self) -> Result<String, Pop3Error> {
        let line = self.line().await?;
        status(&line)
    }

    /// One status line with its line end, at most [`MAX_LINE`] bytes.
    async fn line(&mut self) -> Result<Vec<u8>, Pop3Error> {
        self.line_up_to(MAX_LINE).await
    }

    /// One line with its line end, at most `max` bytes.
    async fn line_up_to(&mut self, max: usize) -> Result<Vec<u8>, Pop3Error> {
        let mut line = Vec::new();
        let read = tokio::time::timeout(
            CONNECT_TIMEOUT * 4,
            (&mut self.stream).take(max as u64 + 1).read_until(b'\n', &mut line),
        )
        .await
        .map_err(|_| Pop3Error::Protocol("server timed out".into()))??;
        if read == 0 {
            return Err(Pop3Error::Protocol("connection closed".into()));
        }
        if line.len() > max {
            return Err(Pop3Error::Protocol(format!("line longer than {max} bytes")));
        }
        Ok(line)
    }

    async fn multiline_lines(&mut self) -> Result<Vec<String>, Pop3Error> {
        let bytes = self.multiline_bytes(16 * 1024 * 1024).await?;
        Ok(multiline_text(&bytes))
    }

    /// The body of a multi-line response, dot-unstuffed, up to the lone `.` line.
    async fn multiline_bytes(&mut self, max: usize) -> Result<Vec<u8>, Pop3Error> {
        let mut out = Vec::new();
        self.multiline_into(max, &mut out).await?;
        Ok(out)
    }

    /// [`Self::multiline_bytes`] written to `out` line by line; at most `max` bytes in all,
    /// and no line longer than [`MAX_MESSAGE_LINE`] is held. A failed write to `out` does not
    /// stop the reading: the rest goes nowhere, and the write error comes at the end.
    async fn multiline_into(&mut self, max: usize, out: &mut impl std::io::Write) -> Result<(), Pop3Error> {
        let mut written = 0;
        let mut local: Option<std::io::Error> = None;
        loop {
            // Message lines may be longer than a status line (mail is not always RFC 5322
            // clean); the response as a whole stays bounded by `max`.
            let line = self.line_up_to((max - written).clamp(MAX_LINE, MAX_MESSAGE_LINE) + 2).await?;
            let end = match local {
                None => match multiline_line(out, &mut written, &line, max) {
                    Err(Pop3Error::Io(e)) => {
                        local = Some(e);
                        false
                    }
                    other => other?,
                },
                Some(_) => multiline_line(&mut std::io::sink(), &mut written, &line, max)?,
            };
            if end {
                self.response_done();
                return local.map_or(Ok(()), |e| Err(Pop3Error::Io(e)));
            }
        }
    }
}

// What the client makes of the server's lines, apart from the I/O: each function takes what
// one read returned (a line with its line end, as the server sent it).

/// A status line: its text (trimmed) for `+OK`, an error for `-ERR` or anything else.
pub fn status(line: &[u8]) -> Result<String, Pop3Error> {
    let text = String::from_utf8_lossy(line).trim_end().to_string();
    if text.starts_with("+OK") {
        Ok(text)
    } else if let Some(rest) = text.strip_prefix("-ERR") {
        Err(Pop3Error::Negative(excerpt(rest.trim().as_bytes())))
    } else {
        Err(Pop3Error::Protocol(format!("unexpected response \"{}\"", excerpt(text.as_bytes()))))
    }
}

/// The APOP timestamp (`<...>`, brackets included) of a greeting, when it offers one.
pub fn apop_timestamp(greeting: &str) -> Option<String> {
    greeting.find('<').and_then(|s| greeting[s..].find('>').map(|e| greeting[s..s + e + 1].to_string()))
}

/// One line of a multi-line response written to `out`, dot-unstuffed; `Ok(true)` at the lone
/// `.` that ends the response. `written` counts what the response wrote so far: all of it may
/// not exceed `max` bytes.
pub fn multiline_line(
    out: &mut impl std::io::Write,
    written: &mut usize,
    line: &[u8],
    max: usize,
) -> Result<bool, Pop3Error> {
    let content = line.strip_suffix(b"\r\n").or_else(|| line.strip_suffix(b"\n")).unwrap_or(line);
    if content == b"." {
        return Ok(true);
    }
    let unstuffed = if line.starts_with(b"..") { &line[1..] } else { line };
    if *written + unstuffed.len() > max {
        return Err(Pop3Error::Protocol(format!("response larger than {max} bytes")));
    }
    out.write_all(unstuffed)?;
    *written += unstuffed.len();
    Ok(false)
}

/// The lines of a multi-line listing (LIST, UIDL), as text.
pub fn multiline_text(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes).lines().map(str::to_string).collect()
}

/// A `LIST` line: (message number, size in octets).
pub fn list_entry(line: &str) -> Result<(u32, u64), Pop3Error> {
    let mut parts = line.split_whitespace();
    let parsed = (parts.next().and_then(|n| n.parse().ok()), parts.next().and_then(|s| s.parse().ok()));
    let (Some(n), Some(size)) = parsed else {
        return Err(Pop3Error::Protocol(format!("bad LIST line \"{}\"", excerpt(line.as_bytes()))));
    };
    Ok((n, size))
}

/// A `UIDL` line: (message number, unique id).
pub fn uidl_entry(line: &str) -> Result<(u32, String), Pop3Error> {
    let mut parts = line.split_whitespace();
    let (Some(n), Some(uid)) = (parts.next(), parts.next()) else {
        return Err(Pop3Error::Protocol(format!("bad UIDL line \"{}\"", excerpt(line.as_bytes()))));
    };
    if uid.len() > MAX_UIDL || !uid.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(Pop3Error::Protocol("UIDL longer than 70 characters or not printable".into()));
    }
    let n = n.parse().map_err(|_| Pop3Error::Protocol(format!("bad message number \"{}\"", excerpt(n.as_bytes()))))?;
    Ok((n, uid.to_string()))
}

/// The `+OK` line of `STAT`: (message count, size in octets).
pub fn stat_counts(line: &str) -> Result<(u32, u64), Pop3Error> {
    let mut parts = line.split_whitespace().skip(1);
    let bad = || Pop3Error::Protocol(format!("bad STAT answer \"{}\"", excerpt(line.as_bytes())));
    let count = parts.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    let size = parts.next().and_then(|c| c.parse().ok()).ok_or_else(bad)?;
    Ok((count, size))
}
