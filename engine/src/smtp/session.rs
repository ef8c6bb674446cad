//! One SMTP connection: its state, its input buffer, and the command loop.
//!
//! Input: a byte stream of any kind ([`SessionStream`]: TCP, TLS over TCP, or an in-memory
//! pipe in the transcript tests). Output: replies on the same stream and, for each accepted
//! message, a spool record. [`State`] says what owns the input at any moment; STARTTLS ends
//! the plaintext session and [`Session::into_tls`] makes the TLS one, with HELO, transaction
//! and authentication forgotten (RFC 3207 §4.2).
//!
//! Replies are buffered and flushed only when the client has nothing more pipelined (or
//! before any wait for input), which is what PIPELINING (RFC 2920) asks. Every read is timed
//! (RFC 5321 §4.5.3.2) and, between commands, also watches the shutdown signal (then 421).
//!
//! Security: the input is untrusted. Lines are capped at 512 octets (the rest of a longer
//! line is dropped), every wait is timed, and parse failures are replies, never panics.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use smtp_proto::Request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::listener::Shared;
use super::reply::Reply;
use super::syntax::syntax_reply;
use super::tls::TlsInfo;
use crate::config::Config;
use crate::script::{Action, Context, Decision, ScriptCtx, ScriptSet, Stage, Verdict};

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF.
pub const MAX_LINE_LEN: usize = 512;
/// Largest growth step of `inbuf`: reads of a big message go up to this much at once.
const READ_CHUNK: usize = 64 * 1024;
/// Below this much spare room in `inbuf`, the next read first grows it: by its own size (so a
/// big message soon reads in `READ_CHUNK`s, and a small one never allocates that much).
const MIN_READ_ROOM: usize = 1024;

/// The streams a session runs on.
pub trait SessionStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> SessionStream for T {}

/// What the command loop does after a handler.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Close,
    /// `220 Ready to start TLS` went out: the plaintext session ends here, the caller turns
    /// it into a TLS one with [`Session::into_tls`].
    StartTls,
}

/// What owns the connection's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Command lines.
    Command,
    /// A line went over 512 octets: input is dropped up to its LF, then the line gets 500.
    DrainLine,
    /// After 354: the DATA reader takes the input up to `<CRLF>.<CRLF>`.
    Data,
    /// The message went over `max_message_size` (or its file could not be written): the rest
    /// is read and dropped up to `<CRLF>.<CRLF>`, then refused.
    DrainData,
    /// After a 334: the next line is a SASL response, not a command.
    Sasl,
}

/// Why reading stopped without a line.
#[derive(Debug)]
pub enum ReadError {
    Eof,
    Timeout,
    Shutdown,
    Io(std::io::Error),
}

/// The facts of an open mail transaction (after MAIL, until DATA ends or RSET).
#[derive(Debug, Default)]
pub struct Transaction {
    pub sender: String,
    /// The client declared SMTPUTF8 on MAIL.
    pub utf8: bool,
    pub recipients: Vec<String>,
    /// Actions scripts asked for at `mail_from` and `rcpt_to`, applied with `data`'s.
    pub actions: Vec<Action>,
}

/// One connection's state machine.
pub struct Session<S> {
    pub(super) stream: S,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    pub(super) state: State,
    pub(super) shared: Arc<Shared>,
    /// The config this session started with; a reload does not change it mid-session.
    pub(super) config: Arc<Config>,
    /// The script set in use: taken at connect and again at each MAIL FROM, so a transaction
    /// (mail_from through data) runs on one set while a long connection still sees reloads.
    pub(super) scripts: Arc<ScriptSet>,
    shutdown: watch::Receiver<bool>,
    pub(super) id: String,
    pub(super) remote_ip: IpAddr,
    /// `remote_ip` as text, formatted once: every stage's context, the EHLO greeting and the
    /// `Received:` header need it.
    pub(super) remote_text: String,
    pub(super) helo: Option<String>,
    pub(super) esmtp: bool,
    pub(super) tx: Option<Transaction>,
    /// The connect stage refused: only QUIT is served (RFC 5321 §3.1).
    refused: bool,
    /// Set once the session runs over TLS (STARTTLS or an implicit-TLS listener).
    pub(super) tls: Option<TlsInfo>,
    /// Set after a successful AUTH; lifts the local-domains rule.
    pub(super) auth_user: Option<String>,
    /// This session came out of STARTTLS: no second greeting.
    upgraded: bool,
    /// The listener's role and TLS mode (see `policy.rs`).
    pub(super) listener: crate::config::ListenerConfig,
    /// iprev and SPF verdicts (see [`crate::verify`]).
    pub(super) checks: crate::verify::SessionChecks,
}

