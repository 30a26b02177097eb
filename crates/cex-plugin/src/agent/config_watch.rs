//! The config re-read: every `CRYPTOCONFIG_CHECK_INTERVAL`, or at once
//! when the reload trigger fires, which the inotify watch of the config
//! directory does within [`EVENT_SETTLE`] of a change. Log lines keep the
//! reference product's wording, which operators grep for.
//!
//! A re-read that yields the config already in force changes nothing and
//! logs nothing. A failed re-read drops the config (every set offers no
//! devices) and logs its error again at every check until a valid config
//! arrives.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cex_config::CryptoConfig;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::error_chain;
use cex_config::{self as config_source, LoadError};

/// Reads the config at start-up; `None` when it cannot be used.
pub(crate) fn initial_config(path: &Path) -> Option<Arc<CryptoConfig>> {
    match config_source::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                tracing::warn!("CryptoConfig: {warning}");
            }
            tracing::info!(
                sets = loaded.config.sets.len(),
                "CryptoConfig: {}",
                config_source::summary(&loaded.config)
            );
            Some(Arc::new(loaded.config))
        }
        Err(error) => {
            log_load_error(&error);
            None
        }
    }
}

/// Logs a failed read with the line operators look for; the agent then
/// runs without any configuration.
fn log_load_error(error: &LoadError) {
    let detail = error_chain(error);
    match error {
        LoadError::Open { path, .. } => {
            tracing::error!(error = %detail, "CryptoConfig: Can't open config file {}", path.display());
        }
        LoadError::Parse { path, .. } => {
            tracing::error!(error = %detail, "CryptoConfig: Error parsing config file {}", path.display());
        }
        LoadError::Invalid { .. } => {
            tracing::error!(error = %detail, "Config Watcher: failed to verify new configuration!");
        }
    }
}

/// Re-reads the config until cancelled and publishes changes.
pub(crate) async fn run_reloads(
    path: PathBuf,
    config: watch::Sender<Option<Arc<CryptoConfig>>>,
    interval: Duration,
    trigger: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = trigger.notified() => tracing::debug!("config reload triggered"),
        }
        let reload_path = path.clone();
        let loaded =
            match tokio::task::spawn_blocking(move || config_source::load(&reload_path)).await {
                Ok(loaded) => loaded,
                Err(error) => {
                    tracing::error!(%error, "config read task failed, reloads stop");
                    return;
                }
            };
        apply(&config, loaded);
    }
}

fn apply(
    config: &watch::Sender<Option<Arc<CryptoConfig>>>,
    loaded: Result<config_source::Loaded, LoadError>,
) {
    match loaded {
        Ok(loaded) => {
            let changed = config.borrow().as_deref() != Some(&loaded.config);
            if !changed {
                return;
            }
            for warning in &loaded.warnings {
                tracing::warn!("CryptoConfig: {warning}");
            }
            let sets: Vec<&str> = loaded
                .config
                .sets
                .iter()
                .map(|set| set.setname.as_str())
                .collect();
            tracing::info!(
                sets = %sets.join(","),
                summary = %config_source::summary(&loaded.config),
                "CryptoConfig: updated configuration"
            );
            config.send_replace(Some(Arc::new(loaded.config)));
        }
        Err(error) => {
            log_load_error(&error);
            config.send_if_modified(|current| current.take().is_some());
        }
    }
}

/// Quiet time after the last file event before the config is re-read,
/// so that a ConfigMap update (new data dir, `..data` swap, old dir
/// removal) or a write in several chunks is read once, when complete.
const EVENT_SETTLE: Duration = Duration::from_millis(75);

/// Maximum wait for quiet while events keep arriving.
const MAX_SETTLE: Duration = Duration::from_millis(500);

