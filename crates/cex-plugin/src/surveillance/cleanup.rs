//! Garbage collection of zcrypt nodes and shadow sysfs dirs no pod holds.
//!
//! The [`Cleaner`] keeps, per zcrypt node and per shadow dir, when it was
//! first found (created, or adopted at agent start) and when a listed pod
//! last held its device. A node or dir no listed pod holds is destroyed
//! `unused` after it was last held, or `never_used` after it was first
//! found if no pod ever held it. Only names that parse as plug-in device
//! ids are tracked, so nothing else in those dirs is ever touched.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use cex_ap::DeviceId;
use tracing::{debug, error, info, warn};

use super::findings::SurveillanceStats;

/// The kind of per-device object a name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeKind {
    /// A zcrypt device node `zcrypt-apqn-<a>-<d>-<n>`.
    ZcryptNode,
    /// A shadow sysfs dir `sysfs-apqn-<a>-<d>-<n>`.
    ShadowDir,
}

impl NodeKind {
    pub const ALL: [NodeKind; 2] = [NodeKind::ZcryptNode, NodeKind::ShadowDir];

    /// Returns the on-disk name of this kind of object for `id`.
    pub fn name_of(self, id: &DeviceId) -> String {
        match self {
            NodeKind::ZcryptNode => id.zcrypt_node_name(),
            NodeKind::ShadowDir => id.shadow_dir_name(),
        }
    }

    /// Parses the device id out of an on-disk name; `None` unless canonical.
    pub fn parse_name(self, name: &str) -> Option<DeviceId> {
        match self {
            NodeKind::ZcryptNode => DeviceId::from_zcrypt_node_name(name),
            NodeKind::ShadowDir => DeviceId::from_shadow_dir_name(name),
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeKind::ZcryptNode => f.write_str("zcrypt node"),
            NodeKind::ShadowDir => f.write_str("shadow dir"),
        }
    }
}

/// The reason a zcrypt node or shadow dir is destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No listed pod has held it for `age`.
    Unused,
    /// No listed pod held it in the `age` since it was first found.
    NeverUsed,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Unused => f.write_str("unused"),
            Reason::NeverUsed => f.write_str("never used"),
        }
    }
}

/// A node or dir whose time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub kind: NodeKind,
    pub device: DeviceId,
    pub reason: Reason,
    pub age: Duration,
}

/// Listing and destruction of the per-device objects on this node.
pub trait NodeStore {
    /// The error of a listing or a removal; it names the path.
    type Error: std::error::Error;

    /// Lists every on-disk name of this kind, parseable or not.
    fn list_names(&self, kind: NodeKind) -> Result<Vec<String>, Self::Error>;

    /// Destroys the zcrypt node or removes the shadow dir of `device`.
    fn remove(&self, kind: NodeKind, device: &DeviceId) -> Result<(), Self::Error>;
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    found: Instant,
    last_used: Option<Instant>,
    removal_failed: bool,
}

/// The timers of every tracked zcrypt node and shadow dir.
#[derive(Debug)]
pub struct Cleaner {
    unused: Duration,
    never_used: Duration,
    timers: BTreeMap<(NodeKind, DeviceId), Timer>,
    ignored: BTreeSet<(NodeKind, String)>,
    adopted: bool,
}

impl Cleaner {
    /// Creates a cleaner that destroys what was unused for `unused` after
    /// its last use, or for `never_used` after it was found.
    pub fn new(unused: Duration, never_used: Duration) -> Self {
        Cleaner {
            unused,
            never_used,
            timers: BTreeMap::new(),
            ignored: BTreeSet::new(),
            adopted: false,
        }
    }

    /// Reports whether `kind` for `device` is tracked.
    pub fn is_tracked(&self, kind: NodeKind, device: &DeviceId) -> bool {
        self.timers.contains_key(&(kind, *device))
    }

