//! Watching `shards.yaml` for changes.
//!
//! The directory is watched, not the file: editors and Kubernetes ConfigMaps replace a file by
//! renaming a new one over it (ConfigMaps swap a `..data` symlink), which a watch on the old
//! file would never see. Events for the file, or for `..`-prefixed entries, trigger a reload
//! after a short pause that lets a writer finish and folds a burst of events into one reload.

use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::context::ProxyContext;
use crate::shutdown::Phase;

/// Wait after an event before reading the file.
const SETTLE: Duration = Duration::from_millis(100);

/// Keeps the watch alive; dropping it stops watching.
pub struct ConfigWatcher {
    _watcher: RecommendedWatcher,
}

/// Starts reloading `path` whenever it changes.
pub fn watch(ctx: Arc<ProxyContext>, path: &Path) -> anyhow::Result<ConfigWatcher> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => std::env::current_dir().context("could not find the current directory")?,
    };
    let name = path
        .file_name()
        .map(OsString::from)
        .context("the config path names no file")?;
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        match event {
            Ok(event) if concerns(&event, &name) => {
                // A full channel already holds a pending reload, which will see this change.
                let _ = changed.try_send(());
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watching the config directory failed"),
        }
    })
    .context("could not start watching the config file")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("could not watch {}", dir.display()))?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                event = changes.recv() => if event.is_none() { break },
                () = ctx.shutdown.reached(Phase::Closed) => break,
            }
            tokio::time::sleep(SETTLE).await;
            while changes.try_recv().is_ok() {}
            let ctx = ctx.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || super::reload(&ctx)).await {
                tracing::error!(error = %e, "config reload task failed");
            }
        }
    });
    tracing::info!(dir = %dir.display(), "watching the config file for changes");
    Ok(ConfigWatcher { _watcher: watcher })
}

/// True for an event that may have changed the config file: a change (not a mere read) to the
/// file itself or to a `..` entry (a ConfigMap's data swap).
fn concerns(event: &Event, name: &OsString) -> bool {
    let change = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    change
        && event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| n == name.as_os_str() || n.to_string_lossy().starts_with(".."))
        })
}
