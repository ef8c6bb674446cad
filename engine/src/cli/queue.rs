//! `mailflow queue list [--json]|retry ID|delete ID|flush`: the outbound queue of the config's daemon, read
//! and changed through its folder. The running daemon rescans the folder twice a second, so a
//! retry is picked up at once and a deleted entry is not sent again (an attempt already in
//! flight finishes).

use std::path::Path;

use serde::Serialize;

use crate::cli::output::{progress, Table};
use crate::cli::QueueAction;
use crate::config::LoadedConfig;
use crate::outbound::entry::{self, EntryKind, QueueEntry, RcptState};
use crate::{errln, outln};

/// One entry as `queue list --json` prints it (times in unix seconds).
#[derive(Serialize)]
struct ListedEntry<'a> {
    id: &'a str,
    kind: &'static str,
    /// Envelope sender; "" is the null sender (replies, bounces).
    sender: &'a str,
    /// Every recipient with its status (`pending`, `sent`, `failed`) and last reply.
    recipients: &'a [RcptState],
    attempts: u32,
    created: u64,
    next_try: u64,
    last_error: &'a str,
    /// Queue id of the message this one came from.
    origin: &'a str,
}

impl<'a> From<&'a QueueEntry> for ListedEntry<'a> {
    fn from(e: &'a QueueEntry) -> Self {
        ListedEntry {
            id: &e.id,
            kind: kind_name(e.kind),
            sender: &e.sender,
            recipients: &e.recipients,
            attempts: e.attempts,
            created: e.created,
            next_try: e.next_try,
            last_error: &e.last_error,
            origin: &e.origin,
        }
    }
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Relay => "relay",
        EntryKind::Forward => "forward",
        EntryKind::Redirect => "redirect",
        EntryKind::Reply => "reply",
        EntryKind::Vacation => "vacation",
        EntryKind::Bounce => "bounce",
    }
}

/// Returns the process exit code.
pub fn run(config: Option<&Path>, action: &QueueAction) -> i32 {
    let loaded = match LoadedConfig::load(config) {
        Ok(loaded) => loaded,
        Err(e) => {
            errln!("{e}");
            return 1;
        }
    };
    let dir = loaded.config.queue_dir();
    match action {
        QueueAction::List { json } => {
            let entries = entry::list(&dir);
            if *json {
                let rows: Vec<ListedEntry> = entries.iter().map(ListedEntry::from).collect();
                match serde_json::to_string_pretty(&rows) {
                    Ok(text) => outln!("{text}"),
                    Err(e) => {
                        errln!("cannot print JSON: {e}");
                        return 1;
                    }
                }
                return 0;
            }
            if entries.is_empty() {
                outln!("queue is empty ({})", dir.display());
                return 0;
            }
            let now = crate::spool::unix_now();
            let mut table = Table::new(&["ID", "KIND", ">ATTEMPTS", ">NEXT TRY", "RECIPIENTS", "LAST ERROR"]);
            for e in &entries {
                let rcpts: Vec<&str> = e.pending().map(|r| r.addr.as_str()).collect();
                let next = if e.next_try <= now { "now".to_string() } else { format!("in {}s", e.next_try - now) };
                table.row(vec![
                    e.id.clone(),
                    kind_name(e.kind).to_string(),
                    e.attempts.to_string(),
                    next,
                    rcpts.join(","),
                    e.last_error.clone(),
                ]);
            }
            table.print();
            0
        }
        QueueAction::Retry { id } => match entry::load(&dir, id) {
            Ok(mut e) => {
                e.next_try = 0;
                match entry::save(&dir, &e) {
                    Ok(()) => {
                        outln!("{id}: will be retried now");
                        0
                    }
                    Err(err) => {
                        errln!("{id}: {err}");
                        1
                    }
                }
            }
            Err(_) => {
                errln!("{id}: no such queue entry");
                1
            }
        },
        QueueAction::Flush => {
            let entries = entry::list(&dir);
            let mut failed = 0;
            // Each entry is written durably: thousands take a while.
            let progress = progress(entries.len() as u64, "retrying");
            for mut e in entries.iter().cloned() {
                e.next_try = 0;
                if let Err(err) = entry::save(&dir, &e) {
                    progress.suspend(|| errln!("{}: {err}", e.id));
                    failed += 1;
                }
                progress.inc(1);
            }
            progress.finish_and_clear();
            outln!("{} queued message(s) will be retried now", entries.len() - failed);
            i32::from(failed > 0)
        }
        QueueAction::Delete { id } => {
            if entry::load(&dir, id).is_err() {
                errln!("{id}: no such queue entry");
                return 1;
            }
            match entry::remove(&dir, id) {
                Ok(()) => {
                    outln!("{id}: deleted");
                    0
                }
                Err(e) => {
                    errln!("{id}: {e}");
                    1
                }
            }
        }
    }
}
