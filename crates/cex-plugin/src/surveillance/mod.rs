//! Pod surveillance: which pods hold which CEX devices, according to the
//! kubelet pod-resources API (`v1.PodResourcesLister/List`), and what that
//! implies.
//!
//! Every poll interval the [`PodLister`] task
//! * scans the zcrypt nodes and shadow dirs on disk and starts a timer for
//!   each new one (at the first pass: adoption of what a previous agent
//!   left behind),
//! * calls `List` with a per-call timeout,
//! * logs containers whose namespace differs from the project of their
//!   device's set, and containers holding a device whose APQN is not
//!   usable,
//! * destroys the zcrypt nodes and shadow dirs no listed pod holds once
//!   their timer is up ([`cleanup`]).
//!
//! Without a successful `List` in the same pass nothing is destroyed, so a
//! kubelet that is down or slow can delay cleanup but never cause it. The
//! task runs on its own, so such a kubelet never blocks the rest of the
//! agent.

pub mod cleanup;
pub mod findings;
pub mod lister;
pub mod pods;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cex_ap::{Apqn, DeviceId, Inventory};
use cex_config::CryptoConfig;
use cex_node::{NodePaths, ZcryptNodes};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument};

use crate::settings::Settings;

pub use cleanup::{Cleaner, NodeKind, NodeStore};
pub use findings::{Findings, SetIndex, StatsSnapshot, SurveillanceStats};
pub use lister::{KubeletPodSource, ListError, OutageLog, PodSource};
pub use pods::{Holder, PodUsage};
pub use store::{FsNodeStore, StoreError};

/// The default maximum duration of one pod-resources call.
pub const DEFAULT_LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// Timing and identity the pod lister runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodListerSettings {
    /// `PODLISTER_POLL_INTERVAL`: time between two successful passes.
    pub poll_interval: Duration,
    /// Bound on one `List` call, connecting included.
    pub list_timeout: Duration,
    /// `RESOURCE_DELETE_UNUSED`: removal delay after the last use.
    pub delete_unused: Duration,
    /// `RESOURCE_DELETE_NEVER_USED`: removal delay after creation or
    /// adoption when never used.
    pub delete_never_used: Duration,
    /// This machine's id, to pick the APQN entries of the config that apply.
    pub machine_id: String,
}

impl PodListerSettings {
    /// Settings with the list timeout derived from the poll interval: the
    /// interval itself, capped at [`DEFAULT_LIST_TIMEOUT`].
    pub fn new(
        poll_interval: Duration,
        delete_unused: Duration,
        delete_never_used: Duration,
        machine_id: String,
    ) -> Self {
        PodListerSettings {
            poll_interval,
            list_timeout: poll_interval.clamp(Duration::from_secs(1), DEFAULT_LIST_TIMEOUT),
            delete_unused,
            delete_never_used,
            machine_id,
        }
    }
}

/// The current crypto configuration as the agent publishes it; `None`
/// while the agent runs without a valid configuration.
pub trait ConfigView {
    fn crypto_config(&self) -> Option<&CryptoConfig>;
}

impl ConfigView for CryptoConfig {
    fn crypto_config(&self) -> Option<&CryptoConfig> {
        Some(self)
    }
}

impl<T: ConfigView> ConfigView for Option<T> {
    fn crypto_config(&self) -> Option<&CryptoConfig> {
        self.as_ref().and_then(ConfigView::crypto_config)
    }
}

impl<T: ConfigView> ConfigView for Arc<T> {
    fn crypto_config(&self) -> Option<&CryptoConfig> {
        self.as_ref().crypto_config()
    }
}

/// The last AP bus scan as the agent publishes it; `None` before the
/// first scan.
pub trait InventoryView {
    fn inventory(&self) -> Option<&Inventory>;
}

impl InventoryView for Inventory {
    fn inventory(&self) -> Option<&Inventory> {
        Some(self)
    }
}

impl<T: InventoryView> InventoryView for Option<T> {
    fn inventory(&self) -> Option<&Inventory> {
        self.as_ref().and_then(InventoryView::inventory)
    }
}

impl<T: InventoryView> InventoryView for Arc<T> {
    fn inventory(&self) -> Option<&Inventory> {
        self.as_ref().inventory()
    }
}

