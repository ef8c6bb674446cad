//! `mailflow queue list|retry ID|delete ID|flush`: the outbound queue of the config's daemon, read
//! and changed through its folder. The running daemon rescans the folder twice a second, so a
//! retry is picked up at once and a deleted entry is not sent again (an attempt already in
//! flight finishes).

use std::path::Path;

use crate::cli::QueueAction;
use crate::config::LoadedConfig;
use crate::outbound::entry::{self, RcptStatus};

/// Returns the process exit code.
pub fn run(config: Option<&Path>, action: &QueueAction) -> i32 {
    let loaded = match LoadedConfig::load(config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let dir = loaded.config.queue_dir();
    match action {
        QueueAction::List => {
            let entries = entry::list(&dir);
            if entries.is_empty() {
                println!("queue is empty ({})", dir.display());
                return 0;
            }
            let now = crate::spool::unix_now();
            println!(
                "{:<16}  {:<8}  {:>8}  {:>10}  {:<30}  LAST ERROR",
                "ID", "KIND", "ATTEMPTS", "NEXT TRY", "RECIPIENTS"
            );
            for e in &entries {
                let rcpts: Vec<&str> =
                    e.recipients.iter().filter(|r| r.status == RcptStatus::Pending).map(|r| r.addr.as_str()).collect();
                let next = if e.next_try <= now { "now".to_string() } else { format!("in {}s", e.next_try - now) };
                println!(
                    "{:<16}  {:<8}  {:>8}  {:>10}  {:<30}  {}",
                    e.id,
                    format!("{:?}", e.kind).to_lowercase(),
                    e.attempts,
                    next,
                    rcpts.join(","),
                    e.last_error.replace(['\r', '\n'], " ")
                );
            }
            0
        }
        QueueAction::Retry { id } => match entry::load(&dir, id) {
            Ok(mut e) => {
                e.next_try = 0;
                match entry::save(&dir, &e) {
                    Ok(()) => {
                        println!("{id}: will be retried now");
                        0
                    }
                    Err(err) => {
                        eprintln!("{id}: {err}");
                        1
                    }
                }
            }
            Err(_) => {
                eprintln!("{id}: no such queue entry");
                1
            }
        },
        QueueAction::Flush => {
            let entries = entry::list(&dir);
            let mut failed = 0;
            for mut e in entries.iter().cloned() {
                e.next_try = 0;
                if let Err(err) = entry::save(&dir, &e) {
                    eprintln!("{}: {err}", e.id);
                    failed += 1;
                }
            }
            println!("{} queued message(s) will be retried now", entries.len() - failed);
            i32::from(failed > 0)
        }
        QueueAction::Delete { id } => {
            if entry::load(&dir, id).is_err() {
                eprintln!("{id}: no such queue entry");
                return 1;
            }
            match entry::remove(&dir, id) {
                Ok(()) => {
                    println!("{id}: deleted");
                    0
                }
                Err(e) => {
                    eprintln!("{id}: {e}");
                    1
                }
            }
        }
    }
}
