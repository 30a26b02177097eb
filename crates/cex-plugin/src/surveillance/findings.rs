//! Findings about the listed pods: containers using a set meant for another
//! project, and containers holding a device whose APQN is not usable.
//!
//! Each finding is logged once when it first appears and again only after
//! it has disappeared and come back, so a persisting mismatch does not
//! flood the log at every poll.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use cex_ap::{Apqn, DeviceId};
use cex_config::CryptoConfig;
use tracing::{debug, info, warn};

use super::pods::{Holder, PodUsage};

/// Counters and gauges of the pod lister, read by the metrics exporter.
#[derive(Debug, Default)]
pub struct SurveillanceStats {
    mismatches_total: AtomicU64,
    mismatches_current: AtomicU64,
    unhealthy_held_current: AtomicU64,
    list_failures_total: AtomicU64,
    zcrypt_nodes_destroyed_total: AtomicU64,
    shadow_dirs_removed_total: AtomicU64,
}

/// A copy of [`SurveillanceStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Project mismatches found since start, each counted when it appears.
    pub mismatches_total: u64,
    /// Project mismatches present in the last successful `List`.
    pub mismatches_current: u64,
    /// Containers holding a device whose APQN is not usable now.
    pub unhealthy_held_current: u64,
    /// Failed or timed-out pod-resources `List` calls.
    pub list_failures_total: u64,
    pub zcrypt_nodes_destroyed_total: u64,
    pub shadow_dirs_removed_total: u64,
}

