//! Counters of the registration life cycle per set, read by the metrics
//! exporter.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Registration counters of one set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetCounters {
    /// Successful Register calls.
    pub registrations: u64,
    /// Register calls that failed.
    pub registration_failures: u64,
    /// Re-registrations after the kubelet ended the ListAndWatch stream
    /// without a restart.
    pub stream_recoveries: u64,
    /// Server restarts after a kubelet restart or a removed socket.
    pub restarts: u64,
    /// Whether the set is registered with the running kubelet now.
    pub registered: bool,
}

/// Registration counters of every set served since start.
#[derive(Debug, Default)]
pub struct RegistrationStats {
    sets: Mutex<BTreeMap<String, SetCounters>>,
}

impl RegistrationStats {
    /// Returns a copy of every set's counters.
    pub fn snapshot(&self) -> BTreeMap<String, SetCounters> {
        self.lock().clone()
    }

    pub(crate) fn update(&self, set: &str, change: impl FnOnce(&mut SetCounters)) {
        let mut sets = self.lock();
        change(sets.entry(set.to_string()).or_default());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SetCounters>> {
        // A panic while holding the lock leaves plain counters, still valid.
        self.sets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
