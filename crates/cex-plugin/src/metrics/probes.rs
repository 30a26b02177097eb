//! Liveness (`/healthz`) and readiness (`/readyz`) of the agent.
//!
//! Live: every long-running task of the agent still runs. The AP bus
//! rescan, the config re-read, the planner and the pod lister each own
//! the sending side of a `watch` channel, so a task that ended shows as a
//! closed channel. The plug-in manager is wrapped by [`Liveness::track`].
//!
//! Ready: every set the agent serves is registered with the running
//! kubelet, so pods asking for its resource can be admitted.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use crate::agent::{AgentHandles, Snapshots};
use crate::kubelet::RegistrationStats;

/// Reports whether one task still runs.
type TaskCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// The liveness of the agent's tasks. Clones share the same checks, so
/// tasks started after the listener can still be added.
#[derive(Clone, Default)]
pub struct Liveness {
    checks: Arc<Mutex<Vec<(&'static str, TaskCheck)>>>,
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let checks = self.lock();
        let names: Vec<&str> = checks.iter().map(|(name, _)| *name).collect();
        f.debug_struct("Liveness").field("tasks", &names).finish()
    }
}

impl Liveness {
    /// Watches the tasks behind the agent's state channels: the AP bus
    /// rescan, the config re-read and the device planner.
    pub fn new(handles: &AgentHandles) -> Self {
        let liveness = Liveness::default();
        liveness.watch_channel("AP bus rescan", handles.inventory.clone());
        liveness.watch_channel("config re-read", handles.config.clone());
        liveness.watch_channel("device planner", handles.snapshots.clone());
        liveness
    }

    /// Watches the task that owns the sending side of `receiver`: it is
    /// live while the channel is open.
    pub fn watch_channel<T: Send + Sync + 'static>(
        &self,
        name: &'static str,
        receiver: watch::Receiver<T>,
    ) {
        let check = move || receiver.has_changed().is_ok();
        self.lock().push((name, Box::new(check)));
    }

    /// Wraps `task` so that its end shows as not live.
    pub fn track<F>(&self, name: &'static str, task: F) -> impl Future<Output = F::Output>
    where
        F: Future,
    {
        let running = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&running);
        self.lock()
            .push((name, Box::new(move || flag.load(Ordering::Relaxed))));
        async move {
            let output = task.await;
            running.store(false, Ordering::Relaxed);
            output
        }
    }

    /// Returns the names of the tasks that have ended.
    pub fn stopped(&self) -> Vec<&'static str> {
        self.lock()
            .iter()
            .filter(|(_, running)| !running())
            .map(|(name, _)| *name)
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(&'static str, TaskCheck)>> {
        self.checks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The readiness of the agent: every served set registered.
#[derive(Debug, Clone)]
pub struct Readiness {
    snapshots: watch::Receiver<Arc<Snapshots>>,
    stats: Arc<RegistrationStats>,
}

impl Readiness {
    pub fn new(handles: &AgentHandles) -> Self {
        Readiness {
            snapshots: handles.snapshots.clone(),
            stats: Arc::clone(&handles.stats),
        }
    }

    /// Returns the served sets not registered with the running kubelet.
    pub fn unregistered(&self) -> Vec<String> {
        let stats = self.stats.snapshot();
        self.snapshots
            .borrow()
            .keys()
            .filter(|set| !stats.get(*set).is_some_and(|counters| counters.registered))
            .cloned()
            .collect()
    }
}

/// Both probes, as the HTTP listener serves them.
#[derive(Debug)]
pub struct Probes {
    pub liveness: Liveness,
    pub readiness: Readiness,
}

impl Probes {
    /// Returns the `/healthz` status and body.
    pub(super) fn health(&self) -> (bool, String) {
        let stopped = self.liveness.stopped();
        if stopped.is_empty() {
            (true, "ok\n".to_string())
        } else {
            (false, format!("stopped tasks: {}\n", stopped.join(", ")))
        }
    }

    /// Returns the `/readyz` status and body.
    pub(super) fn ready(&self) -> (bool, String) {
        let unregistered = self.readiness.unregistered();
        if unregistered.is_empty() {
            (true, "ok\n".to_string())
        } else {
            let names = unregistered.join(", ");
            (
                false,
                format!("sets not registered with the kubelet: {names}\n"),
            )
        }
    }
}
