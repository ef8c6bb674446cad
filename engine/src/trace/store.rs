//! Traces in the state store: a writer thread saves what the recorder changed twice a second
//! (one transaction per batch, off the message path) and drops traces past the retention or
//! beyond [`MAX_STORED`]; [`load`] reads one back by queue id, Message-ID or outbound entry id.
//!
//! Tables: `trace` (id → JSON), `trace_time` ((received ms, id) → ()) for pruning oldest
//! first, `trace_alias` (Message-ID without `<>`, outbound entry id → id).

use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{recorder, Trace, MAX_EVENTS};

const TRACES: TableDefinition<&str, &[u8]> = TableDefinition::new("trace");
const BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("trace_time");
const ALIASES: TableDefinition<&str, &str> = TableDefinition::new("trace_alias");

/// Most traces kept in the store (about 1 KB each): the oldest go first.
pub const MAX_STORED: u64 = 200_000;
/// How often the writer saves.
const WRITE_EVERY: Duration = Duration::from_millis(500);
/// Every how many batches the writer syncs (10: every 5 seconds).
const SYNC_EVERY: u64 = 10;
/// How often old traces are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Most traces dropped per prune (a transaction stays short).
const PRUNE_BATCH: usize = 5_000;

#[derive(Debug, thiserror::Error)]
#[error("trace store: {0}")]
pub struct StoreError(String);

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Starts the writer thread. It runs for the life of the process; call [`flush`] at exit.
pub fn spawn_writer(db: Arc<Database>, retention: Duration) -> std::io::Result<()> {
    std::thread::Builder::new().name("trace-writer".into()).spawn(move || {
        let mut last_prune = std::time::Instant::now() - PRUNE_EVERY;
        let mut batches = 0u64;
        loop {
            std::thread::sleep(WRITE_EVERY);
            batches += 1;
            if let Err(e) = flush(&db, batches.is_multiple_of(SYNC_EVERY)) {
                tracing::warn!(error = %e, "traces not saved");
            }
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = std::time::Instant::now();
                if let Err(e) = prune(&db, retention, MAX_STORED) {
                    tracing::warn!(error = %e, "old traces not dropped");
                }
            }
        }
    })?;
    Ok(())
}

/// Saves what changed since the last call; `durable` makes this and the batches before it
/// survive a crash (the others are written without a sync: a trace is worth a few seconds
/// of loss at a crash, not an fsync twice a second). Returns how many records were written.
pub fn flush(db: &Database, durable: bool) -> Result<usize, StoreError> {
    let (traces, orphans) = recorder::take_changes();
    if traces.is_empty() && orphans.is_empty() {
        return Ok(0);
    }
    let mut txn = db.begin_write().map_err(db_err)?;
    if !durable {
        txn.set_durability(redb::Durability::None).map_err(db_err)?;
    }
    let mut written = 0;
    {
        let mut table = txn.open_table(TRACES).map_err(db_err)?;
        let mut times = txn.open_table(BY_TIME).map_err(db_err)?;
        let mut aliases = txn.open_table(ALIASES).map_err(db_err)?;
        // Several events of one stored trace: read it once, add them all.
        let mut orphaned: std::collections::BTreeMap<String, Trace> = std::collections::BTreeMap::new();
        for (id, event) in orphans {
            if !orphaned.contains_key(&id) {
                match table.get(id.as_str()).map_err(db_err)?.and_then(|v| decode(v.value())) {
                    Some(trace) => orphaned.insert(id.clone(), trace),
                    None => continue,
                };
            }
            if let Some(trace) = orphaned.get_mut(&id).filter(|t| t.events.len() < MAX_EVENTS) {
                trace.outcome = recorder::outcome_after(&trace.outcome, &event.kind);
                trace.events.push(event);
            }
        }
        for trace in traces.iter().chain(orphaned.values()) {
            let json = serde_json::to_vec(trace).map_err(db_err)?;
            table.insert(trace.id.as_str(), json.as_slice()).map_err(db_err)?;
            times.insert((trace.received_at, trace.id.as_str()), ()).map_err(db_err)?;
            for alias in aliases_of(trace) {
                aliases.insert(alias, trace.id.as_str()).map_err(db_err)?;
            }
            written += 1;
        }
    }
    txn.commit().map_err(db_err)?;
    Ok(written)
}

fn aliases_of(trace: &Trace) -> impl Iterator<Item = &str> {
    let message_id = trace.message_id.trim().trim_start_matches('<').trim_end_matches('>');
    std::iter::once(message_id)
        .filter(|m| !m.is_empty())
        .chain(trace.events.iter().map(|e| e.queue_id.as_str()).filter(|q| !q.is_empty()))
}

