//! The fake kernel of a simulated node: it serves the zcrypt multiple
//! device node interface on plain files.
//!
//! A name written to `sys/class/zcrypt/create` makes, as the zcrypt driver
//! and udev would, `sys/devices/virtual/zcrypt/<name>/` with `apmask`,
//! `aqmask`, `admask` and `ioctlmask` all zero, `dev` (`241:<minor>`), the
//! class symlink `sys/class/zcrypt/<name>` and the device file
//! `dev/<name>`. A name written to `destroy` removes them. The kernel's
//! rules apply: surrounding whitespace is dropped, at most 31 characters
//! are kept, an empty name makes `zcrypt_<minor>`, and there are 256
//! minors. A plain file cannot fail the writer's `write()`, so rejected
//! requests are reported as `tracing` warnings and in the returned events.
//! A writer confirms success by looking for the node.
//!
//! The kernel reacts to inotify events on the class directory, with a
//! 20 ms poll as a fallback, so node creation is not delayed by polling.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::Watcher;

/// The major number shown in `dev` files.
pub const ZCRYPT_MAJOR: u32 = 241;
/// The kernel's limit of extra zcrypt nodes (`ZCRYPT_MAX_MINOR_NODES`).
pub const MAX_MINORS: u32 = 256;
/// The kernel keeps at most this many characters of a node name.
pub const MAX_NAME_LEN: usize = 31;
/// How often the background thread looks at the control files when no
/// inotify event arrives.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

const ZERO_MASK: &str = "0x0000000000000000000000000000000000000000000000000000000000000000\n";

/// A failure of the fake kernel itself (not a rejected request).
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The root has no zcrypt class directory.
    #[error("{path} is missing: the simulated node has no zcrypt multi-node support")]
    NoZcryptClass { path: PathBuf },
    /// A file system operation failed.
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The background thread could not be started.
    #[error("failed to start the fake kernel thread: {source}")]
    Spawn {
        #[source]
        source: io::Error,
    },
}

type Result<T, E = KernelError> = std::result::Result<T, E>;

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> KernelError + 'a {
    move |source| KernelError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The reason a request was rejected. The kernel would fail the write
/// with the errno named in each variant's doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// EEXIST: a node of that name exists.
    Exists,
    /// ENOENT: `destroy` named no existing node.
    NotFound,
    /// ENOSPC: all 256 minors are in use.
    NoFreeMinor,
    /// EINVAL: the name cannot be a device name.
    InvalidName,
    /// A fault injected by `fail_next_create`.
    Injected,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rejection::Exists => "name exists (EEXIST)",
            Rejection::NotFound => "no such node (ENOENT)",
            Rejection::NoFreeMinor => "no free minor (ENOSPC)",
            Rejection::InvalidName => "name not usable (EINVAL)",
            Rejection::Injected => "injected failure",
        })
    }
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Created { name: String, minor: u32 },
    Destroyed { name: String },
    CreateRejected { name: String, reason: Rejection },
    DestroyRejected { name: String, reason: Rejection },
}

/// The fake kernel of one root. Clones share state, so a test can inject
/// faults while a clone runs in the background.
#[derive(Debug, Clone)]
pub struct FakeKernel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    class_dir: PathBuf,
    nodes_dir: PathBuf,
    dev_dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failing_creates: u32,
    dev_node_delay: Option<Duration>,
    /// `/dev` files still to make: (when, name).
    delayed_dev_nodes: Vec<(Instant, String)>,
}

