//! decide: the rhai script host (docs/scripting.md).
//!
//! Input: a [`Context`] (and, at `data`/`fetched`, a [`MessageView`](crate::message::MessageView))
//! from the SMTP session or a poller. Output: a [`Decision`] — verdict plus typed actions — that
//! the caller carries out. Nothing here does I/O on behalf of a script, which is what makes
//! `mailflow test` an honest dry run.
//!
//! Security: scripts are user code run in a sandbox: operation, time, size and depth limits,
//! no `eval`, no file/process/network/environment access except through plugins.

pub mod analysis;
pub mod api;
pub mod api_auth;
pub mod apply;
pub mod catalog;
pub mod context;
pub mod decision;
pub mod host;
pub mod invoke;
pub mod native;
pub mod resolver;
pub mod runner;
pub mod sandbox;
pub mod set;
mod source;
pub mod watch;

pub use context::{Context, ScriptCtx};
pub use decision::{Action, Decision, ScriptError, Stage, Verdict};
pub use host::ScriptHost;
pub use set::ScriptSet;
