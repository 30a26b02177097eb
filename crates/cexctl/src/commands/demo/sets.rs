//! The config sets of the demo, derived from the machine's cards.
//!
//! The demo needs usable APQNs (card and queue online and bound to the
//! zcrypt driver) in three card modes: the first two modes become the
//! sets served from the start, the third the set added later.

use std::collections::BTreeMap;

use anyhow::bail;
use cex_ap::{Apqn, CexMode};
use cex_sim::machines::Machine;
use serde_json::json;

/// The resource name prefix of every set.
pub const RESOURCE_PREFIX: &str = "cex.s390.ibm.com/";

/// One config set of the demo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSet {
    pub name: String,
    pub project: String,
    pub mode: CexMode,
    pub apqns: Vec<Apqn>,
    /// `overcommit` of the set; `None` leaves the field out.
    pub overcommit: Option<u32>,
}

impl DemoSet {
    fn new(mode: CexMode, apqns: Vec<Apqn>) -> Self {
        let mode_name = mode.as_str();
        Self {
            name: format!("{mode_name}-demo"),
            project: format!("team-{mode_name}"),
            mode,
            apqns,
            overcommit: None,
        }
    }

    /// Returns the kubelet resource name `cex.s390.ibm.com/<set>`.
    pub fn resource(&self) -> String {
        format!("{RESOURCE_PREFIX}{}", self.name)
    }

    /// Returns the number of plug-in devices the agent should announce.
    pub fn expected_devices(&self) -> usize {
        let per_apqn = self.overcommit.unwrap_or(1).max(1);
        self.apqns.len() * per_apqn as usize
    }

    /// Returns the APQNs of this set on card `adapter`.
    pub fn apqns_on_card(&self, adapter: u8) -> usize {
        self.apqns
            .iter()
            .filter(|apqn| apqn.adapter == adapter)
            .count()
    }

    fn to_json(&self) -> serde_json::Value {
        let apqns: Vec<serde_json::Value> = self
            .apqns
            .iter()
            .map(|apqn| json!({"adapter": apqn.adapter, "domain": apqn.domain, "machineid": ""}))
            .collect();
        let mut set = json!({
            "setname": self.name,
            "project": self.project,
            "cexmode": self.mode.as_str(),
            "apqns": apqns,
        });
        if let Some(overcommit) = self.overcommit {
            set["overcommit"] = json!(overcommit);
        }
        set
    }
}

/// The three sets of the demo.
#[derive(Debug, Clone)]
pub struct DemoSets {
    /// Served from the start; a pod allocates from it, and it later gets
    /// overcommit 3.
    pub first: DemoSet,
    /// Served from the start; its card is unplugged and plugged back.
    pub second: DemoSet,
    /// Added by a config change.
    pub added: DemoSet,
}

impl DemoSets {
    /// Groups the machine's usable APQNs by card mode, EP11 first, then
    /// CCA, then accelerators.
    pub fn for_machine(machine: &Machine) -> anyhow::Result<Self> {
        // `CexMode` orders EP11 before CCA before accelerators.
        let mut by_mode: BTreeMap<CexMode, Vec<Apqn>> = BTreeMap::new();
        for (apqn, (card, queue)) in machine.apqns() {
            let usable = card.reads_online()
                && card.is_zcrypt_bound()
                && queue.reads_online()
                && queue.is_zcrypt_bound();
            if usable {
                by_mode.entry(card.mode()).or_default().push(apqn);
            }
        }
        let mut groups = by_mode.into_iter();
        match (groups.next(), groups.next(), groups.next()) {
            (Some(first), Some(second), Some(added)) => Ok(Self {
                first: DemoSet::new(first.0, first.1),
                second: DemoSet::new(second.0, second.1),
                added: DemoSet::new(added.0, added.1),
            }),
            (first, second, _) => {
                let modes: Vec<&str> = [first, second]
                    .into_iter()
                    .flatten()
                    .map(|(mode, _)| mode.as_str())
                    .collect();
                bail!(
                    "machine {:?} has online APQNs in modes {modes:?}; the demo needs cards in \
                     three modes (ep11, cca and accel), as in cex8-mixed-lpar",
                    machine.name
                )
            }
        }
    }
}

/// Renders `cex_resources.json` holding `sets`.
pub fn config_json(sets: &[DemoSet]) -> String {
    let sets: Vec<serde_json::Value> = sets.iter().map(|set| set.to_json()).collect();
    let document = json!({ "cryptoconfigsets": sets });
    // A `Value` built from strings and numbers always serializes.
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_machine_gives_three_sets() {
        let machine = cex_sim::machines::by_name("cex8-mixed-lpar").expect("built-in machine");
        let sets = DemoSets::for_machine(&machine).expect("three modes");
        assert_eq!(sets.first.mode, CexMode::Ep11);
        assert_eq!(sets.second.mode, CexMode::Cca);
        assert_eq!(sets.added.mode, CexMode::Accel);
        assert!(!sets.first.apqns.is_empty());
        assert_eq!(sets.first.resource(), "cex.s390.ibm.com/ep11-demo");
    }

    #[test]
    fn one_card_machine_is_rejected() {
        let machine = cex_sim::machines::by_name("zvm-guest-one-card").expect("built-in machine");
        let error = DemoSets::for_machine(&machine).expect_err("one mode only");
        assert!(error.to_string().contains("zvm-guest-one-card"), "{error}");
    }

    #[test]
    fn config_lists_overcommit_only_when_set() {
        let mut set = DemoSet::new(CexMode::Cca, vec![Apqn::new(1, 6)]);
        let plain: serde_json::Value =
            serde_json::from_str(&config_json(std::slice::from_ref(&set))).expect("valid JSON");
        assert!(plain["cryptoconfigsets"][0].get("overcommit").is_none());
        set.overcommit = Some(3);
        assert_eq!(set.expected_devices(), 3);
        let text = config_json(&[set.clone()]);
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed["cryptoconfigsets"][0]["overcommit"], 3);
        assert_eq!(parsed["cryptoconfigsets"][0]["apqns"][0]["domain"], 6);
    }
}
