//! The agent runtime: start-up, the periodic AP bus rescan and config
//! re-read, the planner that derives each set's devices, and the
//! device-plug-in servers.
//!
//! State lives in `watch` channels: the current config (`None` while no
//! valid config exists: the sets keep their registration but offer no
//! devices), the current inventory and the derived per-set snapshots.
//! [`Triggers`] let event sources (file watches, uevents) ask for a
//! rescan or a reload before the next interval.
//!
//! A node without an AP bus (or with a wrong `APSYSFS_DEVSDIR`) does not
//! make the agent exit: it idles with zero devices and rescans every
//! `APQN_CHECK_INTERVAL`, and starts announcing devices as soon as the
//! bus appears. On a mixed cluster the DaemonSet can then run on every
//! node without crash loops.

mod config_watch;
mod planner;
mod scanner;
mod uevents;

use std::collections::BTreeMap;
use std::sync::Arc;

use cex_ap::Inventory;
use cex_config::CryptoConfig;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::allocate::{Allocator, AllocatorOptions};
use crate::devices::{SetDefaults, SetSnapshot};
use crate::kubelet::{self, DirWatcher, PluginContext, RegistrationStats, WatchError};
use crate::metrics::{self, Metrics};
use crate::settings::Settings;
use planner::Planner;

/// The current snapshot of every served set, by set name.
pub type Snapshots = BTreeMap<String, Arc<SetSnapshot>>;

/// The agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The kubelet device-plugin directory cannot be watched.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// The metrics listener cannot be bound.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::ServeError),
}

/// Requests to act before the next interval.
#[derive(Debug, Clone, Default)]
pub struct Triggers {
    /// Rescan the AP bus now.
    pub rescan: Arc<Notify>,
    /// Re-read the config file now.
    pub reload: Arc<Notify>,
}

/// Read access to the agent's state for other components.
#[derive(Debug, Clone)]
pub struct AgentHandles {
    pub config: watch::Receiver<Option<Arc<CryptoConfig>>>,
    pub inventory: watch::Receiver<Arc<Inventory>>,
    pub snapshots: watch::Receiver<Arc<Snapshots>>,
    pub triggers: Triggers,
    pub stats: Arc<RegistrationStats>,
    /// The allocation path shared by every set's server.
    pub allocator: Arc<Allocator>,
    /// The event-driven metrics (allocations, scans, config changes).
    pub metrics: Metrics,
}

/// An agent after start-up, ready to run.
pub struct Agent {
    settings: Settings,
    config: watch::Sender<Option<Arc<CryptoConfig>>>,
    inventory: watch::Sender<Arc<Inventory>>,
    snapshots: watch::Sender<Arc<Snapshots>>,
    planner: Planner,
    scanner: scanner::Scanner,
    handles: AgentHandles,
}

impl Agent {
    /// Runs the start-up steps: log the version, read the machine id,
    /// scan the AP bus, read the config and derive the first snapshots,
    /// so the first ListAndWatch message already carries the real list.
    pub fn start_up(settings: Settings) -> Agent {
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            "cex-plugin {} starting",
            env!("CARGO_PKG_VERSION")
        );
        let machine_id = read_machine_id(&settings);
        let metrics = Metrics::new(&settings.node_name);
        let mut scanner = scanner::Scanner::new(settings.paths.ap_devices_dir.clone())
            .with_metrics(metrics.scans());
        let inventory = scanner.scan_and_log();
        let config = config_watch::initial_config(&settings.paths.config_file);
        let defaults = SetDefaults {
            overcommit: settings.overcommit_limit,
            live_sysfs: settings.live_sysfs,
        };
        let mut planner = Planner::new(machine_id, defaults);
        let first = planner
            .plan(config.as_deref(), &inventory)
            .unwrap_or_default();

