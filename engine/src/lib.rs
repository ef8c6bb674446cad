//! mailflow: a mail automation daemon.
//!
//! # Layout — the path of a message
//!
//! - receive: [`smtp`] (listener, session state machine, DATA reader), [`fetch`] (POP3/IMAP pollers)
//! - decide: [`script`] (rhai host, stages, verdicts, actions, hot reload)
//! - keep: [`spool`] (durable handoff before the 250)
//! - act: [`deliver`] (Maildir++), [`outbound`] (queue → relay | MX; replies, bounces)
//! - powers for scripts: [`plugins`] (crates under `plugins/`), on the [`state`] store
//!
//! [`config`] reads `mailflow.toml`, [`message`] is the lazily parsed message every stage
//! sees, [`daemon`] wires the stages together, [`prometheus`] counts what each stage did and
//! serves it at `/metrics`, [`logline`] writes the log lines, and [`cli`] is the command line.
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod fetch;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod logline;
pub mod message;
pub mod outbound;
pub mod plugins;
pub mod prometheus;
pub mod script;
pub mod smtp;
pub mod spool;
pub mod state;
