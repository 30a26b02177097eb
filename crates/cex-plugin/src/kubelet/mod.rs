//! The kubelet side of the agent: one device-plug-in server per config
//! set, registration with the kubelet, and the watcher of the
//! device-plugin directory that notices kubelet restarts.
//!
//! Speaks the kubelet device-plugin API `v1beta1` over Unix sockets: the
//! kubelet serves `Registration` on `<dir>/kubelet.sock`, each set serves
//! `DevicePlugin` on `<dir>/cex-<set>.sock` and registers that file name
//! with the resource `cex.s390.ibm.com/<set>`.

mod backoff;
mod identity;
mod manager;
mod registration;
mod runner;
mod server;
mod service;
mod stats;
mod watcher;

use std::path::PathBuf;
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

/// Returns the socket file name of set `set`: `cex-<set>.sock`.
pub fn socket_file_name(set: &str) -> String {
    format!("cex-{set}.sock")
}
