//! `spamd`: score a message with SpamAssassin's spamd, over TCP or a Unix socket.
//!
//! ```toml
//! [plugins.spamd]
//! address = "127.0.0.1:783"     # host:port, or the path of spamd's Unix socket
//! timeout_ms = 5000
//! user = ""                     # spamd's per-user preferences (its User header), if wanted
//! ```
//! ```rhai
//! fn data(ctx, msg) {
//!     let r = spamd::check(msg);   // #{score, required_score, is_spam, symbols}
//!     if r.is_spam { msg.file_into("Junk"); }
//! }
//! ```
//! One `SYMBOLS` request per call: the message is streamed with its `Content-length`, a
//! message the daemon keeps in a file read from it as it is sent. The whole exchange (connect,
//! send, answer) ends by a deadline of `timeout_ms`, capped by what is left of the hook's time;
//! a refused connection, the deadline, or an answer that is not spamd's is a script error.
//! Answers are read up to 64 KiB.
//!
//! Security: the address comes from the config only. The message (untrusted) is sent as it
//! is; of spamd's answer only the status line, the `Spam` header and the rule names are read.
#![forbid(unsafe_code)]

mod protocol;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mailflow_plugin::{error, parse_config, MessageSource, Plugin, PluginContext, PluginError};
use rhai::{Array, Dynamic, EvalAltResult, Map, Module};
use serde::Deserialize;

pub use protocol::{parse_reply, ProtocolError, Verdict};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpamdConfig {
    #[serde(default = "default_address")]
    address: String,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    user: String,
}

fn default_address() -> String {
    "127.0.0.1:783".into()
}

fn default_timeout() -> u64 {
    5000
}

/// Where spamd listens.
#[derive(Debug, Clone)]
pub enum Address {
    Tcp(String),
    Unix(PathBuf),
}

impl Address {
    /// A value with a `/` is a socket path; anything else is `host:port`.
    fn parse(value: &str) -> Result<Address, String> {
        if value.contains('/') {
            return Ok(Address::Unix(PathBuf::from(value)));
        }
        match value.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(Address::Tcp(value.into())),
            _ => Err(format!("address: want host:port or a socket path, not {value:?}")),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum SpamdError {
    #[error("timed out after {0} ms")]
    Timeout(u128),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("answer larger than {} bytes", protocol::MAX_REPLY)]
    TooLarge,
}

/// The `spamd` plugin.
pub struct Spamd {
    inner: Arc<Inner>,
}

struct Inner {
    address: Address,
    user: String,
    timeout: Duration,
    ctx: PluginContext,
}

/// Builds the plugin from `[plugins.spamd]`.
pub fn build(table: &toml::Table, ctx: &PluginContext) -> Result<Box<dyn Plugin>, PluginError> {
    let config: SpamdConfig = parse_config("spamd", table)?;
    let address = Address::parse(&config.address).map_err(|e| PluginError::config("spamd", e))?;
    if config.timeout_ms == 0 {
        return Err(PluginError::config("spamd", "timeout_ms must be above 0"));
    }
    if config.user.bytes().any(|b| b < 0x21 || b == 0x7f) {
        return Err(PluginError::config("spamd", "user: no spaces or control characters"));
    }
    Ok(Box::new(Spamd {
        inner: Arc::new(Inner {
            address,
            user: config.user,
            timeout: Duration::from_millis(config.timeout_ms),
            ctx: ctx.clone(),
        }),
    }))
}

/// A connected socket whose every operation is bounded by one deadline.
trait Conn: Read + Write {
    fn set_timeouts(&self, left: Duration) -> std::io::Result<()>;
    fn close_write(&self) -> std::io::Result<()>;
}

impl Conn for TcpStream {
    fn set_timeouts(&self, left: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(left))?;
        self.set_write_timeout(Some(left))
    }
    fn close_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

impl Conn for UnixStream {
    fn set_timeouts(&self, left: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(left))?;
        self.set_write_timeout(Some(left))
    }
    fn close_write(&self) -> std::io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Time left before `deadline`, or the timeout error once it has passed.
fn left(deadline: Instant, budget: Duration) -> Result<Duration, SpamdError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(SpamdError::Timeout(budget.as_millis()));
    }
    Ok(left)
}

