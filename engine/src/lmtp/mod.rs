//! An LMTP client (RFC 2033) for delivery into a mail store (Dovecot, Cyrus).
//!
//! Input: an endpoint (`unix:/path` or `host:port`), then per message a sender, the recipient
//! addresses and the message bytes (for a large message, its spool file, streamed through
//! [`dot::DotWriter`] in bounded chunks). Output: one [`Outcome`] per recipient, in order: the
//! RCPT reply for a refused recipient, else the reply the server gave for it after the final
//! dot. Blocking, with timeouts on every read and write: it runs on the delivery threads.
//!
//! Limits: no PIPELINING (one command, one reply), no TLS or AUTH (LMTP is for a local or
//! trusted network), 8-bit bodies sent as they are (the stores accept them).
//!
//! Security: the bytes sent are the spooled message, dot-stuffed; addresses come from the
//! envelope the receiver checked, folder names from scripts are quoted into the recipient.

pub mod dot;
pub mod reply;

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::config::LmtpEndpoint;
use crate::message::stored::Tail;
pub use reply::{read_reply, Class, Reply, ReplyError};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one command's reply (or one write) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the server may take per recipient after the final dot (it stores the message
/// then: Postfix's `lmtp_data_done_timeout` is 600 s for the whole).
const DATA_DONE_TIMEOUT: Duration = Duration::from_secs(600);
/// Chunk in which a large message's file is streamed.
const CHUNK: usize = 64 * 1024;

/// Errors that end a connection.
#[derive(Debug, thiserror::Error)]
pub enum LmtpError {
    #[error("cannot connect to {endpoint}: {source}")]
    Connect { endpoint: String, source: std::io::Error },
    #[error("{0}")]
    Reply(#[from] ReplyError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("server said {0} to {1}")]
    Refused(Reply, &'static str),
}

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx after the final dot: stored.
    Delivered(Reply),
    /// 4xx, or no answer (connection lost): try again later.
    Deferred(String),
    /// 5xx: bounce.
    Failed(Reply),
}

impl Outcome {
    fn from_reply(reply: Reply) -> Outcome {
        match reply.class() {
            Class::Positive => Outcome::Delivered(reply),
            Class::Transient => Outcome::Deferred(reply.to_string()),
            Class::Permanent => Outcome::Failed(reply),
        }
    }
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.flush(),
            Conn::Tcp(s) => s.flush(),
        }
    }
}

impl Conn {
    fn set_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.set_read_timeout(Some(timeout)).and_then(|()| s.set_write_timeout(Some(timeout))),
            Conn::Tcp(s) => s.set_read_timeout(Some(timeout)).and_then(|()| s.set_write_timeout(Some(timeout))),
        }
    }
}

/// One LMTP connection, past LHLO.
pub struct Client {
    conn: BufReader<Conn>,
}

impl Client {
    /// Connects, reads the greeting and says LHLO `hostname`.
    pub fn connect(endpoint: &LmtpEndpoint, hostname: &str) -> Result<Client, LmtpError> {
        let failed = |source| LmtpError::Connect { endpoint: endpoint.to_string(), source };
        let conn = match endpoint {
            LmtpEndpoint::Unix(path) => Conn::Unix(UnixStream::connect(path).map_err(failed)?),
            LmtpEndpoint::Tcp(addr) => Conn::Tcp(connect_tcp(addr).map_err(failed)?),
        };
        conn.set_timeout(COMMAND_TIMEOUT)?;
        let mut client = Client { conn: BufReader::new(conn) };
        client.expect("greeting", Class::Positive)?;
        client.command(&format!("LHLO {hostname}"), "LHLO")?;
        Ok(client)
    }

    /// Reads a reply and requires `class` of it.
    fn expect(&mut self, what: &'static str, class: Class) -> Result<Reply, LmtpError> {
        let reply = read_reply(&mut self.conn)?;
        if reply.class() == class {
            Ok(reply)
        } else {
            Err(LmtpError::Refused(reply, what))
        }
    }

    /// Sends one command line and reads its reply (any class).
    fn send(&mut self, line: &str) -> Result<Reply, LmtpError> {
        let conn = self.conn.get_mut();
        conn.write_all(line.as_bytes())?;
        conn.write_all(b"\r\n")?;
        conn.flush()?;
        Ok(read_reply(&mut self.conn)?)
    }

    /// Sends a command that must succeed.
    fn command(&mut self, line: &str, what: &'static str) -> Result<Reply, LmtpError> {
        let reply = self.send(line)?;
        if reply.class() == Class::Positive {
            Ok(reply)
        } else {
            Err(LmtpError::Refused(reply, what))
        }
    }

