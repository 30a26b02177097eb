//! The figures read from the agent's state at each scrape: announced and
//! used devices per set, registration counters, config state, project
//! mismatches present now, zcrypt nodes and shadow dirs on disk, and the
//! health of each APQN.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use cex_ap::Inventory;
use cex_config::CryptoConfig;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::sync::watch;

use super::SetLabels;
use crate::agent::{AgentHandles, Snapshots};
use crate::allocate::Allocator;
use crate::kubelet::RegistrationStats;
use crate::settings::Paths;
use crate::surveillance::{
    FsNodeStore, NodeKind, NodeStore, PodUsage, SetIndex, SurveillanceStats,
};

/// The agent state the collector reads at each scrape.
#[derive(Debug, Clone)]
pub struct Sources {
    pub snapshots: watch::Receiver<Arc<Snapshots>>,
    pub config: watch::Receiver<Option<Arc<CryptoConfig>>>,
    pub inventory: watch::Receiver<Arc<Inventory>>,
    /// Devices in use as of the pod lister's last successful `List`.
    pub usage: watch::Receiver<Arc<PodUsage>>,
    pub registrations: Arc<RegistrationStats>,
    pub surveillance: Arc<SurveillanceStats>,
    pub allocator: Arc<Allocator>,
    /// The zcrypt nodes and shadow dirs on disk.
    pub store: FsNodeStore,
    /// This machine's id, to map a held device's APQN to its set.
    pub machine_id: String,
}

impl Sources {
    /// Collects the sources from the agent's handles, its host paths and
    /// the pod lister's usage and counters.
    pub fn new(
        handles: &AgentHandles,
        paths: &Paths,
        usage: watch::Receiver<Arc<PodUsage>>,
        surveillance: Arc<SurveillanceStats>,
        machine_id: String,
    ) -> Self {
        let zcrypt = handles.allocator.zcrypt_nodes().clone();
        Sources {
            snapshots: handles.snapshots.clone(),
            config: handles.config.clone(),
            inventory: handles.inventory.clone(),
            usage,
            registrations: Arc::clone(&handles.stats),
            surveillance,
            allocator: Arc::clone(&handles.allocator),
            store: FsNodeStore::new(&paths.node_paths(), zcrypt),
            machine_id,
        }
    }
}

/// Labels of a per-APQN series, adapter and domain in decimal as in the
/// config file and the device ids.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApqnLabels {
    adapter: String,
    domain: String,
}

/// Labels of a re-registration counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    setname: String,
    reason: &'static str,
}

/// Encodes the state-derived figures at each scrape.
#[derive(Debug)]
pub(super) struct StateCollector {
    sources: Sources,
}

impl StateCollector {
    pub(super) fn new(sources: Sources) -> Self {
        StateCollector { sources }
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let snapshots = Arc::clone(&self.sources.snapshots.borrow());
        let usage = Arc::clone(&self.sources.usage.borrow());
        let config = self.sources.config.borrow().clone();
        let inventory = Arc::clone(&self.sources.inventory.borrow());
        encode_devices(&mut encoder, &snapshots, &usage, &inventory)?;
        self.encode_registrations(&mut encoder, &snapshots)?;
        self.encode_config(&mut encoder, config.as_deref(), &snapshots, &usage)?;
        self.encode_node_objects(&mut encoder)?;
        self.encode_apqns(&mut encoder, &inventory)
    }
}

/// Encodes the announced, healthy and used devices of each set.
fn encode_devices(
    encoder: &mut DescriptorEncoder,
    snapshots: &Snapshots,
    usage: &PodUsage,
    inventory: &Inventory,
) -> fmt::Result {
    let per_set = |value: &dyn Fn(&str) -> usize| {
        set_names(snapshots, usage)
            .into_iter()
            .map(|set| {
                let count = value(&set);
                (SetLabels::new(&set), count)
            })
            .collect::<Vec<_>>()
    };
    let announced = |set: &str| snapshots.get(set).map_or(0, |s| s.devices.len());
    let healthy = |set: &str| {
        snapshots.get(set).map_or(0, |s| {
            s.devices.iter().filter(|device| device.healthy).count()
        })
    };
    let used = |set: &str| usage.used.get(set).map_or(0, |devices| devices.len());
    let used_unusable = |set: &str| {
        usage.used.get(set).map_or(0, |devices| {
            devices
                .iter()
                .filter(|device| !inventory.is_usable(device.apqn))
                .count()
        })
    };
    gauges(
        encoder,
        "cex_plugin_plugindevs_available",
        "Plug-in devices the agent announces for the set, healthy or not",
        per_set(&announced),
    )?;
    gauges(
        encoder,
        "cex_plugin_plugindevs_healthy",
        "Announced plug-in devices reported Healthy to the kubelet",
        per_set(&healthy),
    )?;
    gauges(
        encoder,
        "cex_plugin_plugindevs_used",
        "Plug-in devices of the set that a container holds, per the last pod-resources List",
        per_set(&used),
    )?;
    gauges(
        encoder,
        "cex_plugin_plugindevs_used_unusable",
        "Held plug-in devices whose APQN is not usable now (offline, deconfigured, check-stopped or gone)",
        per_set(&used_unusable),
    )
}