impl FakeKernel {
    /// A fake kernel for the node laid out at `root`.
    pub fn new(root: &Path) -> Result<Self> {
        let class_dir = root.join("sys/class/zcrypt");
        if !class_dir.join("create").is_file() {
            return Err(KernelError::NoZcryptClass {
                path: class_dir.join("create"),
            });
        }
        let nodes_dir = root.join("sys/devices/virtual/zcrypt");
        let dev_dir = root.join("dev");
        fs::create_dir_all(&nodes_dir).map_err(io_error("create directory", &nodes_dir))?;
        fs::create_dir_all(&dev_dir).map_err(io_error("create directory", &dev_dir))?;
        let inner = Inner {
            class_dir,
            nodes_dir,
            dev_dir,
            state: Mutex::default(),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counters behind, which
        // stay usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the next create request fail: its node never appears.
    pub fn fail_next_create(&self) {
        self.state().failing_creates += 1;
    }

    /// Delays `/dev/<name>` of every following create by `delay`, as a
    /// slow udev would; `None` makes device files appear at once again.
    pub fn set_dev_node_delay(&self, delay: Option<Duration>) {
        self.state().dev_node_delay = delay;
    }

    /// Handles the names pending in `create` and `destroy`, makes the
    /// delayed device files that are due, and truncates the control files.
    ///
    /// A name written between the read and the truncation of the same
    /// file is lost, as with any plain file. Writers avoid that by
    /// serialising their writes and waiting for each node.
    pub fn handle_pending_once(&self) -> Result<Vec<KernelEvent>> {
        let mut state = self.state();
        let mut events = Vec::new();
        if let Some(data) = take(&self.inner.class_dir.join("create"))? {
            let mut minors = self.used_minors();
            for name in request_names(&data) {
                events.push(self.create(&mut state, &mut minors, name)?);
            }
        }
        if let Some(data) = take(&self.inner.class_dir.join("destroy"))? {
            for name in request_names(&data) {
                events.push(self.destroy(&mut state, name)?);
            }
        }
        self.make_due_dev_nodes(&mut state)?;
        Ok(events)
    }

    /// The time until the next delayed device file is due, if any.
    fn next_due(&self) -> Option<Duration> {
        let state = self.state();
        let now = Instant::now();
        state
            .delayed_dev_nodes
            .iter()
            .map(|(due, _)| due.saturating_duration_since(now))
            .min()
    }

    fn used_minors(&self) -> BTreeSet<u32> {
        let Ok(entries) = fs::read_dir(&self.inner.nodes_dir) else {
            return BTreeSet::new();
        };
        entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| fs::read_to_string(entry.path().join("dev")).ok())
            .filter_map(|dev| dev.trim().split_once(':')?.1.parse().ok())
            .collect()
    }

    fn create(
        &self,
        state: &mut State,
        minors: &mut BTreeSet<u32>,
        name: String,
    ) -> Result<KernelEvent> {
        let reject = |name: String, reason| {
            tracing::warn!(name = %name, %reason, "fake kernel rejected zcrypt node create");
            Ok(KernelEvent::CreateRejected { name, reason })
        };
        if state.failing_creates > 0 {
            state.failing_creates -= 1;
            return reject(name, Rejection::Injected);
        }
        if !name.is_empty() && self.inner.nodes_dir.join(&name).exists() {
            return reject(name, Rejection::Exists);
        }
        let Some(minor) = (0..MAX_MINORS).find(|minor| !minors.contains(minor)) else {
            return reject(name, Rejection::NoFreeMinor);
        };
        let name = if name.is_empty() {
            format!("zcrypt_{minor}")
        } else {
            name
        };
        if !is_usable_name(&name) {
            return reject(name, Rejection::InvalidName);
        }
        if self.inner.nodes_dir.join(&name).exists() {
            return reject(name, Rejection::Exists);
        }
        self.make_node_dir(&name, minor)?;
        let link = self.inner.class_dir.join(&name);
        let target = format!("../../devices/virtual/zcrypt/{name}");
        std::os::unix::fs::symlink(target, &link).map_err(io_error("create symlink", &link))?;
        match state.dev_node_delay {
            Some(delay) => state
                .delayed_dev_nodes
                .push((Instant::now() + delay, name.clone())),
            None => self.make_dev_node(&name)?,
        }
        minors.insert(minor);
        tracing::debug!(name = %name, minor, "fake kernel created zcrypt node");
        Ok(KernelEvent::Created { name, minor })
    }

    /// Builds the node directory under a hidden name and renames it into
    /// place, so it is complete when it becomes visible.
    fn make_node_dir(&self, name: &str, minor: u32) -> Result<()> {
        let staging = self.inner.nodes_dir.join(format!(".new-{name}"));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_error("remove", &staging))?;
        }
        let power = staging.join("power");
        fs::create_dir_all(&power).map_err(io_error("create directory", &power))?;
        let files = [
            ("apmask", ZERO_MASK.to_string()),
            ("aqmask", ZERO_MASK.to_string()),
            ("admask", ZERO_MASK.to_string()),
            ("ioctlmask", ZERO_MASK.to_string()),
            ("dev", format!("{ZCRYPT_MAJOR}:{minor}\n")),
            (
                "uevent",
                format!("MAJOR={ZCRYPT_MAJOR}\nMINOR={minor}\nDEVNAME={name}\n"),
            ),
        ];
        for (file, content) in files {
            let path = staging.join(file);
            fs::write(&path, content).map_err(io_error("write", &path))?;
        }
        let subsystem = staging.join("subsystem");
        std::os::unix::fs::symlink("../../../../class/zcrypt", &subsystem)
            .map_err(io_error("create symlink", &subsystem))?;
        let node_dir = self.inner.nodes_dir.join(name);
        fs::rename(&staging, &node_dir).map_err(io_error("rename", &staging))
    }

    fn make_dev_node(&self, name: &str) -> Result<()> {
        let path = self.inner.dev_dir.join(name);
        fs::write(&path, "").map_err(io_error("write", &path))
    }

    fn make_due_dev_nodes(&self, state: &mut State) -> Result<()> {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = state
            .delayed_dev_nodes
            .drain(..)
            .partition(|(when, _)| *when <= now);
        state.delayed_dev_nodes = waiting;
        for (_, name) in due {
            // A node destroyed while its device file was pending gets none.
            if self.inner.nodes_dir.join(&name).is_dir() {
                self.make_dev_node(&name)?;
            }
        }
        Ok(())
    }

    fn destroy(&self, state: &mut State, name: String) -> Result<KernelEvent> {
        let node_dir = self.inner.nodes_dir.join(&name);
        if name.is_empty() || !is_usable_name(&name) || !node_dir.is_dir() {
            let reason = Rejection::NotFound;
            tracing::warn!(name = %name, %reason, "fake kernel rejected zcrypt node destroy");
            return Ok(KernelEvent::DestroyRejected { name, reason });
        }
        state
            .delayed_dev_nodes
            .retain(|(_, pending)| *pending != name);
        remove_if_present(&self.inner.class_dir.join(&name))?;
        remove_if_present(&self.inner.dev_dir.join(&name))?;
        fs::remove_dir_all(&node_dir).map_err(io_error("remove", &node_dir))?;
        tracing::debug!(name = %name, "fake kernel destroyed zcrypt node");
        Ok(KernelEvent::Destroyed { name })
    }

    /// Runs the fake kernel on a background thread until the returned
    /// handle is stopped or dropped.
    pub fn start(&self) -> Result<RunningKernel> {
        let (wake, events) = mpsc::channel::<()>();
        let watcher_wake = wake.clone();
        let watcher = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
            let _ = watcher_wake.send(());
        })
        .and_then(|mut watcher| {
            watcher.watch(&self.inner.class_dir, notify::RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::warn!(%error, "fake kernel cannot watch the zcrypt class, polling only");
                None
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let kernel = self.clone();
        let thread_stop = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("fake-kernel".to_string())
            .spawn(move || kernel.run(&events, &thread_stop))
            .map_err(|source| KernelError::Spawn { source })?;
        Ok(RunningKernel {
            stop,
            wake,
            thread: Some(thread),
            _watcher: watcher,
        })
    }

    fn run(&self, events: &mpsc::Receiver<()>, stop: &AtomicBool) {
        tracing::info!(class_dir = %self.inner.class_dir.display(), "fake kernel started");
        while !stop.load(Ordering::Acquire) {
            let timeout = self
                .next_due()
                .map_or(POLL_INTERVAL, |due| due.min(POLL_INTERVAL));
            let _ = events.recv_timeout(timeout);
            while events.try_recv().is_ok() {}
            if let Err(error) = self.handle_pending_once() {
                tracing::error!(%error, "fake kernel failed to handle a zcrypt request");
            }
        }
        tracing::info!("fake kernel stopped");
    }
}

/// A fake kernel running on a background thread.
pub struct RunningKernel {
    stop: Arc<AtomicBool>,
    wake: mpsc::Sender<()>,
    thread: Option<JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl RunningKernel {
    /// Stops the thread after its current pass and waits for it.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.wake.send(());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("fake kernel thread panicked");
            }
        }
    }
}

