//! receive: the SMTP server (RFC 5321 + ESMTP).
//!
//! `listener` accepts connections and enforces `max_connections`; `session` owns one
//! connection's state machine and reads command lines; one handler per verb (`helo`, `mail`,
//! `rcpt`, `data`) checks preconditions and limits, runs the stage's scripts and answers;
//! `data_reader` turns DATA bytes into a message; `received` writes the trace header;
//! `syntax` answers lines that do not parse. `transcript` (tests only) drives sessions over an
//! in-memory pipe. An accepted message leaves through [`crate::spool::Spool::store`], and the
//! 250 waits for it.
//!
//! Security: everything here reads untrusted bytes. Lines are capped (512 octets), messages
//! capped (`max_message_size`), every wait is timed, and no client input can panic the task.

pub use crate::proto::address;
pub mod auth;
pub mod credentials;
pub mod data;
pub mod data_reader;
pub mod helo;
pub mod listener;
pub mod mail;
pub mod policy;
pub mod rcpt;
pub mod received;
pub use crate::proto::reply;
pub mod runtime;
pub mod session;
pub mod starttls;
pub mod syntax;
pub mod tls;
#[cfg(test)]
mod transcript;

pub use listener::{serve, Shared};