impl StateCollector {
    fn encode_registrations(
        &self,
        encoder: &mut DescriptorEncoder,
        snapshots: &Snapshots,
    ) -> fmt::Result {
        let stats = self.sources.registrations.snapshot();
        let registered = snapshots.keys().map(|set| {
            let now = stats.get(set).is_some_and(|counters| counters.registered);
            (SetLabels::new(set), usize::from(now))
        });
        gauges(
            encoder,
            "cex_plugin_registered",
            "1 while the set is registered with the running kubelet, else 0",
            registered,
        )?;
        let total = stats
            .iter()
            .map(|(set, counters)| (SetLabels::new(set), counters.registrations));
        counters(
            encoder,
            "cex_plugin_registrations",
            "Successful Register calls to the kubelet",
            total,
        )?;
        let failures = stats
            .iter()
            .map(|(set, counters)| (SetLabels::new(set), counters.registration_failures));
        counters(
            encoder,
            "cex_plugin_registration_failures",
            "Register calls the kubelet rejected or that failed to reach it",
            failures,
        )?;
        let reasons = stats.iter().flat_map(|(set, counters)| {
            let label = |reason| ReasonLabels {
                setname: set.clone(),
                reason,
            };
            [
                (label("stream_ended"), counters.stream_recoveries),
                (label("server_restarted"), counters.restarts),
            ]
        });
        counters(
            encoder,
            "cex_plugin_reregistrations",
            "New registrations after the kubelet ended the ListAndWatch stream or the server restarted (kubelet restart, socket removed)",
            reasons,
        )
    }

    fn encode_config(
        &self,
        encoder: &mut DescriptorEncoder,
        config: Option<&CryptoConfig>,
        snapshots: &Snapshots,
        usage: &PodUsage,
    ) -> fmt::Result {
        gauge(
            encoder,
            "cex_plugin_config_valid",
            "1 while the agent runs with a verified configuration, 0 while it runs without one",
            i64::from(config.is_some()),
        )?;
        let sets = config.map_or(0, |config| config.sets.len());
        gauge(
            encoder,
            "cex_plugin_config_sets",
            "Crypto config sets in the configuration in use",
            i64::try_from(sets).unwrap_or(i64::MAX),
        )?;
        let index = SetIndex::new(config, &self.sources.machine_id);
        let mut mismatched: BTreeMap<String, usize> =
            snapshots.keys().map(|set| (set.clone(), 0)).collect();
        for holder in &usage.holders {
            if let Some((set, project)) = index.set_of(holder) {
                if holder.namespace != project {
                    *mismatched.entry(set.to_string()).or_default() += 1;
                }
            }
        }
        gauges(
            encoder,
            "cex_plugin_project_mismatched_containers",
            "Containers holding a device of the set from a namespace other than its project, now",
            mismatched
                .iter()
                .map(|(set, count)| (SetLabels::new(set), *count)),
        )
    }

    fn encode_node_objects(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let present = [
            (
                NodeKind::ZcryptNode,
                "cex_plugin_zcrypt_nodes",
                "zcrypt-apqn-* device nodes present on the node",
            ),
            (
                NodeKind::ShadowDir,
                "cex_plugin_shadow_dirs",
                "sysfs-apqn-* shadow sysfs dirs present in the shadow base dir",
            ),
        ];
        for (kind, name, help) in present {
            match self.sources.store.list_names(kind) {
                Ok(names) => gauge(
                    encoder,
                    name,
                    help,
                    i64::try_from(names.len()).unwrap_or(i64::MAX),
                )?,
                Err(error) => tracing::debug!(%error, "metrics: cannot list {kind}s"),
            }
        }
        let stats = self.sources.surveillance.snapshot();
        let totals = [
            (
                "cex_plugin_zcrypt_nodes_destroyed",
                "zcrypt nodes destroyed by cleanup",
                stats.zcrypt_nodes_destroyed_total,
            ),
            (
                "cex_plugin_shadow_dirs_removed",
                "Shadow sysfs dirs removed by cleanup",
                stats.shadow_dirs_removed_total,
            ),
            (
                "cex_plugin_pod_resources_list_failures",
                "Failed or timed-out pod-resources List calls",
                stats.list_failures_total,
            ),
        ];
        for (name, help, value) in totals {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        Ok(())
    }

    fn encode_apqns(&self, encoder: &mut DescriptorEncoder, inventory: &Inventory) -> fmt::Result {
        let labels = |apqn: cex_ap::Apqn| ApqnLabels {
            adapter: apqn.adapter.to_string(),
            domain: apqn.domain.to_string(),
        };
        let health = inventory
            .queues
            .keys()
            .map(|apqn| (labels(*apqn), usize::from(inventory.is_usable(*apqn))));
        gauges(
            encoder,
            "cex_plugin_apqn_healthy",
            "1 while the APQN is online, configured and not check-stopped, with its card; 0 otherwise",
            health,
        )?;
        let allocated = self.sources.allocator.allocations().count_per_apqn();
        gauges(
            encoder,
            "cex_plugin_apqn_allocated_devices",
            "Plug-in devices of the APQN allocated by this agent process and not yet cleaned up",
            allocated
                .into_iter()
                .map(|(apqn, count)| (labels(apqn), count)),
        )
    }
}

/// Names of the served sets and of the sets pods hold devices of.
fn set_names(snapshots: &Snapshots, usage: &PodUsage) -> Vec<String> {
    let mut names: Vec<String> = snapshots.keys().cloned().collect();
    for set in usage.used.keys() {
        if !snapshots.contains_key(set) {
            names.push(set.clone());
        }
    }
    names.sort();
    names
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(value).encode(metric)
}

fn gauges<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (S, usize)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (S, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}