impl<S: SessionStream> Session<S> {
    pub fn new(stream: S, shared: Arc<Shared>, remote_ip: IpAddr, id: String, tls: Option<TlsInfo>) -> Session<S> {
        let scripts = shared.scripts.current();
        let config = shared.config.load_full();
        let shutdown = shared.shutdown.clone();
        Session {
            stream,
            inbuf: Vec::with_capacity(4096),
            out: Vec::with_capacity(1024),
            state: State::Command,
            shared,
            config,
            scripts,
            shutdown,
            id,
            remote_ip,
            remote_text: remote_ip.to_string(),
            helo: None,
            esmtp: false,
            tx: None,
            refused: false,
            tls,
            auth_user: None,
            upgraded: false,
            listener: crate::config::ListenerConfig {
                address: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
                role: crate::config::ListenerRole::Mx,
                tls: crate::config::ListenerTls::Starttls,
            },
            checks: Default::default(),
        }
    }

    /// The session of a connection to `listener` (its role decides the policy).
    pub fn with_listener(mut self, listener: &crate::config::ListenerConfig) -> Session<S> {
        self.listener = *listener;
        self
    }

    /// Runs a plaintext session to its end, through STARTTLS if the client asks for it. I/O
    /// errors end it quietly: the client is gone.
    pub async fn run(mut self) {
        match self.serve(true).await {
            Ok(Flow::StartTls) => {
                // Boxed: the TLS session's future is several times a plaintext one's, and
                // every connection's task would otherwise be sized (and copied) for it.
                if let Some(tls) = Box::pin(self.into_tls()).await {
                    Box::pin(tls.run_tls()).await;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "session ended with I/O error"),
        }
        // A plain TCP stream's FIN goes out when it is dropped, without a `shutdown(2)` and a
        // timer per connection.
    }

    /// Runs a session that is already over TLS (implicit TLS, or after STARTTLS) to its end.
    pub async fn run_tls(mut self) {
        if let Err(e) = self.serve(!self.upgraded).await {
            tracing::debug!(error = %e, "session ended with I/O error");
        }
        // TLS has something to send at the end (close_notify), timed like every write: the
        // client may never read it.
        let _ = tokio::time::timeout(self.config.smtp.command_timeout, self.stream.shutdown()).await;
    }

    /// The greeting (after the `connect` stage), then the command loop. Returns how it ended.
    async fn serve(&mut self, greet: bool) -> std::io::Result<Flow> {
        if greet {
            let hostname = self.config.smtp.hostname.clone();
            if let Some(verifier) = self.shared.verifier.as_ref().filter(|_| self.verifies()) {
                self.checks.iprev = Box::pin(verifier.iprev(self.remote_ip)).await;
            }
            let decision = self.run_stage(Stage::Connect, self.context(""), None).await;
            match decision.verdict {
                Some(Verdict::Tempfail { .. }) => {
                    if let Some(reply) = decision.refusal_at(Stage::Connect) {
                        self.reply(reply);
                    }
                    self.flush().await?;
                    return Ok(Flow::Close);
                }
                Some(Verdict::Reject { code, status, text }) => {
                    self.refused = true;
                    self.reply(Reply::new(code, status, text));
                }
                _ => self.reply(Reply::plain(220, format!("{hostname} ESMTP mailflow"))),
            }
        }
        loop {
            let line = match self.next_line(self.config.smtp.command_timeout).await {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.reply(Reply::new(500, "5.5.2", "Line too long (max 512 octets)"));
                    continue;
                }
                Err(ReadError::Eof) => return Ok(Flow::Close),
                Err(ReadError::Io(e)) => return Err(e),
                Err(ReadError::Timeout) => {
                    tracing::info!("command timeout");
                    let hostname = &self.config.smtp.hostname;
                    self.reply(Reply::new(421, "4.4.2", format!("{hostname} Error: timeout exceeded")));
                    self.flush().await?;
                    return Ok(Flow::Close);
                }
                Err(ReadError::Shutdown) => {
                    let hostname = &self.config.smtp.hostname;
                    self.reply(Reply::new(421, "4.3.2", format!("{hostname} Service shutting down")));
                    self.flush().await?;
                    return Ok(Flow::Close);
                }
            };
            match self.handle_line(&line).await? {
                Flow::Continue => {}
                Flow::Close => {
                    self.flush().await?;
                    return Ok(Flow::Close);
                }
                // The 220 was flushed by the handler, before the handshake.
                Flow::StartTls => return Ok(Flow::StartTls),
            }
        }
    }

