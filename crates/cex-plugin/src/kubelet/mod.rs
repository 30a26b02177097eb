//! The kubelet side of the agent: one device-plug-in server per config
//! set, registration with the kubelet, and the watcher of the
//! device-plugin directory that notices kubelet restarts.
//!
//! Speaks the kubelet device-plugin API `v1beta1` over Unix sockets. The
//! kubelet serves `Registration` on `<dir>/kubelet.sock`. Each set serves
//! `DevicePlugin` on `<dir>/cex-<set>.sock` and registers that file name
//! with the resource `cex.s390.ibm.com/<set>`. The name is shortened when
//! the path would not fit a Unix socket address (see [`socket_file_name`]).

mod backoff;
mod identity;
mod manager;
mod registration;
mod runner;
mod server;
mod service;
mod stats;
mod watcher;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::agent::Snapshots;
use crate::allocate::Allocator;
use crate::metrics::Metrics;

pub use manager::run_plugin_manager;
pub use stats::{RegistrationStats, SetCounters};
pub use watcher::{DirEvent, DirWatcher, WatchError};

/// State shared by every set's server and runner.
#[derive(Clone)]
pub struct PluginContext {
    /// The kubelet device-plugin directory.
    pub dir: PathBuf,
    /// The current snapshot of every set, looked up at call time.
    pub snapshots: watch::Receiver<Arc<Snapshots>>,
    pub allocator: Arc<Allocator>,
    pub stats: Arc<RegistrationStats>,
    /// Allocate requests, latency and errors per set.
    pub metrics: Metrics,
}

/// The longest path a Unix socket address holds: `sun_path` has 108
/// bytes, one of them the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Returns the socket file name of set `set` in the device-plugin
/// directory `dir`. The name is `cex-<set>.sock` when `<dir>/cex-<set>.sock`
/// fits in [`MAX_SOCKET_PATH`] bytes. Otherwise it is
/// `cex-<prefix>-<hash>.sock`, with as much of the set name as fits and 16
/// hex digits of a stable hash (FNV-1a) of the whole name, so that each set
/// keeps its own socket.
///
/// Everything that needs the socket of a set calls this function.
pub fn socket_file_name(dir: &Path, set: &str) -> String {
    let readable = format!("cex-{set}.sock");
    let room = MAX_SOCKET_PATH.saturating_sub(dir.as_os_str().len() + 1);
    if readable.len() <= room {
        return readable;
    }
    let hash = format!("{:016x}", fnv1a(set.as_bytes()));
    let fixed = "cex-".len() + "-".len() + hash.len() + ".sock".len();
    let mut keep = room.saturating_sub(fixed).min(set.len());
    while !set.is_char_boundary(keep) {
        keep -= 1;
    }
    match &set[..keep] {
        "" => format!("cex-{hash}.sock"),
        prefix => format!("cex-{prefix}-{hash}.sock"),
    }
}

/// The 64-bit FNV-1a hash, fixed by its definition (unlike the standard
/// library's hasher), so socket names stay the same across builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The device-plugin directory of MicroK8s, 56 bytes long.
    const MICROK8S_DIR: &str = "/var/snap/microk8s/common/var/lib/kubelet/device-plugins";

    #[test]
    fn short_paths_keep_the_readable_name() {
        let dir = Path::new("/var/lib/kubelet/device-plugins");
        assert_eq!(socket_file_name(dir, "blue"), "cex-blue.sock");
        let longest = "a".repeat(63);
        assert_eq!(
            socket_file_name(dir, &longest),
            format!("cex-{longest}.sock")
        );
    }

    #[test]
    fn long_paths_get_short_unique_stable_names() {
        let dir = Path::new(MICROK8S_DIR);
        assert_eq!(dir.as_os_str().len(), 56);
        let first = format!("{}1", "a".repeat(62));
        let second = format!("{}2", "a".repeat(62));
        let names = [
            socket_file_name(dir, &first),
            socket_file_name(dir, &second),
        ];
        for name in &names {
            assert!(
                dir.join(name).as_os_str().len() <= MAX_SOCKET_PATH,
                "{name}"
            );
            assert!(
                name.starts_with("cex-aaaa") && name.ends_with(".sock"),
                "{name}"
            );
        }
        assert_ne!(names[0], names[1]);
        assert_eq!(socket_file_name(dir, &first), names[0]);
        assert_eq!(
            names[0],
            format!(
                "cex-{}-{:016x}.sock",
                "a".repeat(24),
                fnv1a(first.as_bytes())
            )
        );
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_full_path_still_gives_a_name() {
        let dir = PathBuf::from(format!("/{}", "d".repeat(100)));
        let name = socket_file_name(&dir, "blue");
        assert_eq!(name, format!("cex-{:016x}.sock", fnv1a(b"blue")));
    }
}
