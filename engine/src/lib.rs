//! mailflow: a mail automation daemon.
//!
//! # Layout — the path of a message
//!
//! - receive: [`smtp`] (listener, session state machine, DATA reader), [`fetch`] (POP3/IMAP pollers)
//! - decide: [`script`] (rhai host, stages, verdicts, actions, hot reload)
//! - keep: [`spool`] (durable handoff before the 250)
//! - act: [`deliver`] (spooled messages into Maildir++), [`outbound`] (queue → relay | MX;
//!   replies, bounces), both writing through [`maildir`] (or, for the deliverer in `lmtp`
//!   mode, handing local mail to a mail store with the [`lmtp`] client)
//! - powers for scripts: [`plugins`] (crates under `plugins/`), on the [`state`] store
//!
//! Leaves, used by every stage and using none: [`config`] (`mailflow.toml` as plain types),
//! [`message`] (the lazily parsed message, large ones kept in files), [`proto`] (SMTP replies
//! and addresses), [`prometheus`] (what each stage did, at `/metrics`), [`logline`] (the log
//! line format). On top: [`daemon`] wires the stages together, [`cli`] is the command line.
//! No module imports one above it (`engine/src` has no import cycle).
#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod fetch;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod lmtp;
pub mod logline;
pub mod maildir;
pub mod message;
pub mod oauth2;
pub mod outbound;
pub mod plugins;
pub mod prometheus;
pub mod proto;
pub mod script;
pub mod service;
pub mod smtp;
pub mod spool;
pub mod state;
pub mod trace;
pub mod verify;
pub mod web;
