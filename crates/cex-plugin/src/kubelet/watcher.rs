//! Watcher of the kubelet device-plugin directory (inotify through the
//! `notify` crate). A kubelet restart deletes every socket in the
//! directory except its own and re-creates `kubelet.sock`; the watcher
//! turns such changes into [`DirEvent`]s for every set's runner.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::broadcast;

/// Capacity of the event channel; a runner that falls behind rechecks
/// every file it cares about.
const EVENT_CAPACITY: usize = 256;

/// A change in the device-plugin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirEvent {
    /// A file with this name was created, removed or renamed.
    Changed(OsString),
    /// Events were lost; every file may have changed.
    Unknown,
}

/// The device-plugin directory cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// Creating the directory failed.
    #[error("cannot create device-plugin directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Setting up the inotify watch failed.
    #[error("cannot watch device-plugin directory {}", path.display())]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// A running watch; dropping it ends the watch.
pub struct DirWatcher {
    _watcher: RecommendedWatcher,
    events: broadcast::Sender<DirEvent>,
}

impl DirWatcher {
    /// Starts watching `dir`, creating it first if it does not exist (the
    /// kubelet may not have started yet).
    pub fn start(dir: &Path) -> Result<Self, WatchError> {
        std::fs::create_dir_all(dir).map_err(|source| WatchError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let sender = events.clone();
        let handler = move |result: notify::Result<Event>| {
            for event in translate(result) {
                // No receiver yet is fine: runners check the directory
                // when they subscribe.
                let _ = sender.send(event);
            }
        };
        let mut watcher =
            notify::recommended_watcher(handler).map_err(|source| WatchError::Watch {
                path: dir.to_path_buf(),
                source,
            })?;
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| WatchError::Watch {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            _watcher: watcher,
            events,
        })
    }

    /// Returns a receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<DirEvent> {
        self.events.subscribe()
    }
}

fn translate(result: notify::Result<Event>) -> Vec<DirEvent> {
    match result {
        Ok(event) if event.need_rescan() => vec![DirEvent::Unknown],
        Ok(event) if event.kind.is_access() => Vec::new(),
        Ok(event) => event
            .paths
            .iter()
            .filter_map(|path| path.file_name())
            .map(|name| DirEvent::Changed(name.to_os_string()))
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "device-plugin directory watch reported an error");
            vec![DirEvent::Unknown]
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn reports_created_socket() {
        let dir = tempfile::tempdir().expect("temp dir");
        let watcher = DirWatcher::start(dir.path()).expect("watch");
        let mut events = watcher.subscribe();
        let _listener =
            std::os::unix::net::UnixListener::bind(dir.path().join("kubelet.sock")).expect("bind");
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("event in time")
            .expect("channel open");
        assert_eq!(event, DirEvent::Changed("kubelet.sock".into()));
    }
}