impl SurveillanceStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            mismatches_total: self.mismatches_total.load(Ordering::Relaxed),
            mismatches_current: self.mismatches_current.load(Ordering::Relaxed),
            unhealthy_held_current: self.unhealthy_held_current.load(Ordering::Relaxed),
            list_failures_total: self.list_failures_total.load(Ordering::Relaxed),
            zcrypt_nodes_destroyed_total: self.zcrypt_nodes_destroyed_total.load(Ordering::Relaxed),
            shadow_dirs_removed_total: self.shadow_dirs_removed_total.load(Ordering::Relaxed),
        }
    }

    pub(super) fn count_list_failure(&self) {
        self.list_failures_total.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_zcrypt_node_destroyed(&self) {
        self.zcrypt_nodes_destroyed_total
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_shadow_dir_removed(&self) {
        self.shadow_dirs_removed_total
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// The set and project each APQN belongs to in one configuration.
#[derive(Debug, Clone, Default)]
pub struct SetIndex {
    by_apqn: HashMap<Apqn, (String, String)>,
    by_name: HashMap<String, String>,
}

impl SetIndex {
    /// Indexes the sets of `config`, keeping only APQN entries that apply
    /// on the machine `machine_id`. `None` (no valid configuration) gives
    /// an empty index, so nothing is reported as a mismatch.
    pub fn new(config: Option<&CryptoConfig>, machine_id: &str) -> Self {
        let mut index = SetIndex::default();
        for set in config
            .map(|config| config.sets.as_slice())
            .unwrap_or_default()
        {
            index
                .by_name
                .insert(set.setname.clone(), set.project.clone());
            for entry in set
                .apqns
                .iter()
                .filter(|entry| entry.applies_to(machine_id))
            {
                let value = (set.setname.clone(), set.project.clone());
                index.by_apqn.entry(entry.apqn()).or_insert(value);
            }
        }
        index
    }

    /// Returns the (set, project) of the device's APQN, or else of the set
    /// named by its resource when the APQN is in no set of this config.
    pub fn set_of(&self, holder: &Holder) -> Option<(&str, &str)> {
        if let Some((set, project)) = self.by_apqn.get(&holder.device.apqn) {
            return Some((set, project));
        }
        let (set, project) = self.by_name.get_key_value(&holder.set)?;
        Some((set, project))
    }
}

/// The container and device a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct FindingKey {
    namespace: String,
    pod: String,
    container: String,
    device: DeviceId,
}

impl FindingKey {
    fn of(holder: &Holder) -> Self {
        FindingKey {
            namespace: holder.namespace.clone(),
            pod: holder.pod.clone(),
            container: holder.container.clone(),
            device: holder.device,
        }
    }
}

/// The findings present in the last successful `List`.
#[derive(Debug, Default)]
pub struct Findings {
    mismatches: BTreeSet<FindingKey>,
    unhealthy: BTreeSet<FindingKey>,
    invalid: BTreeSet<(String, String, String)>,
}

impl Findings {
    /// Compares the listed holders with the configuration and with
    /// `usable` (whether an APQN is usable now, `None` when unknown), logs
    /// what is new and updates the gauges.
    pub fn update(
        &mut self,
        usage: &PodUsage,
        sets: &SetIndex,
        usable: &dyn Fn(Apqn) -> Option<bool>,
        stats: &SurveillanceStats,
    ) {
        let mut mismatches = BTreeSet::new();
        let mut unhealthy = BTreeSet::new();
        for holder in &usage.holders {
            let key = FindingKey::of(holder);
            if let Some((set, project)) = sets.set_of(holder) {
                if holder.namespace != project {
                    if !self.mismatches.contains(&key) {
                        log_mismatch(holder, set, project);
                        stats.mismatches_total.fetch_add(1, Ordering::Relaxed);
                    }
                    mismatches.insert(key.clone());
                }
            } else {
                debug!(pod = %holder.pod, namespace = %holder.namespace, set = %holder.set,
                    device = %holder.device, "PodLister: device belongs to no configured set");
            }
            if usable(holder.device.apqn) == Some(false) {
                if !self.unhealthy.contains(&key) {
                    log_unhealthy(holder);
                }
                unhealthy.insert(key);
            }
        }
        self.log_resolved(&mismatches, &unhealthy);
        self.log_invalid(usage);
        stats
            .mismatches_current
            .store(mismatches.len() as u64, Ordering::Relaxed);
        stats
            .unhealthy_held_current
            .store(unhealthy.len() as u64, Ordering::Relaxed);
        self.mismatches = mismatches;
        self.unhealthy = unhealthy;
    }

    fn log_resolved(&self, mismatches: &BTreeSet<FindingKey>, unhealthy: &BTreeSet<FindingKey>) {
        for key in self.mismatches.difference(mismatches) {
            debug!(pod = %key.pod, namespace = %key.namespace, container = %key.container,
                device = %key.device, "PodLister: project mismatch no longer listed");
        }
        for key in self.unhealthy.difference(unhealthy) {
            info!(pod = %key.pod, namespace = %key.namespace, container = %key.container,
                device = %key.device, "PodLister: pod {}/{} no longer holds an unusable device {}",
                key.namespace, key.pod, key.device);
        }
    }

    /// Warns once per (pod, resource, value) about ids that are not plug-in
    /// ids. The kubelet only hands out ids a plug-in announced, so such an
    /// id means that another component uses the resource name.
    fn log_invalid(&mut self, usage: &PodUsage) {
        let mut current = BTreeSet::new();
        for invalid in &usage.invalid {
            let pod = format!("{}/{}", invalid.namespace, invalid.pod);
            let key = (pod, invalid.resource.clone(), invalid.value.clone());
            if !self.invalid.contains(&key) {
                warn!(pod = %invalid.pod, namespace = %invalid.namespace,
                    container = %invalid.container, resource = %invalid.resource,
                    "PodLister: ignoring invalid device id {:?} of resource {} in pod {}",
                    invalid.value, invalid.resource, key.0);
            }
            current.insert(key);
        }
        self.invalid = current;
    }
}

fn log_mismatch(holder: &Holder, set: &str, project: &str) {
    warn!(
        pod = %holder.pod,
        namespace = %holder.namespace,
        set = %set,
        device = %holder.device,
        "PodLister: Container {} in namespace {} uses a CEX resource {} marked for project {}!",
        holder.container,
        holder.namespace,
        holder.device,
        project
    );
}

fn log_unhealthy(holder: &Holder) {
    warn!(
        pod = %holder.pod,
        namespace = %holder.namespace,
        set = %holder.set,
        device = %holder.device,
        apqn = %holder.device.apqn,
        "PodLister: pod {}/{} (container {}) holds unhealthy device {}: APQN {} is not usable",
        holder.namespace,
        holder.pod,
        holder.container,
        holder.device,
        holder.device.apqn
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use cex_ap::{Card, Inventory, Queue};
    use cex_config::{ConfigApqn, ConfigSet};

    fn set(name: &str, project: &str, apqns: &[(u8, u8, &str)]) -> ConfigSet {
        ConfigSet {
            setname: name.to_string(),
            project: project.to_string(),
            cexmode: None,
            mincexgen: None,
            overcommit: None,
            livesysfs: None,
            apqns: apqns
                .iter()
                .map(|(adapter, domain, machine)| ConfigApqn {
                    adapter: *adapter,
                    domain: *domain,
                    machineid: machine.to_string(),
                })
                .collect(),
        }
    }

    fn holder(namespace: &str, pod: &str, set: &str, device: &str) -> Holder {
        Holder {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: "main".to_string(),
            set: set.to_string(),
            device: device.parse().expect("test id is canonical"),
        }
    }

    fn usage(holders: Vec<Holder>) -> PodUsage {
        PodUsage {
            holders,
            ..Default::default()
        }
    }

    fn blue_config() -> CryptoConfig {
        CryptoConfig {
            sets: vec![set("blue", "blue", &[(1, 5, ""), (2, 5, "")])],
        }
    }

    #[test]
    fn set_index_prefers_the_apqn_set() {
        let config = CryptoConfig {
            sets: vec![
                set("blue", "blue", &[(1, 5, "")]),
                set("red", "red", &[(3, 5, "")]),
            ],
        };
        let index = SetIndex::new(Some(&config), "IBM-3906-1");
        assert_eq!(
            index.set_of(&holder("x", "p", "red", "apqn-1-5-0")),
            Some(("blue", "blue"))
        );
        assert_eq!(
            index.set_of(&holder("x", "p", "red", "apqn-9-9-0")),
            Some(("red", "red"))
        );
        assert_eq!(index.set_of(&holder("x", "p", "gone", "apqn-9-9-0")), None);
    }

    #[test]
    fn set_index_skips_other_machines() {
        let config = CryptoConfig {
            sets: vec![set("blue", "blue", &[(1, 5, "IBM-3906-2")])],
        };
        let index = SetIndex::new(Some(&config), "IBM-3906-1");
        assert_eq!(index.set_of(&holder("x", "p", "other", "apqn-1-5-0")), None);
    }

    #[test]
    fn mismatch_counted_once_while_it_persists() {
        let stats = SurveillanceStats::default();
        let index = SetIndex::new(Some(&blue_config()), "");
        let mut findings = Findings::default();
        let listed = usage(vec![holder("red", "p2", "blue", "apqn-1-5-0")]);
        findings.update(&listed, &index, &|_| None, &stats);
        findings.update(&listed, &index, &|_| None, &stats);
        assert_eq!(stats.snapshot().mismatches_total, 1);
        assert_eq!(stats.snapshot().mismatches_current, 1);

        findings.update(&usage(vec![]), &index, &|_| None, &stats);
        assert_eq!(stats.snapshot().mismatches_current, 0);
        findings.update(&listed, &index, &|_| None, &stats);
        assert_eq!(stats.snapshot().mismatches_total, 2);
    }

    #[test]
    fn shared_device_gives_one_mismatch() {
        let stats = SurveillanceStats::default();
        let index = SetIndex::new(Some(&blue_config()), "");
        let mut findings = Findings::default();
        let listed = usage(vec![
            holder("blue", "p1", "blue", "apqn-1-5-0"),
            holder("red", "p2", "blue", "apqn-1-5-0"),
        ]);
        findings.update(&listed, &index, &|_| None, &stats);
        assert_eq!(stats.snapshot().mismatches_total, 1);
        let key = findings.mismatches.first().expect("one mismatch");
        assert_eq!(key.pod, "p2");
        assert_eq!(key.namespace, "red");
    }

    #[test]
    fn no_config_reports_no_mismatch() {
        let stats = SurveillanceStats::default();
        let mut findings = Findings::default();
        let listed = usage(vec![holder("red", "p2", "blue", "apqn-1-5-0")]);
        findings.update(&listed, &SetIndex::new(None, ""), &|_| None, &stats);
        assert_eq!(stats.snapshot().mismatches_total, 0);
    }

    #[test]
    fn unusable_apqn_is_reported() {
        let stats = SurveillanceStats::default();
        let index = SetIndex::new(Some(&blue_config()), "");
        let mut inventory = Inventory::default();
        inventory.cards.insert(
            1,
            Card {
                adapter: 1,
                card_type: None,
                hwtype: None,
                raw_hwtype: None,
                online: Some(true),
                config: None,
                chkstop: None,
            },
        );
        let apqn = Apqn::new(1, 5);
        let queue = Queue {
            apqn,
            online: Some(false),
            config: None,
            chkstop: None,
        };
        inventory.queues.insert(apqn, queue);
        let mut findings = Findings::default();
        let listed = usage(vec![holder("blue", "p1", "blue", "apqn-1-5-0")]);
        findings.update(
            &listed,
            &index,
            &|apqn| Some(inventory.is_usable(apqn)),
            &stats,
        );
        assert_eq!(stats.snapshot().unhealthy_held_current, 1);

        if let Some(queue) = inventory.queues.get_mut(&apqn) {
            queue.online = Some(true);
        }
        findings.update(
            &listed,
            &index,
            &|apqn| Some(inventory.is_usable(apqn)),
            &stats,
        );
        assert_eq!(stats.snapshot().unhealthy_held_current, 0);
        assert_eq!(stats.snapshot().mismatches_total, 0);
    }
}
