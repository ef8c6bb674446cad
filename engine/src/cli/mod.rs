//! The `mailflow` command line (docs/reference/command-line.md). Exit codes: 0 ok, 1 script or config error, 2 usage.

pub mod check;
pub mod queue;
pub mod test;
pub mod trace;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// mailflow: a mail automation daemon — SMTP receiver, pollers, rhai scripts, outbound sender.
#[derive(Debug, Parser)]
#[command(name = "mailflow", version, about)]
pub struct Cli {
    /// Config file (default: ./mailflow.toml if present, else built-in defaults).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default command).
    Run,
    /// Compile every script and validate the config.
    Check {
        /// Also say, for each stage function, whether it runs natively or in rhai, and why.
        #[arg(long)]
        explain: bool,
    },
    /// Dry run: run the scripts of one stage on a message and print the verdict and every
    /// action, doing none of them.
    Test(Box<test::TestArgs>),
    /// The outbound queue.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Read a password on stdin, print a hash for `auth_users` or `[web] password_hash`.
    HashPassword,
    /// What happened to a message: stages, verdicts, actions and their outcomes.
    Trace {
        /// A queue id, a Message-ID, or the id of an outbound queue entry the message made.
        id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Writes `text` to stdout; a reader that went away (`| head`) ends the command quietly.
pub fn print(text: &str) -> i32 {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("cannot write: {e}");
            1
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// List queued messages.
    List,
    /// Retry a queued message now.
    Retry { id: String },
    /// Delete a queued message.
    Delete { id: String },
    /// Retry every queued message now (like Postfix's `postqueue -f`).
    Flush,
}
