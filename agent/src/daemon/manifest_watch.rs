//! Local mode's view of its manifests directory: a message per finished change.
use std::path::Path;

use notify::Watcher;
use tokio::sync::mpsc;

use crate::source::manifests;

/// Sends a message on `tx` whenever a manifest in the directory changes.
pub fn watch(dir: &Path, tx: mpsc::UnboundedSender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only finished changes: a file closed after writing, renamed in or
        // out, removed. Reading a file half-written would see a truncated
        // document set, and reading the files raises access events of its
        // own. Other files (a log written into the directory) do not count.
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
        let relevant = |e: &notify::Event| {
            matches!(
                e.kind,
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                    | EventKind::Modify(ModifyKind::Name(_))
                    | EventKind::Remove(_)
            ) && e.paths.iter().any(|p| manifests::is_manifest_name(p))
        };
        if event.is_ok_and(|e| relevant(&e)) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
