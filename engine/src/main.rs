//! The `mailflow` binary: parses the command line, sets up logging, runs the command.

use clap::Parser;
use mailflow::cli::{Cli, Command, DkimAction};
use mailflow::config::log::{LogConfig, LogFormat};
use mailflow::config::LoadedConfig;
use mailflow::logline::{JsonLayer, LineFields, LineFormat, LogSink};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    let config = cli.config.as_deref();
    // The daemon sets up its logging from its config file; the other commands log as usual.
    let logged = |run: &dyn Fn() -> i32| {
        init_logging(&LogConfig::default(), false);
        run()
    };
    let code = match command {
        Command::Run => run(config),
        Command::Check { explain } => logged(&|| mailflow::cli::check::run(config, explain)),
        Command::Test(args) => logged(&|| mailflow::cli::test::run(config, &args)),
        Command::Queue { action } => logged(&|| mailflow::cli::queue::run(config, &action)),
        Command::HashPassword => logged(&hash_password),
        Command::Dkim { action: DkimAction::Keygen(args) } => logged(&|| mailflow::cli::dkim::keygen(&args)),
        Command::Oauth2 { action: mailflow::cli::Oauth2Action::Authorize { account } } => {
            logged(&|| mailflow::cli::oauth2::run(config, &account))
        }
        Command::Trace { id, json } => logged(&|| mailflow::cli::trace::run(config, &id, json)),
    };
    std::process::exit(code);
}

/// Logs go to stderr, filtered by `RUST_LOG` or else `[log] level` and `filters`. With `[log]
/// format = "json"`, one JSON object per line ([`JsonLayer`]). Text: a terminal gets colours;
/// a file or the journal gets the same lines without them, written by [`mailflow::logline`].
/// The daemon's lines go through a writer thread (`Some`: flush it before exiting).
fn init_logging(log: &LogConfig, daemon: bool) -> Option<LogSink> {
    // An empty RUST_LOG counts as unset, so `RUST_LOG= mailflow run` uses the config.
    let from_env =
        std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty()).and_then(|v| EnvFilter::try_new(v).ok());
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(log.directives()));
    let sink = daemon.then(|| {
        let sink = LogSink::stderr();
        sink.install();
        sink
    });
    if log.format == LogFormat::Json {
        let registry = tracing_subscriber::registry().with(filter);
        match &sink {
            Some(sink) => registry.with(JsonLayer::new(sink.clone())).init(),
            None => registry.with(JsonLayer::new(std::io::stderr)).init(),
        }
        return sink;
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        builder.with_ansi(true).with_writer(std::io::stderr).init();
        return sink;
    }
    let builder = builder.with_ansi(false).event_format(LineFormat::default()).fmt_fields(LineFields);
    match &sink {
        Some(sink) => builder.with_writer(sink.clone()).init(),
        None => builder.with_writer(std::io::stderr).init(),
    }
    sink
}

fn run(config: Option<&std::path::Path>) -> i32 {
    // `[log]` says how to log: read the file once quietly for it, then again with logging set
    // up, so that the config's own warnings come out in the chosen format.
    let quiet =
        tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || LoadedConfig::load(config));
    let log = match quiet {
        Ok(loaded) => loaded.config.log,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let sink = init_logging(&log, true);
    let loaded = match LoadedConfig::load(config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            if let Some(sink) = sink {
                sink.flush();
            }
            return 1;
        }
    };
    let json = loaded.config.log.format == LogFormat::Json;
    let code = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => match runtime.block_on(mailflow::daemon::run(loaded)) {
            Ok(()) => 0,
            Err(e) => {
                if json {
                    tracing::error!("{e:#}");
                } else {
                    eprintln!("mailflow: {e:#}");
                }
                1
            }
        },
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            1
        }
    };
    if let Some(sink) = sink {
        sink.flush();
    }
    code
}

/// `mailflow hash-password`: one line on stdin → an argon2id PHC string for `auth_users`.
fn hash_password() -> i32 {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        mailflow::errln!("cannot read the password: {e}");
        return 1;
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        mailflow::errln!("empty password");
        return 1;
    }
    match mailflow::smtp::credentials::hash_password(password) {
        Ok(hash) => {
            mailflow::outln!("{hash}");
            0
        }
        Err(e) => {
            mailflow::errln!("cannot hash: {e}");
            1
        }
    }
}
