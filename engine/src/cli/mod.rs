//! The `mailflow` command line (docs/reference/command-line.md). Exit codes: 0 ok, 1 script or
//! config error, 2 usage. Output goes through [`output`]: a reader that goes away ends a
//! command quietly.

pub mod check;
pub mod dkim;
pub mod oauth2;
pub mod output;
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
    /// DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        action: DkimAction,
    },
    /// OAuth2 for `[[accounts]]` with an `[accounts.oauth2]` table.
    Oauth2 {
        #[command(subcommand)]
        action: Oauth2Action,
    },
    /// What happened to a message: stages, verdicts, actions and their outcomes.
    Trace {
        /// A queue id, a Message-ID, or the id of an outbound queue entry the message made.
        id: String,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DkimAction {
    /// Write a new private key (mode 0600) and print the DNS TXT record to publish.
    Keygen(dkim::KeygenArgs),
}

#[derive(Debug, Subcommand)]
pub enum Oauth2Action {
    /// Ask for the user's consent (device code or browser) and store the refresh token.
    Authorize {
        /// The `[[accounts]]` name.
        #[arg(long, value_name = "NAME")]
        account: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// List queued messages: a table, or with `--json` an array of objects.
    List {
        /// Print a JSON array (one object per entry) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Retry a queued message now.
    Retry { id: String },
    /// Delete a queued message.
    Delete { id: String },
    /// Retry every queued message now (like Postfix's `postqueue -f`).
    Flush,
}