    /// Takes the stream out; the rest waits in [`Detached`] for the stream that replaces it.
    pub(super) fn split_stream(self) -> (S, Detached) {
        let Session {
            stream,
            inbuf,
            out,
            state: _,
            shared,
            config,
            scripts,
            shutdown,
            id,
            remote_ip,
            remote_text,
            helo: _,
            esmtp: _,
            tx: _,
            refused,
            tls: _,
            auth_user: _,
            upgraded: _,
            listener,
            checks,
        } = self;
        let detached = Detached {
            inbuf,
            out,
            shared,
            config,
            scripts,
            shutdown,
            id,
            remote_ip,
            remote_text,
            refused,
            listener,
            checks,
        };
        (stream, detached)
    }

    /// Parses and dispatches one command line (with its line end).
    async fn handle_line(&mut self, line: &[u8]) -> std::io::Result<Flow> {
        let text = String::from_utf8_lossy(line);
        let raw = text.trim_end_matches(['\r', '\n']).to_string();
        let request = Request::parse(&mut line.iter()).map(Request::into_owned);
        if self.refused {
            return Ok(match request {
                Ok(Request::Quit) => self.quit(),
                _ => {
                    self.reply(Reply::new(503, "5.5.1", "Connection refused by policy; only QUIT"));
                    Flow::Continue
                }
            });
        }
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                self.reply(syntax_reply(&e, &raw));
                return Ok(Flow::Continue);
            }
        };
        tracing::trace!(command = request.name(), "command");
        let flow = match request {
            Request::Ehlo { host } => self.handle_helo(host, true).await,
            Request::Helo { host } => self.handle_helo(host, false).await,
            Request::Mail { from } => self.handle_mail(from, &raw).await,
            Request::Rcpt { to } => self.handle_rcpt(to, &raw).await,
            Request::Data => Box::pin(self.handle_data()).await?,
            Request::StartTls => self.handle_starttls().await?,
            Request::Auth { mechanism, initial_response } => {
                Box::pin(self.handle_auth(mechanism, initial_response)).await?
            }
            Request::Rset => {
                self.tx = None;
                self.reply(Reply::new(250, "2.0.0", "Reset OK"));
                Flow::Continue
            }
            Request::Noop { .. } => {
                self.reply(Reply::new(250, "2.0.0", "OK"));
                Flow::Continue
            }
            Request::Quit => self.quit(),
            Request::Vrfy { .. } => {
                self.reply(Reply::new(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"));
                Flow::Continue
            }
            Request::Expn { .. } => {
                self.reply(Reply::new(502, "5.5.1", "EXPN not available"));
                Flow::Continue
            }
            Request::Help { .. } => {
                self.reply(Reply {
                    code: 214,
                    status: "2.0.0".into(),
                    lines: vec![
                        "mailflow: commands HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP".into(),
                        "See RFC 5321; scripts decide at every stage".into(),
                    ],
                });
                Flow::Continue
            }
            other => {
                self.reply(Reply::new(502, "5.5.1", format!("{} not implemented", other.name())));
                Flow::Continue
            }
        };
        Ok(flow)
    }

    fn quit(&mut self) -> Flow {
        let hostname = self.config.smtp.hostname.clone();
        self.reply(Reply::new(221, "2.0.0", format!("{hostname} closing connection")));
        Flow::Close
    }

    /// Queues a reply; it goes out at the next flush.
    pub(super) fn reply(&mut self, reply: Reply) {
        if reply.code >= 400 {
            tracing::info!(reply = %reply, "refused");
        } else {
            tracing::debug!(reply = %reply, "reply");
        }
        reply.write_wire(&mut self.out);
    }

    /// Writing is timed too: a client that pipelines commands but never reads the replies
    /// would otherwise block the write, and hold its connection slot, forever.
    pub(super) async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let timeout = self.config.smtp.command_timeout;
            let write = async {
                self.stream.write_all(&self.out).await?;
                self.stream.flush().await
            };
            tokio::time::timeout(timeout, write)
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client does not read its replies"))??;
            self.out.clear();
        }
        Ok(())
    }

    /// The next command (or SASL) line. `Ok(None)` for a line over [`MAX_LINE_LEN`]
    /// (consumed).
    pub(super) async fn next_line(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, ReadError> {
        let owner = self.state;
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.inbuf) {
                let line: Vec<u8> = self.inbuf.drain(..=pos).collect();
                if self.state == State::DrainLine || line.len() > MAX_LINE_LEN {
                    self.state = owner;
                    return Ok(None);
                }
                return Ok(Some(line));
            }
            if self.inbuf.len() > MAX_LINE_LEN {
                self.inbuf.clear();
                self.state = State::DrainLine;
            }
            // The client waits for our replies before sending more: flush before reading.
            self.flush().await.map_err(ReadError::Io)?;
            self.fill(timeout, true).await?;
        }
    }

    /// Reads more input into `inbuf`. With `watch_shutdown`, a shutdown interrupts the wait.
    pub(super) async fn fill(&mut self, timeout: Duration, watch_shutdown: bool) -> Result<(), ReadError> {
        // Read straight into `inbuf`'s spare room: a session waiting for input holds no
        // read buffer of its own (idle connections cost a few KB, not 64 KiB each).
        if self.inbuf.capacity() - self.inbuf.len() < MIN_READ_ROOM {
            self.inbuf.reserve(self.inbuf.capacity().clamp(MIN_READ_ROOM, READ_CHUNK));
        }
        let read = tokio::time::timeout(timeout, self.stream.read_buf(&mut self.inbuf));
        let n = if watch_shutdown {
            if *self.shutdown.borrow() {
                return Err(ReadError::Shutdown);
            }
            tokio::select! {
                r = read => r,
                _ = self.shutdown.changed() => return Err(ReadError::Shutdown),
            }
        } else {
            read.await
        };
        match n {
            Err(_) => Err(ReadError::Timeout),
            Ok(Err(e)) => Err(ReadError::Io(e)),
            Ok(Ok(0)) => Err(ReadError::Eof),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Takes up to `max` buffered input bytes for the DATA reader.
    pub(super) fn inbuf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.inbuf
    }

    /// The script context as of now; `rcpt` is the recipient being checked, if any.
    pub(super) fn context(&self, rcpt: &str) -> Context {
        let (sender, recipients) = match &self.tx {
            Some(tx) => (tx.sender.clone(), tx.recipients.clone()),
            None => (String::new(), Vec::new()),
        };
        Context {
            remote_ip: self.remote_text.clone(),
            helo: self.helo.clone().unwrap_or_default(),
            tls: self.tls.is_some(),
            auth_user: self.auth_user.clone().unwrap_or_default(),
            listener: self.listener.role.name().to_string(),
            sender,
            rcpt: rcpt.to_string(),
            recipients,
            spf: self.checks.spf.clone(),
            iprev: self.checks.iprev.clone(),
            ..Context::default()
        }
    }

    /// Runs a stage's scripts. Hooks are synchronous and may run up to `timeout_ms`; where they
    /// run (inline or on their own thread) is the script runner's choice.
    pub(super) async fn run_stage(
        &self,
        stage: Stage,
        context: Context,
        msg: Option<&crate::message::MessageView>,
    ) -> Decision {
        self.run_stage_for(stage, context, msg, &self.id).await
    }

    /// [`Self::run_stage`] with log lines tagged `id` (the message's queue id at `data`).
    pub(super) async fn run_stage_for(
        &self,
        stage: Stage,
        context: Context,
        msg: Option<&crate::message::MessageView>,
        id: &str,
    ) -> Decision {
        if !self.scripts.has_stage(stage) {
            return Decision::default();
        }
        let ctx = ScriptCtx::new(context);
        let started = std::time::Instant::now();
        let decision = self.scripts.call_awaited(stage, &ctx, msg, id).await;
        if crate::trace::installed().is_some() {
            crate::trace::stage(id, decision.trace_step(stage, started.elapsed()));
        }
        if let Some(error) = &decision.error {
            tracing::warn!(stage = %stage, error = %error, "script error");
        }
        decision
    }
}