impl<C> PodLister<KubeletPodSource, FsNodeStore, C>
where
    C: ConfigView + Send + Sync,
{
    /// Creates the agent's pod lister from its settings: the kubelet's
    /// pod-resources socket, the host's zcrypt and shadow sysfs paths.
    pub fn from_settings(
        settings: &Settings,
        machine_id: String,
        config: watch::Receiver<C>,
    ) -> Self {
        let paths = NodePaths {
            ap_bus_dir: settings.paths.ap_bus_dir.clone(),
            ap_devs_dir: settings.paths.ap_devices_dir.clone(),
            zcrypt_class_dir: settings.paths.zcrypt_class_dir.clone(),
            zcrypt_nodes_dir: settings.paths.zcrypt_nodes_dir.clone(),
            dev_dir: settings.paths.dev_dir.clone(),
            shadow_base: settings.paths.shadow_base_dir.clone(),
        };
        let lister_settings = PodListerSettings::new(
            settings.podlister_poll_interval,
            settings.resource_delete_unused,
            settings.resource_delete_never_used,
            machine_id,
        );
        let socket = settings.paths.pod_resources_socket.clone();
        let source = KubeletPodSource::new(socket, lister_settings.list_timeout);
        let zcrypt = ZcryptNodes::new(&paths, cex_node::zcrypt::DEFAULT_CREATE_TIMEOUT);
        let store = FsNodeStore::new(&paths, zcrypt);
        PodLister::new(lister_settings, source, store, config)
    }
}

/// The allocations this agent process made, as cleanup needs them.
pub trait AllocationLog: Send + Sync {
    /// Returns the time of the latest allocation of each device.
    fn allocated_at(&self) -> BTreeMap<DeviceId, SystemTime>;

    /// Drops the record of `device` once its node and dir are gone.
    fn forget(&self, device: &DeviceId);

    /// Returns the lock that allocations hold shared while they set up
    /// nodes; cleanup holds it exclusively while it removes any.
    fn setup_lock(&self) -> Option<crate::allocate::SetupLock> {
        None
    }
}

impl AllocationLog for crate::allocate::Allocator {
    fn allocated_at(&self) -> BTreeMap<DeviceId, SystemTime> {
        let records = self.allocations().records;
        records
            .into_iter()
            .map(|(device, record)| (device, record.created_at))
            .collect()
    }

    fn forget(&self, device: &DeviceId) {
        crate::allocate::Allocator::forget(self, device);
    }

    fn setup_lock(&self) -> Option<crate::allocate::SetupLock> {
        Some(crate::allocate::Allocator::setup_lock(self))
    }
}

/// Converts a wall-clock time in the past to an `Instant`; `None` when it
/// lies before the monotonic clock's origin.
fn to_instant(at: SystemTime) -> Option<Instant> {
    let age = SystemTime::now().duration_since(at).unwrap_or_default();
    Instant::now().checked_sub(age)
}

/// Reports whether an APQN is usable now; `None` when that is unknown.
type UsableCheck = Box<dyn Fn(Apqn) -> Option<bool> + Send + Sync>;

/// The pod surveillance task; see the module docs.
pub struct PodLister<P, S, C> {
    settings: PodListerSettings,
    source: P,
    store: S,
    config: watch::Receiver<C>,
    usable: Option<UsableCheck>,
    allocations: Option<Arc<dyn AllocationLog>>,
    cleaner: Cleaner,
    findings: Findings,
    outage: OutageLog,
    stats: Arc<SurveillanceStats>,
    usage: watch::Sender<Arc<PodUsage>>,
    passes: u64,
}

