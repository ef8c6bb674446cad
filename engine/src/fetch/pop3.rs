//! A small POP3 client (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS) and the POP3 poller.
//!
//! No sound maintained crate exists (see DEPENDENCIES.md), so this is ours: every read is
//! bounded (line length, UIDL length, message size), so a hostile server gets an error, not
//! a crash or an unbounded buffer. Order per round: UIDL → RETR new → hook → actions →
//! durable state → DELE (when `delete_after_fetch` or a script's `delete()`) → QUIT commits.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use md5::{Digest, Md5};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use super::net::{ClientStream, CONNECT_TIMEOUT};
use super::retry::{excerpt, Warned};
use super::state::{self, Done, Journal};
use super::{process, FetchDeps};
use crate::config::{AccountConfig, AccountTls};
use crate::message::MessageView;
use crate::script::Action;
use crate::spool::large::{Spill, Spilled};

/// RFC 1939 allows 512 octets per response line; be generous, but bounded.
pub const MAX_LINE: usize = 8192;
/// RFC 1939 §7: a UIDL is 1 to 70 characters 0x21–0x7E.
pub const MAX_UIDL: usize = 70;
/// Largest message accepted from a server.
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Longest line of a message held while it is read (RFC 5322 allows 998 octets; a server
/// that sends more in one line is broken or hostile).
pub const MAX_MESSAGE_LINE: usize = 4 * 1024 * 1024;

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
}

impl Pop3Client {
    /// `ca`: the account's `tls_ca` (see [`ClientStream::into_tls`]).
    pub async fn connect(host: &str, port: u16, tls: AccountTls, ca: Option<&Path>) -> Result<Pop3Client, Pop3Error> {
        let mut stream = ClientStream::connect(host, port).await?;
        if tls == AccountTls::Implicit {
            stream = stream.into_tls(host, ca).await?;
        }
        let mut client = Pop3Client { stream: BufReader::new(stream), timestamp: None };
        let greeting = client.status_line().await?;
        client.timestamp = apop_timestamp(&greeting);
        if tls == AccountTls::Starttls {
            client.command("STLS").await.map_err(|e| {
                Pop3Error::Protocol(format!(
                    "the server refused STLS ({e}); tls = \"starttls\" never falls back to plain text"
                ))
            })?;
            // Anything buffered before the handshake is dropped with the reader.
            let stream = client.stream.into_inner().into_tls(host, ca).await?;
            client = Pop3Client { stream: BufReader::new(stream), timestamp: None };
        }
        Ok(client)
    }