/// A session without its stream, during the STARTTLS handshake. Only what belongs to the
/// connection is kept; what the client said before the handshake is not.
pub(super) struct Detached {
    inbuf: Vec<u8>,
    out: Vec<u8>,
    shared: Arc<Shared>,
    config: Arc<Config>,
    scripts: Arc<ScriptSet>,
    shutdown: watch::Receiver<bool>,
    id: String,
    remote_ip: IpAddr,
    remote_text: String,
    refused: bool,
    listener: crate::config::ListenerConfig,
    /// iprev belongs to the connection; SPF is taken again at the next MAIL.
    checks: crate::verify::SessionChecks,
}

impl Detached {
    /// The session over `stream`, at its start: no HELO, no transaction, not authenticated.
    pub(super) fn with_stream<T>(self, stream: T) -> Session<T> {
        let Detached {
            inbuf,
            out,
            shared,
            config,
            scripts,
            shutdown,
            id,
            remote_ip,
            remote_text,
            refused,
            listener,
            checks,
        } = self;
        Session {
            stream,
            inbuf,
            out,
            state: State::Command,
            shared,
            config,
            scripts,
            shutdown,
            id,
            remote_ip,
            remote_text,
            helo: None,
            esmtp: false,
            tx: None,
            refused,
            tls: None,
            auth_user: None,
            upgraded: true,
            listener,
            checks,
        }
    }
}