impl<P, S, C> PodLister<P, S, C>
where
    P: PodSource,
    S: NodeStore + Send,
    C: ConfigView + Send + Sync,
{
    /// Creates a lister reading pods from `source`, nodes and dirs from
    /// `store`, and the current configuration from `config`.
    pub fn new(
        settings: PodListerSettings,
        source: P,
        store: S,
        config: watch::Receiver<C>,
    ) -> Self {
        let cleaner = Cleaner::new(settings.delete_unused, settings.delete_never_used);
        let outage = OutageLog::new(settings.poll_interval);
        PodLister {
            settings,
            source,
            store,
            config,
            usable: None,
            allocations: None,
            cleaner,
            findings: Findings::default(),
            outage,
            stats: Arc::default(),
            usage: watch::Sender::new(Arc::default()),
            passes: 0,
        }
    }

    /// Also reports containers holding a device whose APQN the latest
    /// inventory in `inventory` shows as not usable.
    pub fn with_inventory<I>(mut self, inventory: watch::Receiver<I>) -> Self
    where
        I: InventoryView + Send + Sync + 'static,
    {
        let check = move |apqn: Apqn| {
            let current = inventory.borrow();
            current
                .inventory()
                .map(|inventory| inventory.is_usable(apqn))
        };
        self.usable = Some(Box::new(check));
        self
    }

    /// Also treats each allocation in `allocations` as a fresh creation of
    /// the device's node and dir, and drops the record once both are gone.
    /// Removals wait for allocations in progress and hold new ones off
    /// through the log's setup lock.
    pub fn with_allocations(mut self, allocations: Arc<dyn AllocationLog>) -> Self {
        self.allocations = Some(allocations);
        self
    }

    /// Returns the lister's counters and gauges.
    pub fn stats(&self) -> Arc<SurveillanceStats> {
        Arc::clone(&self.stats)
    }

    /// Returns a receiver of the devices in use as of the last successful
    /// `List`.
    pub fn usage(&self) -> watch::Receiver<Arc<PodUsage>> {
        self.usage.subscribe()
    }

    /// Runs passes until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        info!(
            interval_secs = self.settings.poll_interval.as_secs_f64(),
            delete_unused_secs = self.settings.delete_unused.as_secs(),
            delete_never_used_secs = self.settings.delete_never_used.as_secs(),
            "PodLister: started"
        );
        loop {
            let delay = self.pass().await;
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        info!("PodLister: stopped");
    }

    /// Runs one pass and returns the delay until the next one: the poll
    /// interval, or a shorter backoff delay while `List` fails.
    pub async fn pass(&mut self) -> Duration {
        self.passes += 1;
        let span = tracing::debug_span!("podlister_pass", pass = self.passes);
        async {
            self.cleaner.scan(&self.store, Instant::now());
            let response = match self.source.list().await {
                Ok(response) => response,
                Err(error) => {
                    self.stats.count_list_failure();
                    return self.outage.failed(&error, Instant::now());
                }
            };
            let now = Instant::now();
            let usage = PodUsage::from_response(&response);
            self.review(&usage);
            let used = usage.used_devices();
            debug!(
                pods = response.pod_resources.len(),
                devices_in_use = used.len(),
                "PodLister: listed pod resources"
            );
            let setup_lock = self.allocations.as_ref().and_then(|log| log.setup_lock());
            let _no_setup = match setup_lock {
                Some(lock) => Some(lock.write_owned().await),
                None => None,
            };
            self.collect(&used, now);
            self.usage.send_replace(Arc::new(usage));
            self.outage.succeeded(now)
        }
        .instrument(span)
        .await
    }

    /// Marks the devices in use and recently allocated, then removes what
    /// is due.
    fn collect(&mut self, used: &std::collections::BTreeSet<DeviceId>, now: Instant) {
        let allocations = self.allocations.clone();
        let known = allocations
            .as_ref()
            .map(|log| log.allocated_at())
            .unwrap_or_default();
        for (device, at) in &known {
            if let Some(at) = to_instant(*at) {
                self.cleaner.mark_allocated(device, at);
            }
        }
        self.cleaner.mark_used(used, now);
        // An allocation recorded after `known` was read restarts the timer.
        // With the allocator's setup lock held (see `pass`) no allocation
        // runs until the removals are done, so this recheck and the removal
        // see the same records.
        let latest_allocation = |device: &DeviceId| {
            let at = *allocations.as_ref()?.allocated_at().get(device)?;
            if known.get(device) == Some(&at) {
                return None;
            }
            to_instant(at)
        };
        let removed = self
            .cleaner
            .collect(&self.store, used, now, &latest_allocation, &self.stats);
        if let Some(log) = &allocations {
            for device in &removed {
                log.forget(device);
            }
        }
    }

    fn review(&mut self, usage: &PodUsage) {
        let sets = {
            let config = self.config.borrow();
            SetIndex::new(config.crypto_config(), &self.settings.machine_id)
        };
        let unknown = |_: Apqn| None;
        let usable: &(dyn Fn(Apqn) -> Option<bool> + Send + Sync) = match &self.usable {
            Some(check) => check.as_ref(),
            None => &unknown,
        };
        self.findings.update(usage, &sets, usable, &self.stats);
    }
}