    /// Reads the store, starts a timer at `now` for each new name and drops
    /// the timers of names that vanished. The first call adopts what a
    /// previous agent left behind.
    pub fn scan<S: NodeStore>(&mut self, store: &S, now: Instant) {
        let mut adopted = BTreeMap::<NodeKind, usize>::new();
        for kind in NodeKind::ALL {
            let names = match store.list_names(kind) {
                Ok(names) => names,
                Err(err) => {
                    // Keep the timers, because a failed listing does not
                    // show what exists. Nothing of this kind is removed.
                    warn!(error = %err, "PodLister: cannot list {kind}s, keeping their timers");
                    continue;
                }
            };
            let present = self.parse_names(kind, names);
            self.timers
                .retain(|(k, device), _| *k != kind || present.contains(device));
            for device in present {
                self.timers.entry((kind, device)).or_insert_with(|| {
                    *adopted.entry(kind).or_default() += 1;
                    Timer {
                        found: now,
                        last_used: None,
                        removal_failed: false,
                    }
                });
            }
        }
        if !self.adopted {
            self.adopted = true;
            let nodes = adopted.get(&NodeKind::ZcryptNode).copied().unwrap_or(0);
            let dirs = adopted.get(&NodeKind::ShadowDir).copied().unwrap_or(0);
            info!(
                zcrypt_nodes = nodes,
                shadow_dirs = dirs,
                "PodLister: adopted {nodes} zcrypt nodes and {dirs} shadow dirs found at start"
            );
        }
    }

    fn parse_names(&mut self, kind: NodeKind, names: Vec<String>) -> BTreeSet<DeviceId> {
        let mut present = BTreeSet::new();
        for name in names {
            let prefix = match kind {
                NodeKind::ZcryptNode => "zcrypt-apqn-",
                NodeKind::ShadowDir => "sysfs-apqn-",
            };
            if !name.starts_with(prefix) {
                continue;
            }
            match kind.parse_name(&name) {
                Some(device) => {
                    present.insert(device);
                }
                None => {
                    if self.ignored.insert((kind, name.clone())) {
                        warn!("PodLister: ignoring {kind} {name:?}: not a canonical device id");
                    }
                }
            }
        }
        present
    }

    /// Marks every tracked node and dir of a device in `used` as held now.
    pub fn mark_used(&mut self, used: &BTreeSet<DeviceId>, now: Instant) {
        for ((_, device), timer) in self.timers.iter_mut() {
            if used.contains(device) {
                timer.last_used = Some(now);
            }
        }
    }

    /// Records that the agent handed `device` to a container at `at`. A
    /// node or dir found before that restarts its never-used delay from
    /// `at`, because the container may not be listed yet.
    pub fn mark_allocated(&mut self, device: &DeviceId, at: Instant) {
        for kind in NodeKind::ALL {
            if let Some(timer) = self.timers.get_mut(&(kind, *device)) {
                let since = timer.last_used.unwrap_or(timer.found);
                if at > since {
                    timer.found = at;
                    timer.last_used = None;
                }
            }
        }
    }

    /// Lists what is due for removal at `now`; nothing in `used` is due.
    pub fn expired(&self, used: &BTreeSet<DeviceId>, now: Instant) -> Vec<Expired> {
        let mut due = Vec::new();
        for (&(kind, device), timer) in &self.timers {
            if used.contains(&device) {
                continue;
            }
            let (reason, since, limit) = match timer.last_used {
                Some(last) => (Reason::Unused, last, self.unused),
                None => (Reason::NeverUsed, timer.found, self.never_used),
            };
            let age = now.saturating_duration_since(since);
            if age >= limit {
                due.push(Expired {
                    kind,
                    device,
                    reason,
                    age,
                });
            }
        }
        due
    }

    /// Removes everything due at `now` through `store` and logs each
    /// removal with its reason and age. A failed removal is retried at the
    /// next pass and logged as an error only the first time.
    ///
    /// `allocated` is called right before each removal. It returns the time
    /// of an allocation of the device that the timers do not reflect yet,
    /// which restarts the timer instead. Returns the devices whose node and
    /// dir are both gone after this call.
    pub fn collect<S: NodeStore>(
        &mut self,
        store: &S,
        used: &BTreeSet<DeviceId>,
        now: Instant,
        allocated: &dyn Fn(&DeviceId) -> Option<Instant>,
        stats: &SurveillanceStats,
    ) -> BTreeSet<DeviceId> {
        let mut gone = BTreeSet::new();
        for expired in self.expired(used, now) {
            let Expired {
                kind,
                device,
                reason,
                age,
            } = expired;
            if let Some(at) = allocated(&device) {
                self.mark_allocated(&device, at);
                continue;
            }
            let name = kind.name_of(&device);
            let verb = match kind {
                NodeKind::ZcryptNode => "destroying",
                NodeKind::ShadowDir => "removing",
            };
            let secs = age.as_secs();
            info!(device = %device, reason = %reason, age_secs = secs,
                "PodLister: {kind} {name} {reason} for {secs} s, {verb}");
            match store.remove(kind, &device) {
                Ok(()) => {
                    self.timers.remove(&(kind, device));
                    match kind {
                        NodeKind::ZcryptNode => stats.count_zcrypt_node_destroyed(),
                        NodeKind::ShadowDir => stats.count_shadow_dir_removed(),
                    }
                    if NodeKind::ALL
                        .iter()
                        .all(|kind| !self.is_tracked(*kind, &device))
                    {
                        gone.insert(device);
                    }
                }
                Err(err) => self.log_removal_failure(kind, &device, &err),
            }
        }
        gone
    }

