//! Watcher of the kubelet device-plugin directory (inotify through the
//! `notify` crate). A kubelet restart deletes every socket in the
//! directory except its own and re-creates `kubelet.sock`; the watcher
//! turns such changes into [`DirEvent`]s for every set's runner.
//!
//! An inotify watch dies with its directory. When the directory is
//! removed or replaced (told by an event on the directory itself, or by a
//! change of its inode seen at a light periodic check), a supervisor
//! thread polls until a directory is there again, watches it and sends
//! [`DirEvent::Unknown`] so that every runner looks at the files anew.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::broadcast;

/// Capacity of the event channel; a runner that falls behind rechecks
/// every file it cares about.
const EVENT_CAPACITY: usize = 256;

/// How often the supervisor checks that the watched directory is still
/// the one on disk.
const IDENTITY_CHECK: Duration = Duration::from_secs(2);

/// How often the supervisor looks for a removed directory to return.
const RETURN_POLL: Duration = Duration::from_millis(200);

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
    /// The supervisor thread cannot be started.
    #[error("cannot start the watcher thread of {}", path.display())]
    Thread {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Messages to the supervisor thread.
enum Control {
    /// An event concerned the directory itself: check it now.
    Check,
    /// The watch ends.
    Stop,
}

/// A running watch; dropping it ends the watch.
pub struct DirWatcher {
    events: broadcast::Sender<DirEvent>,
    control: mpsc::Sender<Control>,
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
        let (control, commands) = mpsc::channel();
        let sender = events.clone();
        let checks = control.clone();
        let watched = dir.to_path_buf();
        let handler = move |result: notify::Result<Event>| {
            if concerns_dir(&result, &watched) {
                let _ = checks.send(Control::Check);
            }
            for event in translate(result) {
                // No receiver yet is fine: runners check the directory
                // when they subscribe.
                let _ = sender.send(event);
            }
        };
        let watch_error = |source| WatchError::Watch {
            path: dir.to_path_buf(),
            source,
        };
        let mut watcher = notify::recommended_watcher(handler).map_err(watch_error)?;
        let identity = dir_identity(dir);
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        let supervisor = Supervisor {
            dir: dir.to_path_buf(),
            watcher,
            identity,
            events: events.clone(),
            commands,
        };
        std::thread::Builder::new()
            .name("plugin-dir-watch".to_string())
            .spawn(move || supervisor.run())
            .map_err(|source| WatchError::Thread {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self { events, control })
    }

    /// Returns a receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<DirEvent> {
        self.events.subscribe()
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
    }
}

/// Owns the inotify watch and renews it when the directory is replaced.
struct Supervisor {
    dir: PathBuf,
    watcher: RecommendedWatcher,
    /// Device and inode of the watched directory.
    identity: Option<(u64, u64)>,
    events: broadcast::Sender<DirEvent>,
    commands: mpsc::Receiver<Control>,
}

impl Supervisor {
    fn run(mut self) {
        loop {
            match self.commands.recv_timeout(IDENTITY_CHECK) {
                Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Control::Check) | Err(RecvTimeoutError::Timeout) => {}
            }
            if self.identity.is_some() && dir_identity(&self.dir) == self.identity {
                continue;
            }
            if !self.rewatch() {
                return;
            }
        }
    }

    /// Drops the dead watch, waits for a directory at the path and
    /// watches it. Returns false when a stop is requested first.
    fn rewatch(&mut self) -> bool {
        let _ = self.watcher.unwatch(&self.dir);
        tracing::warn!(dir = %self.dir.display(), "device-plugin directory removed or replaced, waiting for it to return");
        let _ = self.events.send(DirEvent::Unknown);
        loop {
            let identity = dir_identity(&self.dir);
            if identity.is_some() {
                match self.watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.identity = identity;
                        tracing::info!(dir = %self.dir.display(), "watching the device-plugin directory again");
                        // Files made before the new watch sent no events.
                        let _ = self.events.send(DirEvent::Unknown);
                        return true;
                    }
                    Err(error) => {
                        tracing::debug!(dir = %self.dir.display(), %error, "device-plugin directory not watchable yet");
                    }
                }
            }
            match self.commands.recv_timeout(RETURN_POLL) {
                Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
                Ok(Control::Check) | Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// Returns device and inode of `dir` when it is a directory.
fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    let metadata = std::fs::metadata(dir).ok()?;
    metadata.is_dir().then(|| (metadata.dev(), metadata.ino()))
}

/// Reports whether an event may mean the watched directory itself went
/// away: it names the directory, or the watch reported an error.
fn concerns_dir(result: &notify::Result<Event>, dir: &Path) -> bool {
    match result {
        Ok(event) => event.need_rescan() || event.paths.iter().any(|path| path == dir),
        Err(_) => true,
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

    async fn next_named(
        events: &mut broadcast::Receiver<DirEvent>,
        name: &str,
    ) -> Option<DirEvent> {
        let wanted = DirEvent::Changed(name.into());
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match events.recv().await {
                    Ok(event) if event == wanted => return Some(event),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

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

    #[tokio::test]
    async fn watches_a_recreated_directory() {
        let parent = tempfile::tempdir().expect("temp dir");
        let dir = parent.path().join("device-plugins");
        let watcher = DirWatcher::start(&dir).expect("watch");
        let mut events = watcher.subscribe();
        std::fs::remove_dir(&dir).expect("remove dir");
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::create_dir(&dir).expect("recreate dir");
        // The new watch may start after a file made at once, so keep
        // making files until one is reported.
        let reported = tokio::time::timeout(Duration::from_secs(10), async {
            for round in 0.. {
                let name = format!("f{round}");
                std::fs::write(dir.join(&name), "").expect("file");
                let wait = tokio::time::timeout(
                    Duration::from_millis(500),
                    next_named(&mut events, &name),
                );
                if wait.await.ok().flatten().is_some() {
                    return round;
                }
            }
            unreachable!("the loop only ends by returning")
        })
        .await;
        assert!(reported.is_ok(), "no event from the recreated directory");
    }
}