/// Maps a socket timeout to [`SpamdError::Timeout`].
fn io(budget: Duration) -> impl Fn(std::io::Error) -> SpamdError {
    move |e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => SpamdError::Timeout(budget.as_millis()),
        _ => SpamdError::Io(e),
    }
}

/// One `SYMBOLS` exchange with spamd at `address`, all of it within `budget`.
pub fn symbols(address: &Address, user: &str, source: &MessageSource, budget: Duration) -> Result<Verdict, SpamdError> {
    let deadline = Instant::now() + budget;
    match address {
        Address::Tcp(hostport) => {
            let mut last = None;
            for addr in hostport.to_socket_addrs().map_err(SpamdError::Io)? {
                match TcpStream::connect_timeout(&addr, left(deadline, budget)?) {
                    Ok(stream) => return exchange(stream, user, source, deadline, budget),
                    Err(e) => last = Some(io(budget)(e)),
                }
            }
            Err(last.unwrap_or_else(|| SpamdError::Io(std::io::Error::other(format!("{hostport}: no address")))))
        }
        Address::Unix(path) => {
            let stream = UnixStream::connect(path).map_err(io(budget))?;
            exchange(stream, user, source, deadline, budget)
        }
    }
}

fn exchange(
    mut conn: impl Conn,
    user: &str,
    source: &MessageSource,
    deadline: Instant,
    budget: Duration,
) -> Result<Verdict, SpamdError> {
    let sent = send(&mut conn, user, source, deadline, budget);
    // spamd may answer before reading everything (a refusal): read its answer either way,
    // and report the send error only when there is none.
    let answer = read_answer(&mut conn, deadline, budget);
    match (sent, answer) {
        (_, Ok(answer)) if !answer.is_empty() => Ok(parse_reply(&answer)?),
        (Err(e), _) | (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(answer)) => Ok(parse_reply(&answer)?),
    }
}

fn send(
    conn: &mut impl Conn,
    user: &str,
    source: &MessageSource,
    deadline: Instant,
    budget: Duration,
) -> Result<(), SpamdError> {
    let mut reader = source.reader()?;
    conn.set_timeouts(left(deadline, budget)?)?;
    conn.write_all(&protocol::request_head("SYMBOLS", source.len(), user)).map_err(io(budget))?;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        // The deadline bounds the whole send, not each write.
        conn.set_timeouts(left(deadline, budget)?)?;
        conn.write_all(&chunk[..n]).map_err(io(budget))?;
    }
    conn.flush().map_err(io(budget))?;
    // The end of the request, for spamds that read to EOF.
    let _ = conn.close_write();
    Ok(())
}

/// Reads until spamd closes the connection, at most [`protocol::MAX_REPLY`] bytes.
fn read_answer(conn: &mut impl Conn, deadline: Instant, budget: Duration) -> Result<Vec<u8>, SpamdError> {
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        conn.set_timeouts(left(deadline, budget)?)?;
        let n = match conn.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(budget)(e)),
        };
        if n == 0 {
            return Ok(answer);
        }
        if answer.len() + n > protocol::MAX_REPLY {
            return Err(SpamdError::TooLarge);
        }
        answer.extend_from_slice(&chunk[..n]);
    }
}

impl Inner {
    fn check(&self, msg: &Dynamic) -> Result<Dynamic, Box<EvalAltResult>> {
        let source = self.ctx.host.message_source(msg).ok_or_else(|| error("spamd: the argument must be msg"))?;
        let budget = self.ctx.call_budget(self.timeout);
        if budget.is_zero() {
            return Err(error("spamd: no time left in the hook"));
        }
        let verdict = symbols(&self.address, &self.user, &source, budget).map_err(|e| error(format!("spamd: {e}")))?;
        let mut map = Map::new();
        map.insert("score".into(), Dynamic::from_float(verdict.score));
        map.insert("required_score".into(), Dynamic::from_float(verdict.required_score));
        map.insert("is_spam".into(), verdict.is_spam.into());
        let symbols: Array = verdict.symbols.into_iter().map(Dynamic::from).collect();
        map.insert("symbols".into(), symbols.into());
        Ok(map.into())
    }
}

impl Plugin for Spamd {
    fn name(&self) -> &'static str {
        "spamd"
    }

    fn module(&self) -> Module {
        let mut module = Module::new();
        let inner = self.inner.clone();
        module.set_native_fn("check", move |msg: Dynamic| inner.check(&msg));
        module
    }
}

#[cfg(test)]
mod tests;
