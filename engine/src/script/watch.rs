//! Hot reload: watches the scripts folder (sub-folders too, for modules) and reloads the set
//! shortly after any change. The debouncer merges an editor's temp-file-and-rename save into
//! one event; access events (open, close) are ignored.

use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use tokio::sync::mpsc;

use super::host::ScriptHost;

/// How long the folder must be quiet before a reload; short enough for a 200 ms reload target.
const DEBOUNCE: Duration = Duration::from_millis(40);

/// Starts watching; the returned guard stops the watcher when dropped.
pub fn spawn(host: Arc<ScriptHost>) -> Result<Box<dyn Send>, notify::Error> {
    let dir = host.config().dir.clone();
    std::fs::create_dir_all(&dir).map_err(notify::Error::io)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result: DebounceEventResult| {
        let relevant = match result {
            Ok(events) => events.iter().any(|e| !matches!(e.event.kind, EventKind::Access(_))),
            Err(errors) => {
                for e in errors {
                    tracing::warn!(target: "mailflow::script", error = %e, "watching the scripts folder");
                }
                false
            }
        };
        if relevant {
            let _ = tx.send(());
        }
    })?;
    debouncer.watch(&dir, RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            while rx.try_recv().is_ok() {}
            let host = host.clone();
            let _ = tokio::task::spawn_blocking(move || host.reload()).await;
        }
    });
    Ok(Box::new(debouncer))
}