        let (config, config_rx) = watch::channel(config);
        let (inventory, inventory_rx) = watch::channel(Arc::new(inventory));
        let (snapshots, snapshots_rx) = watch::channel(Arc::new(first));
        let handles = AgentHandles {
            config: config_rx,
            inventory: inventory_rx,
            snapshots: snapshots_rx,
            triggers: Triggers::default(),
            stats: Arc::new(RegistrationStats::default()),
            allocator: Arc::new(Allocator::new(
                settings.paths.node_paths(),
                AllocatorOptions::default(),
            )),
            metrics,
        };
        Agent {
            settings,
            config,
            inventory,
            snapshots,
            planner,
            scanner,
            handles,
        }
    }

    /// Returns read access to the state and the triggers.
    pub fn handles(&self) -> AgentHandles {
        self.handles.clone()
    }

    /// Runs every task until `cancel` fires, then stops the servers and
    /// removes their sockets.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), AgentError> {
        let watcher = DirWatcher::start(&self.settings.paths.device_plugin_dir)?;
        let metrics_listener = match self.settings.metrics_listen {
            Some(addr) => Some(metrics::listen(addr).await?),
            None => None,
        };
        let context = PluginContext {
            dir: self.settings.paths.device_plugin_dir.clone(),
            snapshots: self.handles.snapshots.clone(),
            allocator: Arc::clone(&self.handles.allocator),
            stats: Arc::clone(&self.handles.stats),
            metrics: self.handles.metrics.clone(),
        };
        let liveness = metrics::Liveness::new(&self.handles);
        let tasks = TaskTracker::new();
        tasks.spawn(scanner::run_rescans(
            self.scanner,
            self.inventory,
            self.settings.apqn_check_interval,
            Arc::clone(&self.handles.triggers.rescan),
            cancel.clone(),
        ));
        tasks.spawn(uevents::run_uevents(
            Arc::clone(&self.handles.triggers.rescan),
            cancel.clone(),
        ));
        tasks.spawn(config_watch::run_file_watch(
            self.settings.paths.config_file.clone(),
            Arc::clone(&self.handles.triggers.reload),
            self.settings.config_check_interval,
            cancel.clone(),
        ));
        tasks.spawn(config_watch::run_reloads(
            self.settings.paths.config_file.clone(),
            self.config,
            self.settings.config_check_interval,
            Arc::clone(&self.handles.triggers.reload),
            cancel.clone(),
        ));
        let pod_lister = crate::surveillance::PodLister::from_settings(
            &self.settings,
            self.planner.machine_id().to_string(),
            self.handles.config.clone(),
        )
        .with_inventory(self.handles.inventory.clone())
        .with_allocations(self.handles.allocator.clone());
        liveness.watch_channel("pod lister", pod_lister.usage());
        if let Some(listener) = metrics_listener {
            let sources = metrics::Sources::new(
                &self.handles,
                &self.settings.paths,
                pod_lister.usage(),
                pod_lister.stats(),
                self.planner.machine_id().to_string(),
            );
            let task =
                metrics::MetricsTask::new(listener, &self.handles, sources, liveness.clone());
            tasks.spawn(task.run(cancel.clone()));
        }
        tasks.spawn(pod_lister.run(cancel.clone()));
        tasks.spawn(run_planner(
            self.planner,
            self.handles.config.clone(),
            self.handles.inventory.clone(),
            self.snapshots,
            cancel.clone(),
        ));
        tasks.spawn(liveness.track(
            "plug-in manager",
            kubelet::run_plugin_manager(context, watcher, cancel.clone()),
        ));
        tasks.close();
        tasks.wait().await;
        tracing::info!("cex-plugin stopped");
        Ok(())
    }
}

fn read_machine_id(settings: &Settings) -> String {
    match cex_ap::sysinfo::read_machine_id(&settings.paths.sysinfo_file) {
        Ok(machine_id) => {
            // Quoted and bounded: the text comes from a file that need not
            // be the kernel's.
            let shown = cex_config::quoted(&machine_id);
            tracing::info!(machine_id = %shown, "machine id {shown}");
            machine_id
        }
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "machine id unknown, APQN entries with a machine id will not match");
            String::new()
        }
    }
}

/// Re-derives the snapshots whenever the config or the inventory change.
async fn run_planner(
    mut planner: Planner,
    mut config: watch::Receiver<Option<Arc<CryptoConfig>>>,
    mut inventory: watch::Receiver<Arc<Inventory>>,
    snapshots: watch::Sender<Arc<Snapshots>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = config.changed() => if changed.is_err() { return },
            changed = inventory.changed() => if changed.is_err() { return },
        }
        let current_config = config.borrow_and_update().clone();
        let current_inventory = Arc::clone(&inventory.borrow_and_update());
        let planned = planner.plan(current_config.as_deref(), &current_inventory);
        if let Some(planned) = planned {
            snapshots.send_replace(Arc::new(planned));
        }
    }
}
