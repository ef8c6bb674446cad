//! The `mailflow` binary: parses the command line, sets up logging, runs the command.

use clap::Parser;
use mailflow::cli::{Cli, Command};
use mailflow::config::LoadedConfig;
use mailflow::logline::{LineFields, LineFormat, LogSink};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    let sink = init_logging(matches!(command, Command::Run));
    let config = cli.config.as_deref();
    let code = match command {
        Command::Run => run(config),
        Command::Check { explain } => mailflow::cli::check::run(config, explain),
        Command::Test(args) => mailflow::cli::test::run(config, &args),
        Command::Queue { action } => mailflow::cli::queue::run(config, &action),
        Command::HashPassword => hash_password(),
        Command::Trace { id, json } => mailflow::cli::trace::run(config, &id, json),
    };
    if let Some(sink) = sink {
        sink.flush();
    }
    std::process::exit(code);
}

/// Logs go to stderr; `RUST_LOG` filters (default `info`). A terminal gets colours; a file or
/// the journal gets the same lines without them, written by [`mailflow::logline`] — for the
/// daemon through a writer thread (`Some`: flush it before exiting).
fn init_logging(daemon: bool) -> Option<LogSink> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        builder.with_ansi(true).with_writer(std::io::stderr).init();
        return None;
    }
    let builder = builder.with_ansi(false).event_format(LineFormat::default()).fmt_fields(LineFields);
    if daemon {
        let sink = LogSink::stderr();
        sink.install();
        builder.with_writer(sink.clone()).init();
        Some(sink)
    } else {
        builder.with_writer(std::io::stderr).init();
        None
    }
}

fn run(config: Option<&std::path::Path>) -> i32 {
    let loaded = match LoadedConfig::load(config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(mailflow::daemon::run(loaded)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("mailflow: {e:#}");
            1
        }
    }
}

/// `mailflow hash-password`: one line on stdin → an argon2id PHC string for `auth_users`.
fn hash_password() -> i32 {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("cannot read the password: {e}");
        return 1;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("empty password");
        return 1;
    }
    match mailflow::smtp::credentials::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            0
        }
        Err(e) => {
            eprintln!("cannot hash: {e}");
            1
        }
    }
}