    /// One transaction: MAIL FROM `sender`, RCPT TO each of `rcpts`, DATA of `parts` then
    /// `tail`. Returns an outcome per recipient, in order. `Err` only when the connection can
    /// no longer be used (the outcomes then say what was settled before: a recipient whose
    /// reply after the dot was read keeps it; the others are deferred).
    pub fn deliver(
        &mut self,
        sender: &str,
        rcpts: &[String],
        parts: &[&[u8]],
        tail: Option<&Tail>,
    ) -> (Vec<Outcome>, Result<(), LmtpError>) {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; rcpts.len()];
        let result = self.transaction(sender, rcpts, parts, tail, &mut outcomes);
        let reason = match &result {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        };
        let outcomes = outcomes.into_iter().map(|o| o.unwrap_or_else(|| Outcome::Deferred(reason.clone()))).collect();
        (outcomes, result)
    }

    fn transaction(
        &mut self,
        sender: &str,
        rcpts: &[String],
        parts: &[&[u8]],
        tail: Option<&Tail>,
        outcomes: &mut [Option<Outcome>],
    ) -> Result<(), LmtpError> {
        let mail = self.send(&format!("MAIL FROM:<{sender}>"))?;
        if mail.class() != Class::Positive {
            // The sender is refused: the same answer for every recipient.
            outcomes.iter_mut().for_each(|o| *o = Some(Outcome::from_reply(mail.clone())));
            return self.reset();
        }
        let mut accepted = Vec::new();
        for (i, rcpt) in rcpts.iter().enumerate() {
            let reply = self.send(&format!("RCPT TO:<{rcpt}>"))?;
            if reply.class() == Class::Positive {
                accepted.push(i);
            } else {
                outcomes[i] = Some(Outcome::from_reply(reply));
            }
        }
        if accepted.is_empty() {
            return self.reset();
        }
        let data = self.send("DATA")?;
        if data.code != 354 {
            for &i in &accepted {
                outcomes[i] = Some(Outcome::from_reply(data.clone()));
            }
            return self.reset();
        }
        self.send_body(parts, tail)?;
        // RFC 2033 §4.2: one reply per accepted recipient, in RCPT order.
        self.conn.get_ref().set_timeout(DATA_DONE_TIMEOUT)?;
        for &i in &accepted {
            outcomes[i] = Some(Outcome::from_reply(read_reply(&mut self.conn)?));
        }
        self.conn.get_ref().set_timeout(COMMAND_TIMEOUT)?;
        Ok(())
    }

    /// The message, dot-stuffed, then the final dot: the file part read in [`CHUNK`]s.
    fn send_body(&mut self, parts: &[&[u8]], tail: Option<&Tail>) -> Result<(), LmtpError> {
        let mut body = dot::DotWriter::new(BufWriter::with_capacity(CHUNK, self.conn.get_mut()));
        for part in parts {
            body.write_all(part)?;
        }
        if let Some(tail) = tail {
            let mut file = tail.reader()?;
            let mut chunk = vec![0u8; CHUNK];
            let mut sent = 0u64;
            loop {
                let n = file.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.write_all(&chunk[..n])?;
                sent += n as u64;
            }
            if sent != tail.len {
                // Cut the connection rather than end a truncated message with a dot.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "message file shorter than recorded",
                )
                .into());
            }
        }
        body.finish()?.flush()?;
        Ok(())
    }

    /// Ends a transaction that sent no data.
    fn reset(&mut self) -> Result<(), LmtpError> {
        self.command("RSET", "RSET").map(|_| ())
    }

    /// Says goodbye (best effort: the connection is closed either way).
    pub fn quit(mut self) {
        let _ = self.send("QUIT");
    }
}

/// One message to one recipient on a connection of its own (the outbound queue's local
/// copies: bounces and forwards to local addresses). Blocking.
pub fn deliver_one(endpoint: &LmtpEndpoint, hostname: &str, sender: &str, rcpt: &str, body: &[u8]) -> Outcome {
    let mut client = match Client::connect(endpoint, hostname) {
        Ok(client) => client,
        Err(e) => return Outcome::Deferred(e.to_string()),
    };
    let (mut outcomes, result) = client.deliver(sender, &[rcpt.to_string()], &[body], None);
    if result.is_ok() {
        client.quit();
    }
    outcomes.pop().unwrap_or_else(|| Outcome::Deferred("no reply".into()))
}

fn connect_tcp(addr: &str) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    for resolved in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&resolved, CONNECT_TIMEOUT) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The recipient address that files into `folder` with Dovecot's
/// `lmtp_save_to_detail_mailbox` (and Cyrus's `user+folder`): `local+folder@domain`, with the
/// local part quoted when the folder name needs it. INBOX (or none) is the plain address.
pub fn detail_address(rcpt: &str, folder: Option<&str>) -> String {
    let Some(folder) = folder.filter(|f| !f.eq_ignore_ascii_case("INBOX") && !f.is_empty()) else {
        return rcpt.to_string();
    };
    let (local, domain) = rcpt.rsplit_once('@').unwrap_or((rcpt, ""));
    let local = local.trim_matches('"');
    // Control characters cannot travel in an address: they become `_`.
    let folder: String = folder.chars().map(|c| if c.is_control() { '_' } else { c }).collect();
    let detailed = format!("{local}+{folder}");
    let at = if domain.is_empty() { String::new() } else { format!("@{domain}") };
    if is_dot_atom(&detailed) {
        format!("{detailed}{at}")
    } else {
        let quoted: String =
            detailed.chars().flat_map(|c| if matches!(c, '"' | '\\') { vec!['\\', c] } else { vec![c] }).collect();
        format!("\"{quoted}\"{at}")
    }
}

/// RFC 5321 dot-atom: atext runs separated by single dots.
fn is_dot_atom(s: &str) -> bool {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    !s.is_empty() && s.split('.').all(|run| !run.is_empty() && run.chars().all(atext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_become_recipient_details() {
        assert_eq!(detail_address("me@example.org", None), "me@example.org");
        assert_eq!(detail_address("me@example.org", Some("INBOX")), "me@example.org");
        assert_eq!(detail_address("me@example.org", Some("Junk")), "me+Junk@example.org");
        assert_eq!(detail_address("me@example.org", Some("Lists.rust")), "me+Lists.rust@example.org");
        assert_eq!(detail_address("me@example.org", Some("Lists/rust")), "me+Lists/rust@example.org");
        assert_eq!(detail_address("me@example.org", Some("My Mail")), "\"me+My Mail\"@example.org");
        assert_eq!(detail_address("me@example.org", Some("a\"b")), "\"me+a\\\"b\"@example.org");
        assert_eq!(detail_address("me@example.org", Some("x\r\ny")), "me+x__y@example.org");
        assert_eq!(detail_address("me@example.org", Some("a..b")), "\"me+a..b\"@example.org");
    }
}
