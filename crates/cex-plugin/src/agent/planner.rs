//! Turns the current config and inventory into one snapshot per set and
//! logs what changed, once per change.

use std::collections::BTreeMap;
use std::sync::Arc;

use cex_ap::Inventory;
use cex_config::CryptoConfig;

use super::Snapshots;
use crate::devices::{derive_snapshot, format_devices, Exclusion, SetDefaults, SetSnapshot};

/// Derives set snapshots and remembers the last ones for change logs.
pub(crate) struct Planner {
    machine_id: String,
    defaults: SetDefaults,
    /// The sets of the last valid config, kept while no config is valid
    /// so that their registrations stay (with zero devices).
    known_sets: Vec<(String, String)>,
    last: Snapshots,
    exclusions: BTreeMap<String, Vec<Exclusion>>,
}

impl Planner {
    pub(crate) fn new(machine_id: String, defaults: SetDefaults) -> Self {
        Self {
            machine_id,
            defaults,
            known_sets: Vec::new(),
            last: Snapshots::new(),
            exclusions: BTreeMap::new(),
        }
    }

    /// Returns the snapshots for `config` and `inventory`; `None` when
    /// they equal the previous ones.
    /// Returns the machine id the APQN entries are matched against.
    pub(crate) fn machine_id(&self) -> &str {
        &self.machine_id
    }

    pub(crate) fn plan(
        &mut self,
        config: Option<&CryptoConfig>,
        inventory: &Inventory,
    ) -> Option<Snapshots> {
        let snapshots = match config {
            Some(config) => self.plan_config(config, inventory),
            None => self.plan_without_config(),
        };
        for (name, snapshot) in &snapshots {
            self.log_devices(name, snapshot);
        }
        if snapshots == self.last {
            return None;
        }
        self.last = snapshots.clone();
        Some(snapshots)
    }

    fn plan_config(&mut self, config: &CryptoConfig, inventory: &Inventory) -> Snapshots {
        let mut snapshots = Snapshots::new();
        self.known_sets.clear();
        for set in &config.sets {
            let (snapshot, exclusions) =
                derive_snapshot(set, inventory, &self.machine_id, &self.defaults);
            self.log_exclusions(&set.setname, exclusions);
            self.known_sets
                .push((set.setname.clone(), set.project.clone()));
            snapshots.insert(set.setname.clone(), Arc::new(snapshot));
        }
        self.exclusions
            .retain(|name, _| snapshots.contains_key(name));
        snapshots
    }

    fn plan_without_config(&mut self) -> Snapshots {
        self.exclusions.clear();
        self.known_sets
            .iter()
            .map(|(name, project)| {
                let snapshot = SetSnapshot {
                    name: name.clone(),
                    project: project.clone(),
                    live_sysfs: self.defaults.live_sysfs,
                    devices: Vec::new(),
                };
                (name.clone(), Arc::new(snapshot))
            })
            .collect()
    }

    fn log_devices(&self, name: &str, snapshot: &SetSnapshot) {
        let previous = self.last.get(name).map(|last| &last.devices);
        if previous == Some(&snapshot.devices) {
            return;
        }
        let healthy = snapshot
            .devices
            .iter()
            .filter(|device| device.healthy)
            .count();
        tracing::info!(
            set = %name,
            count = snapshot.devices.len(),
            healthy,
            "Plugin['{name}']: {} plug-in devices ({healthy} healthy): {}",
            snapshot.devices.len(),
            format_devices(&snapshot.devices)
        );
    }

    fn log_exclusions(&mut self, name: &str, exclusions: Vec<Exclusion>) {
        if self.exclusions.get(name) == Some(&exclusions) {
            return;
        }
        for exclusion in &exclusions {
            tracing::info!(
                set = %name,
                apqn = %exclusion.apqn,
                reason = %exclusion.reason,
                "Plugin['{name}']: APQN {} not announced: {}",
                exclusion.apqn,
                exclusion.reason
            );
        }
        self.exclusions.insert(name.to_string(), exclusions);
    }
}