    fn log_removal_failure(&mut self, kind: NodeKind, device: &DeviceId, err: &dyn fmt::Display) {
        let Some(timer) = self.timers.get_mut(&(kind, *device)) else {
            return;
        };
        if timer.removal_failed {
            debug!(device = %device, error = %err, "PodLister: {kind} removal failed again");
        } else {
            error!(device = %device, error = %err,
                "PodLister: failed to remove {kind} {}, retrying at the next pass",
                kind.name_of(device));
            timer.removal_failed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct MemoryStore {
        names: RefCell<BTreeMap<NodeKind, Vec<String>>>,
        removed: RefCell<Vec<(NodeKind, DeviceId)>>,
        fail_removal: bool,
    }

    impl MemoryStore {
        fn with(nodes: &[&str], dirs: &[&str]) -> Self {
            let store = MemoryStore::default();
            let to_vec = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
            store
                .names
                .borrow_mut()
                .insert(NodeKind::ZcryptNode, to_vec(nodes));
            store
                .names
                .borrow_mut()
                .insert(NodeKind::ShadowDir, to_vec(dirs));
            store
        }
    }

    impl NodeStore for MemoryStore {
        type Error = std::io::Error;

        fn list_names(&self, kind: NodeKind) -> Result<Vec<String>, Self::Error> {
            Ok(self.names.borrow().get(&kind).cloned().unwrap_or_default())
        }

        fn remove(&self, kind: NodeKind, device: &DeviceId) -> Result<(), Self::Error> {
            if self.fail_removal {
                return Err(std::io::Error::other("device busy"));
            }
            let name = kind.name_of(device);
            if let Some(names) = self.names.borrow_mut().get_mut(&kind) {
                names.retain(|n| *n != name);
            }
            self.removed.borrow_mut().push((kind, *device));
            Ok(())
        }
    }

    fn id(text: &str) -> DeviceId {
        text.parse().expect("test id is canonical")
    }

    const UNUSED: Duration = Duration::from_secs(120);
    const NEVER: Duration = Duration::from_secs(1800);

    #[test]
    fn never_used_node_removed_after_limit() {
        let store = MemoryStore::with(&["zcrypt-apqn-1-5-0"], &["sysfs-apqn-1-5-0"]);
        let stats = SurveillanceStats::default();
        let mut cleaner = Cleaner::new(UNUSED, NEVER);
        let start = Instant::now();
        cleaner.scan(&store, start);
        let none = BTreeSet::new();

        cleaner.collect(
            &store,
            &none,
            start + NEVER - Duration::from_secs(1),
            &|_| None,
            &stats,
        );
        assert!(store.removed.borrow().is_empty());

        let due = cleaner.expired(&none, start + NEVER);
        assert_eq!(due.len(), 2);
        assert!(due.iter().all(|e| e.reason == Reason::NeverUsed));
        cleaner.collect(&store, &none, start + NEVER, &|_| None, &stats);
        assert_eq!(store.removed.borrow().len(), 2);
        assert_eq!(stats.snapshot().zcrypt_nodes_destroyed_total, 1);
        assert_eq!(stats.snapshot().shadow_dirs_removed_total, 1);
        assert!(!cleaner.is_tracked(NodeKind::ZcryptNode, &id("apqn-1-5-0")));
    }

    #[test]
    fn unused_timer_starts_at_last_use() {
        let store = MemoryStore::with(&["zcrypt-apqn-1-5-0"], &[]);
        let stats = SurveillanceStats::default();
        let mut cleaner = Cleaner::new(UNUSED, NEVER);
        let start = Instant::now();
        cleaner.scan(&store, start);
        let used = BTreeSet::from([id("apqn-1-5-0")]);
        let last_use = start + Duration::from_secs(600);
        cleaner.mark_used(&used, last_use);

        let none = BTreeSet::new();
        cleaner.collect(
            &store,
            &none,
            last_use + UNUSED - Duration::from_secs(1),
            &|_| None,
            &stats,
        );
        assert!(store.removed.borrow().is_empty());
        let due = cleaner.expired(&none, last_use + UNUSED);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].reason, Reason::Unused);
        assert_eq!(due[0].age, UNUSED);
    }