/// Watches the directories around the config file and fires `reload`
/// shortly after any change there, until cancelled.
///
/// The watch is on directories, not on the file: the kubelet updates a
/// mounted ConfigMap by re-pointing the `..data` symlink (a rename in the
/// directory) and deleting the old data directory, and a watch on the
/// file itself does not report either step. Watched are the file's directory, that
/// directory's parent (so a replaced directory is noticed and watched
/// again) and the directory of the file the symlinks resolve to (so an
/// in-place write behind a symlink is noticed too). Without inotify the
/// periodic re-read still applies every change.
pub(crate) async fn run_file_watch(
    path: PathBuf,
    reload: Arc<Notify>,
    recheck: Duration,
    cancel: CancellationToken,
) {
    let (sender, mut events) = mpsc::unbounded_channel();
    let mut watch = match DirWatch::new(&path, sender) {
        Ok(watch) => watch,
        Err(error) => {
            tracing::warn!(file = %path.display(), %error, "config file watch unavailable, relying on the CRYPTOCONFIG_CHECK_INTERVAL re-read");
            return;
        }
    };
    watch.rearm(&BTreeSet::new());
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            received = events.recv() => {
                let Some(first) = received else { return };
                let named = settle(&mut events, first).await;
                watch.rearm(&named);
                tracing::debug!(file = %path.display(), "config directory changed, re-reading");
                reload.notify_one();
            }
            () = tokio::time::sleep(recheck) => {
                // A directory that appeared or was replaced without an
                // event we saw (it was not there to watch) is picked up here.
                if watch.rearm(&BTreeSet::new()) {
                    reload.notify_one();
                }
            }
        }
    }
}

/// Waits until no event arrived for [`EVENT_SETTLE`], or [`MAX_SETTLE`]
/// passed; returns every path the events named, `first`'s included.
async fn settle(
    events: &mut mpsc::UnboundedReceiver<Vec<PathBuf>>,
    first: Vec<PathBuf>,
) -> BTreeSet<PathBuf> {
    let mut named: BTreeSet<PathBuf> = first.into_iter().collect();
    let limit = tokio::time::Instant::now() + MAX_SETTLE;
    loop {
        let quiet = tokio::time::sleep(EVENT_SETTLE);
        tokio::select! {
            () = quiet => return named,
            () = tokio::time::sleep_until(limit) => return named,
            received = events.recv() => match received {
                Some(paths) => named.extend(paths),
                None => return named,
            },
        }
    }
}

/// The inotify watches on the directories around the config file.
struct DirWatch {
    file: PathBuf,
    watcher: RecommendedWatcher,
    /// Watched directories and the (device, inode) they had when watched.
    watched: BTreeMap<PathBuf, (u64, u64)>,
    /// Directories whose watch failed, so the failure is logged once.
    failed: BTreeSet<PathBuf>,
}

impl DirWatch {
    fn new(file: &Path, sender: mpsc::UnboundedSender<Vec<PathBuf>>) -> notify::Result<Self> {
        let filter = EventFilter::new(file);
        let handler = move |result: notify::Result<Event>| {
            if filter.is_relevant(&result) {
                let paths = result.map(|event| event.paths).unwrap_or_default();
                // The receiver is gone only when the agent stops.
                let _ = sender.send(paths);
            }
        };
        Ok(Self {
            file: file.to_path_buf(),
            watcher: notify::recommended_watcher(handler)?,
            watched: BTreeMap::new(),
            failed: BTreeSet::new(),
        })
    }

    /// Watches every target directory that exists. A directory that was
    /// replaced, or that an event `named` (a move or deletion may have
    /// ended its watch), is watched again. Returns whether a watch changed.
    fn rearm(&mut self, named: &BTreeSet<PathBuf>) -> bool {
        let targets = watch_targets(&self.file);
        let mut changed = false;
        let stale: Vec<PathBuf> = self
            .watched
            .keys()
            .filter(|dir| !targets.iter().any(|(target, _)| target == *dir))
            .cloned()
            .collect();
        for dir in stale {
            // The kernel drops the watch of a deleted directory by itself.
            let _ = self.watcher.unwatch(&dir);
            self.watched.remove(&dir);
            changed = true;
        }
        for (dir, identity) in targets {
            if self.watched.get(&dir) == Some(&identity) && !named.contains(&dir) {
                continue;
            }
            if self.watched.remove(&dir).is_some() {
                let _ = self.watcher.unwatch(&dir);
            }
            changed = true;
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::debug!(dir = %dir.display(), "watching config directory");
                    self.failed.remove(&dir);
                    self.watched.insert(dir, identity);
                }
                Err(error) => {
                    if self.failed.insert(dir.clone()) {
                        tracing::warn!(dir = %dir.display(), %error, "cannot watch config directory, relying on the CRYPTOCONFIG_CHECK_INTERVAL re-read");
                    }
                }
            }
        }
        changed
    }
}