    /// USER/PASS, or APOP when the server offered it on a connection without TLS.
    pub async fn login(&mut self, user: &str, password: &str, tls: bool) -> Result<(), Pop3Error> {
        if let (Some(timestamp), false) = (self.timestamp.clone(), tls) {
            let digest = Md5::digest(format!("{timestamp}{password}").as_bytes());
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            if self.command(&format!("APOP {user} {hex}")).await.is_ok() {
                return Ok(());
            }
        }
        self.command(&format!("USER {user}")).await?;
        self.command(&format!("PASS {password}")).await.map(|_| ()).map_err(|e| match e {
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
        self.command("LIST").await?;
        self.multiline_lines().await?.iter().map(|line| list_entry(line)).collect()
    }

    /// `UIDL`: (message number, unique id) for every message.
    pub async fn uidl(&mut self) -> Result<Vec<(u32, String)>, Pop3Error> {
        self.command("UIDL").await?;
        self.multiline_lines().await?.iter().map(|line| uidl_entry(line)).collect()
    }

    /// `RETR n`: the message, dot-unstuffed, line ends as sent.
    pub async fn retr(&mut self, n: u32) -> Result<Vec<u8>, Pop3Error> {
        self.command(&format!("RETR {n}")).await?;
        self.multiline_bytes(MAX_MESSAGE).await
    }

    /// `RETR n` into `out` as it arrives (a large message then never sits in memory whole).
    pub async fn retr_into(&mut self, n: u32, out: &mut impl std::io::Write) -> Result<(), Pop3Error> {
        self.command(&format!("RETR {n}")).await?;
        self.multiline_into(MAX_MESSAGE, out).await
    }

    /// `TOP n lines`.
    pub async fn top(&mut self, n: u32, lines: u32) -> Result<Vec<u8>, Pop3Error> {
        self.command(&format!("TOP {n} {lines}")).await?;
        self.multiline_bytes(MAX_MESSAGE).await
    }

    pub async fn stat(&mut self) -> Result<(u32, u64), Pop3Error> {
        let line = self.command("STAT").await?;
        stat_counts(&line)
    }

    pub async fn dele(&mut self, n: u32) -> Result<(), Pop3Error> {
        self.command(&format!("DELE {n}")).await.map(|_| ())
    }

    pub async fn rset(&mut self) -> Result<(), Pop3Error> {
        self.command("RSET").await.map(|_| ())
    }

    pub async fn noop(&mut self) -> Result<(), Pop3Error> {
        self.command("NOOP").await.map(|_| ())
    }

    /// `QUIT`: the server commits DELEs only now.
    pub async fn quit(mut self) -> Result<(), Pop3Error> {
        self.command("QUIT").await.map(|_| ())
    }

    async fn command(&mut self, command: &str) -> Result<String, Pop3Error> {
        let stream = self.stream.get_mut();
        stream.write_all(command.as_bytes()).await?;
        stream.write_all(b"\r\n").await?;
        stream.flush().await?;
        self.status_line().await
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
    /// and no line longer than [`MAX_MESSAGE_LINE`] is held.
    async fn multiline_into(&mut self, max: usize, out: &mut impl std::io::Write) -> Result<(), Pop3Error> {
        let mut written = 0;
        loop {
            // Message lines may be longer than a status line (mail is not always RFC 5322
            // clean); the response as a whole stays bounded by `max`.
            let line = self.line_up_to((max - written).clamp(MAX_LINE, MAX_MESSAGE_LINE) + 2).await?;
            if multiline_line(out, &mut written, &line, max)? {
                return Ok(());
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

/// One POP3 round: replay the journal of an interrupted round, fetch what is new, process it
/// (journaling each message), commit durably, DELE, QUIT. Stops early, cleanly, when asked.
/// `warned` remembers, across rounds, which messages left on the server were reported.
pub async fn round(
    deps: &FetchDeps,
    account: &AccountConfig,
    password: &str,
    shutdown: &watch::Receiver<bool>,
    warned: &mut Warned,
) -> Result<usize, Pop3Error> {
    let port = account.port.unwrap_or(if account.tls == AccountTls::Implicit { 995 } else { 110 });
    let mut client = Pop3Client::connect(&account.host, port, account.tls, account.tls_ca.as_deref()).await?;
    match account.auth_method() {
        crate::config::AuthMethod::Password => {
            client.login(&account.username, password, account.tls != AccountTls::None).await?
        }
        oauth => {
            client.auth(&mut crate::oauth2::Sasl::new(oauth, &account.username, password, &account.host, port)).await?
        }
    }
    // What the server says it holds, against what UIDL lists: a listing that misses messages
    // (a server rewriting its mailbox while another session ends) is said, not silent.
    let (count, _) = client.stat().await?;
    let listing = client.uidl().await?;
    if listing.len() != count as usize {
        tracing::warn!(stat = count, uidl = listing.len(), "STAT and UIDL disagree on the number of messages");
    }
    // Sizes first: a message over MAX_MESSAGE would fail RETR every round; say so once a day.
    let sizes: std::collections::HashMap<u32, u64> = client.list().await?.into_iter().collect();
    let key = state::pop3_key(&account.name);
    let (store, key2) = (deps.store.clone(), key.clone());
    let mut state = tokio::task::spawn_blocking(move || state::load(&store, &key2))
        .await
        .map_err(|e| Pop3Error::Protocol(e.to_string()))?
        .map_err(Pop3Error::Protocol)?;
    let mut journal = Journal::open(&deps.journal_dir, &key);
    let replay = journal.read();
    let mut message_ids = Vec::new();
    let mut dirs = BTreeSet::new();
    for record in &replay {
        dirs.extend(state::finish_copies(&record.copies)?);
        state.done_uidls.insert(record.uidl.clone());
        if record.act.delete {
            state.delete_uidls.insert(record.uidl.clone());
        }
        message_ids.push(record.mid.clone());
    }
    if !replay.is_empty() {
        tracing::info!(messages = replay.len(), "resuming an interrupted round from the journal");
    }
    let set = deps.scripts.current();
    let mut to_delete = Vec::new();
    let mut processed = 0;
    for (n, uidl) in &listing {
        if state.done_uidls.contains(uidl) {
            if state.delete_uidls.contains(uidl) {
                // Done in an earlier round whose DELE did not complete: finish it now.
                to_delete.push(*n);
            }
            continue;
        }
        if *shutdown.borrow() {
            break;
        }
        if let Some(&size) = sizes.get(n).filter(|&&size| size > MAX_MESSAGE as u64) {
            if warned.due(uidl, Instant::now()) {
                tracing::warn!(uidl = %uidl, size, "message larger than the fetch limit: left on the server (said once a day)");
            } else {
                tracing::debug!(uidl = %uidl, size, "message larger than the fetch limit: left on the server");
            }
            continue;
        }
        let mut spill = Spill::new(&deps.journal_dir);
        client.retr_into(*n, &mut spill).await?;
        // `_file` (a large message's file) lives until the message is handled.
        let (view, _file) = match spill.finish()? {
            Spilled::Memory(raw) => (MessageView::new(Arc::new(raw)), None),
            Spilled::File(file) => (MessageView::from_file(Arc::new(Vec::new()), file.tail(), Vec::new())?, Some(file)),
        };
        let span = tracing::info_span!("fetched", uidl = %uidl);
        let _enter = span.enter();
        let mut record = Done { uidl: uidl.clone(), ..Done::default() };
        let handled = match process::handle(deps, &set, account, "pop3", "INBOX", uidl, &view).await {
            Ok(handled) => handled,
            Err(error) => {
                crate::prometheus::fetched("pop3", "failed");
                if state.failed(uidl.clone(), &error) {
                    // Skipped, never deleted: it stays on the server untouched.
                    journal.append(&record)?;
                    state.done_uidls.insert(uidl.clone());
                }
                continue;
            }
        };
        let scripted_delete = !process::dropped(&handled.decision)
            && handled.decision.actions.iter().any(|a| matches!(a, Action::Delete));
        record.act.delete = account.delete_after_fetch || scripted_delete;
        record.mid = view.message_id().to_string();
        record.copies = handled.copies;
        journal.append(&record)?;
        dirs.extend(state::finish_copies(&record.copies)?);
        if record.act.delete {
            to_delete.push(*n);
            state.delete_uidls.insert(uidl.clone());
        }
        state.done_uidls.insert(uidl.clone());
        state.attempts.remove(uidl);
        message_ids.push(record.mid);
        processed += 1;
        crate::prometheus::fetched("pop3", "done");
    }
    // Forget UIDLs the server no longer has, then make the state durable before any DELE.
    let present: BTreeSet<&String> = listing.iter().map(|(_, u)| u).collect();
    state.done_uidls.retain(|u| present.contains(u));
    state.delete_uidls.retain(|u| present.contains(u));
    state.attempts.retain(|u, _| present.contains(u));
    let (store, key2, snapshot) = (deps.store.clone(), key.clone(), state.clone());
    let busy = deps.busy_guard();
    tokio::task::spawn_blocking(move || {
        let _busy = busy;
        state::sync_dirs(&dirs).map_err(|e| format!("local copies: {e}"))?;
        let ids: Vec<String> = message_ids.into_iter().filter(|m| !m.is_empty()).collect();
        state::save(&store, &key2, &snapshot, &ids)
    })
    .await
    .map_err(|e| Pop3Error::Protocol(e.to_string()))?
    .map_err(Pop3Error::Protocol)?;
    journal.clear()?;
    for n in &to_delete {
        client.dele(*n).await?;
    }
    client.quit().await?;
    if processed > 0 || !to_delete.is_empty() {
        tracing::info!(processed, deleted = to_delete.len(), "POP3 round done");
    }
    Ok(processed)
}