    #[test]
    fn held_device_never_expires() {
        let store = MemoryStore::with(&["zcrypt-apqn-1-5-0"], &["sysfs-apqn-1-5-0"]);
        let stats = SurveillanceStats::default();
        let mut cleaner = Cleaner::new(UNUSED, NEVER);
        let start = Instant::now();
        cleaner.scan(&store, start);
        let used = BTreeSet::from([id("apqn-1-5-0")]);
        let later = start + NEVER * 10;
        assert!(cleaner.expired(&used, later).is_empty());
        cleaner.collect(&store, &used, later, &|_| None, &stats);
        assert!(store.removed.borrow().is_empty());
    }

    #[test]
    fn non_canonical_names_are_ignored() {
        let nodes = [
            "zcrypt-apqn-01-5-0",
            "zcrypt-apqn-1-5",
            "z90crypt",
            "zcrypt-apqn-1-5-0x",
        ];
        let store = MemoryStore::with(&nodes, &["sysfs-apqn-..-5-0", "lost+found"]);
        let stats = SurveillanceStats::default();
        let mut cleaner = Cleaner::new(UNUSED, NEVER);
        let start = Instant::now();
        cleaner.scan(&store, start);
        cleaner.collect(
            &store,
            &BTreeSet::new(),
            start + NEVER * 10,
            &|_| None,
            &stats,
        );
        assert!(store.removed.borrow().is_empty());
    }

    #[test]
    fn vanished_node_is_forgotten() {
        let store = MemoryStore::with(&["zcrypt-apqn-1-5-0"], &[]);
        let mut cleaner = Cleaner::new(UNUSED, NEVER);
        let start = Instant::now();
        cleaner.scan(&store, start);
        assert!(cleaner.is_tracked(NodeKind::ZcryptNode, &id("apqn-1-5-0")));
        store
            .names
            .borrow_mut()
            .insert(NodeKind::ZcryptNode, vec![]);
        cleaner.scan(&store, start);
        assert!(!cleaner.is_tracked(NodeKind::ZcryptNode, &id("apqn-1-5-0")));
    }

    #[test]
    fn node_recreated_later_gets_a_fresh_timer() {
        let store = MemoryStore::with(&[], &[]);
        let mut cleaner = Cleaner::new(UNUSED, NEVER);
        let start = Instant::now();
        cleaner.scan(&store, start);
        store
            .names
            .borrow_mut()
            .insert(NodeKind::ZcryptNode, vec!["zcrypt-apqn-2-5-0".into()]);
        let created = start + NEVER;
        cleaner.scan(&store, created);
        assert!(cleaner
            .expired(&BTreeSet::new(), created + NEVER / 2)
            .is_empty());
        assert_eq!(cleaner.expired(&BTreeSet::new(), created + NEVER).len(), 1);
    }

    #[test]
    fn new_allocation_restarts_timer() {
        let store = MemoryStore::with(&["zcrypt-apqn-1-5-0"], &[]);
        let stats = SurveillanceStats::default();
        let mut cleaner = Cleaner::new(UNUSED, NEVER);
        let start = Instant::now();
        cleaner.scan(&store, start);
        let used = BTreeSet::from([id("apqn-1-5-0")]);
        cleaner.mark_used(&used, start);

        // Allocated again after the last use, but right before the removal.
        let now = start + UNUSED;
        let allocated = now - Duration::from_secs(1);
        let gone = cleaner.collect(&store, &BTreeSet::new(), now, &|_| Some(allocated), &stats);
        assert!(gone.is_empty());
        assert!(store.removed.borrow().is_empty());
        assert!(cleaner
            .expired(&BTreeSet::new(), allocated + NEVER / 2)
            .is_empty());

        let due = cleaner.expired(&BTreeSet::new(), allocated + NEVER);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].reason, Reason::NeverUsed);
    }

    #[test]
    fn failed_removal_keeps_the_timer() {
        let mut store = MemoryStore::with(&["zcrypt-apqn-1-5-0"], &[]);
        store.fail_removal = true;
        let stats = SurveillanceStats::default();
        let mut cleaner = Cleaner::new(UNUSED, NEVER);
        let start = Instant::now();
        cleaner.scan(&store, start);
        cleaner.collect(&store, &BTreeSet::new(), start + NEVER, &|_| None, &stats);
        assert!(cleaner.is_tracked(NodeKind::ZcryptNode, &id("apqn-1-5-0")));
        assert_eq!(stats.snapshot().zcrypt_nodes_destroyed_total, 0);
    }
}