/// Returns the existing directories to watch for `file`, with their
/// (device, inode): its directory, that directory's parent, and the
/// directory of the file the symlinks resolve to.
fn watch_targets(file: &Path) -> Vec<(PathBuf, (u64, u64))> {
    let dir = parent_dir(file);
    let mut candidates = vec![dir.clone()];
    candidates.push(parent_dir(&dir));
    if let Ok(resolved) = std::fs::canonicalize(file) {
        candidates.push(parent_dir(&resolved));
    }
    let mut targets: Vec<(PathBuf, (u64, u64))> = Vec::new();
    for candidate in candidates {
        if targets.iter().any(|(known, _)| *known == candidate) {
            continue;
        }
        if let Ok(metadata) = std::fs::metadata(&candidate) {
            if metadata.is_dir() {
                targets.push((candidate, (metadata.dev(), metadata.ino())));
            }
        }
    }
    targets
}

/// Returns the directory of `path`; `.` for a bare file name.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Decides which inotify events concern the config file.
struct EventFilter {
    dir: PathBuf,
}

impl EventFilter {
    fn new(file: &Path) -> Self {
        Self {
            dir: parent_dir(file),
        }
    }

    /// Reports whether `result` may change what the config file reads.
    /// Opens and reads are left out, because the re-read itself causes
    /// them. Events in the parent directory count only when they name
    /// the config directory.
    fn is_relevant(&self, result: &notify::Result<Event>) -> bool {
        let event = match result {
            Ok(event) => event,
            // A lost or failed event may hide a change.
            Err(_) => return true,
        };
        if event.need_rescan() {
            return true;
        }
        if let EventKind::Access(kind) = event.kind {
            return kind == AccessKind::Close(AccessMode::Write);
        }
        let in_parent = |path: &PathBuf| path.parent() == self.dir.parent() && path != &self.dir;
        event.paths.is_empty() || !event.paths.iter().all(in_parent)
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, path: &str) -> notify::Result<Event> {
        Ok(Event::new(kind).add_path(PathBuf::from(path)))
    }

    #[test]
    fn filter_keeps_changes_and_drops_reads() {
        let filter = EventFilter::new(Path::new("/etc/cex/cex_resources.json"));
        let cases = [
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/etc/cex/cex_resources.json",
                false,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/etc/cex/cex_resources.json",
                false,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/etc/cex/cex_resources.json",
                true,
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::Any)),
                "/etc/cex/..data",
                true,
            ),
            (
                EventKind::Remove(RemoveKind::Folder),
                "/etc/cex/..2026_01_01_00_00_00.1",
                true,
            ),
            (
                EventKind::Modify(ModifyKind::Any),
                "/etc/cex/..2026_01_01_00_00_00.2/cex_resources.json",
                true,
            ),
            (EventKind::Create(CreateKind::Folder), "/etc/cex", true),
            (EventKind::Create(CreateKind::File), "/etc/hosts", false),
        ];
        for (kind, path, relevant) in cases {
            assert_eq!(
                filter.is_relevant(&event(kind, path)),
                relevant,
                "{kind:?} {path}"
            );
        }
        let lost = Err(notify::Error::generic("queue overflow"));
        assert!(filter.is_relevant(&lost));
    }

    #[test]
    fn targets_follow_symlinks() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("config");
        let data = dir.join("..2026_01_01_00_00_00.1");
        std::fs::create_dir_all(&data).expect("data dir");
        std::fs::write(data.join("cex_resources.json"), "{}").expect("file");
        std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", dir.join("..data")).expect("..data");
        let file = dir.join("cex_resources.json");
        std::os::unix::fs::symlink("..data/cex_resources.json", &file).expect("link");

        let targets: Vec<PathBuf> = watch_targets(&file)
            .into_iter()
            .map(|(dir, _)| dir)
            .collect();
        let resolved = std::fs::canonicalize(&data).expect("canonical data dir");
        assert_eq!(targets, [dir, root.path().to_path_buf(), resolved]);
    }

    #[test]
    fn targets_skip_missing_directories() {
        let root = tempfile::tempdir().expect("temp dir");
        let file = root.path().join("absent").join("cex_resources.json");
        let targets: Vec<PathBuf> = watch_targets(&file)
            .into_iter()
            .map(|(dir, _)| dir)
            .collect();
        assert_eq!(targets, [root.path().to_path_buf()]);
    }
}