fn decode(bytes: &[u8]) -> Option<Trace> {
    serde_json::from_slice(bytes).ok()
}

/// The stored trace of `id`: a queue id, a Message-ID (with or without `<>`) or the id of an
/// outbound entry the message made.
pub fn load(db: &Database, id: &str) -> Result<Option<Trace>, StoreError> {
    let txn = db.begin_read().map_err(db_err)?;
    let table = match txn.open_table(TRACES) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db_err(e)),
    };
    if let Some(found) = table.get(id).map_err(db_err)? {
        return Ok(decode(found.value()));
    }
    let bare = id.trim().trim_start_matches('<').trim_end_matches('>');
    let aliases = match txn.open_table(ALIASES) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db_err(e)),
    };
    let Some(target) = aliases.get(bare).map_err(db_err)?.map(|v| v.value().to_string()) else { return Ok(None) };
    Ok(table.get(target.as_str()).map_err(db_err)?.and_then(|v| decode(v.value())))
}

/// Drops traces received more than `retention` ago, then the oldest beyond `max`.
/// Returns how many went.
pub fn prune(db: &Database, retention: Duration, max: u64) -> Result<usize, StoreError> {
    let cutoff = super::now_ms().saturating_sub(retention.as_millis() as u64);
    let txn = db.begin_write().map_err(db_err)?;
    let dropped;
    {
        let mut table = txn.open_table(TRACES).map_err(db_err)?;
        let mut times = txn.open_table(BY_TIME).map_err(db_err)?;
        let mut aliases = txn.open_table(ALIASES).map_err(db_err)?;
        let total = times.len().map_err(db_err)?;
        let over = total.saturating_sub(max) as usize;
        let mut doomed: Vec<(u64, String)> = Vec::new();
        for item in times.range::<(u64, &str)>(..).map_err(db_err)? {
            let (key, _) = item.map_err(db_err)?;
            let (at, id) = key.value();
            if (at >= cutoff && doomed.len() >= over) || doomed.len() >= PRUNE_BATCH {
                break;
            }
            doomed.push((at, id.to_string()));
        }
        for (at, id) in &doomed {
            times.remove((*at, id.as_str())).map_err(db_err)?;
            let gone = table.remove(id.as_str()).map_err(db_err)?.and_then(|v| decode(v.value()));
            if let Some(trace) = gone {
                for alias in aliases_of(&trace) {
                    aliases.remove(alias).map_err(db_err)?;
                }
            }
        }
        dropped = doomed.len();
    }
    txn.commit().map_err(db_err)?;
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(id: &str, at: u64) -> Trace {
        Trace { id: id.into(), received_at: at, message_id: format!("<{id}@x>"), ..Trace::default() }
    }

    fn save(db: &Database, traces: &[Trace]) {
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(TRACES).unwrap();
            let mut times = txn.open_table(BY_TIME).unwrap();
            let mut aliases = txn.open_table(ALIASES).unwrap();
            for t in traces {
                table.insert(t.id.as_str(), serde_json::to_vec(t).unwrap().as_slice()).unwrap();
                times.insert((t.received_at, t.id.as_str()), ()).unwrap();
                for a in aliases_of(t) {
                    aliases.insert(a, t.id.as_str()).unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }

    #[test]
    fn load_finds_by_id_and_message_id_and_prune_keeps_the_newest() {
        let db = crate::state::in_memory().unwrap();
        assert_eq!(load(&db, "nothing").unwrap(), None);
        let now = super::super::now_ms();
        save(&db, &[trace("old", now - 10 * 86_400_000), trace("a", now - 2000), trace("b", now - 1000)]);
        assert_eq!(load(&db, "a").unwrap().unwrap().id, "a");
        assert_eq!(load(&db, "<b@x>").unwrap().unwrap().id, "b");
        assert_eq!(load(&db, "b@x").unwrap().unwrap().id, "b");
        assert_eq!(prune(&db, Duration::from_secs(7 * 86_400), 10).unwrap(), 1);
        assert_eq!(load(&db, "old").unwrap(), None);
        assert_eq!(load(&db, "old@x").unwrap(), None);
        assert_eq!(prune(&db, Duration::from_secs(7 * 86_400), 1).unwrap(), 1);
        assert_eq!(load(&db, "a").unwrap(), None);
        assert!(load(&db, "b").unwrap().is_some());
    }
}