impl Drop for RunningKernel {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Reads a control file and truncates it; `None` when it is empty.
fn take(path: &Path) -> Result<Option<String>> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(KernelError::Io {
                action: "open",
                path: path.into(),
                source,
            })
        }
    };
    let mut data = Vec::new();
    file.read_to_end(&mut data)
        .map_err(io_error("read", path))?;
    if data.is_empty() {
        return Ok(None);
    }
    file.set_len(0).map_err(io_error("truncate", path))?;
    Ok(Some(String::from_utf8_lossy(&data).into_owned()))
}

/// Splits pending control file data into requested names. One write
/// carries one name, so several lines mean several writes landed before this
/// pass. Each name is trimmed and cut to 31 characters, as the kernel
/// does, and a write of only whitespace is the empty name.
fn request_names(data: &str) -> Vec<String> {
    let body = data.strip_suffix('\n').unwrap_or(data);
    body.split('\n')
        .map(|line| line.trim().chars().take(MAX_NAME_LEN).collect())
        .collect()
}

/// Names that can be a device file name: no path separators, no `.` or
/// `..`, only characters udev keeps unchanged.
fn is_usable_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:+-".contains(c))
}

fn remove_if_present(path: &Path) -> Result<()> {
    crate::layout::remove_file_if_present(path).map_err(io_error("remove", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_names_trim_and_cut() {
        assert_eq!(request_names("a\n"), vec!["a"]);
        assert_eq!(request_names("a"), vec!["a"]);
        assert_eq!(request_names("\n"), vec![""]);
        assert_eq!(request_names("  b  \nc\n"), vec!["b", "c"]);
        let long = "x".repeat(40);
        assert_eq!(request_names(&long), vec!["x".repeat(31)]);
    }

    #[test]
    fn unusable_names_are_detected() {
        for name in ["", ".", "..", "a/b", "a b", "../x"] {
            assert!(!is_usable_name(name), "{name:?}");
        }
        assert!(is_usable_name("zcrypt-apqn-1-5-0"));
    }
}
