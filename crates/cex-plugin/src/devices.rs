//! Plug-in devices: what one config set offers the kubelet on this node.

use cex_ap::{Apqn, CexMode, DeviceId, Inventory};
use cex_config::{ConfigApqn, ConfigSet};
use cex_kubelet_api::deviceplugin::v1beta1::{Device, UNHEALTHY};
use cex_kubelet_api::prost;

use crate::settings::MAX_OVERCOMMIT;

/// One plug-in device of a set as announced on ListAndWatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PluginDevice {
    pub id: DeviceId,
    pub healthy: bool,
}

/// The devices one set currently announces, as the allocation path reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSnapshot {
    pub name: String,
    pub project: String,
    /// Whether allocations of this set get the live shadow sysfs.
    pub live_sysfs: bool,
    /// Every announced device in id order, healthy or not.
    pub devices: Vec<PluginDevice>,
}

impl SetSnapshot {
    /// The announced device with this id, if any.
    pub fn device(&self, id: &DeviceId) -> Option<&PluginDevice> {
        self.devices
            .binary_search_by(|device| device.id.cmp(id))
            .ok()
            .map(|i| &self.devices[i])
    }
}

/// Agent-wide defaults for set fields that a set leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetDefaults {
    /// `APQN_OVERCOMMIT_LIMIT`: plug-in devices per APQN.
    pub overcommit: u32,
    /// `APQN_LIVE_SYSFS`: live shadow sysfs.
    pub live_sysfs: bool,
}

/// Why a configured APQN is not announced for a set on this node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub enum ExclusionReason {
    /// The entry names another machine.
    #[error("configured for machine {wanted:?}, this node is on {actual:?}")]
    OtherMachine { wanted: String, actual: String },
    /// The APQN is not on this node's AP bus (not yet plugged, or unplugged).
    #[error("not present on this node")]
    Absent,
    /// The card's type is unknown, so `cexmode` or `mincexgen` cannot be
    /// checked (no zcrypt driver bound to the card).
    #[error("card type unknown, cannot check cexmode or mincexgen")]
    UnknownCardType,
    /// The card runs in another mode than the set's `cexmode`.
    #[error("card mode {actual} differs from cexmode {wanted}")]
    Mode { wanted: CexMode, actual: CexMode },
    /// The card is older than the set's `mincexgen`.
    #[error("card generation cex{actual} is older than mincexgen cex{wanted}")]
    Generation { wanted: u32, actual: u32 },
}

/// A configured APQN that a set does not announce, with the reason.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Exclusion {
    pub apqn: Apqn,
    pub reason: ExclusionReason,
}

/// Returns the plug-in devices set `set` announces on this node and the
/// configured APQNs it leaves out.
///
/// Each APQN of the set that applies to `machine_id`, is present in
/// `inventory` and sits on a card matching `cexmode` and `mincexgen`
/// yields ids `apqn-<a>-<d>-0 .. apqn-<a>-<d>-<overcommit - 1>`. Health
/// follows [`Inventory::is_usable`]: an offline, deconfigured or
/// check-stopped APQN stays listed as Unhealthy, so containers holding
/// it keep their accounting. An APQN that vanished from the bus is no
/// longer announced at all: the kubelet then drops its capacity, and the
/// ids come back when the APQN is plugged in again. When the list would
/// not fit in one kubelet message, every APQN gets fewer ids (see
/// [`fitting_overcommit`]) and a warning names the set and both counts.
pub fn derive_set_devices(
    set: &ConfigSet,
    inventory: &Inventory,
    machine_id: &str,
    defaults: &SetDefaults,
) -> (Vec<PluginDevice>, Vec<Exclusion>) {
    let overcommit = set
        .overcommit
        .unwrap_or(defaults.overcommit)
        .clamp(1, MAX_OVERCOMMIT);
    let mut announced = Vec::new();
    let mut exclusions = Vec::new();
    for entry in &set.apqns {
        let apqn = entry.apqn();
        match check_entry(set, entry, inventory, machine_id) {
            Ok(()) => announced.push(apqn),
            Err(reason) => exclusions.push(Exclusion { apqn, reason }),
        }
    }
    announced.sort();
    announced.dedup();
    let slots = fitting_overcommit(&announced, overcommit);
    if slots < overcommit {
        tracing::warn!(
            set = %set.setname,
            requested = overcommit,
            announced = slots,
            apqns = announced.len(),
            "Plugin['{}']: overcommit {overcommit} for {} APQNs would exceed the kubelet's {} byte ListAndWatch message limit, announcing {slots} devices per APQN",
            set.setname,
            announced.len(),
            KUBELET_MAX_MESSAGE_BYTES
        );
    }
    let mut devices = Vec::with_capacity(announced.len() * slots as usize);
    for &apqn in &announced {
        let healthy = inventory.is_usable(apqn);
        for index in 0..slots {
            devices.push(PluginDevice {
                id: DeviceId::new(apqn, index),
                healthy,
            });
        }
    }
    devices.sort();
    devices.dedup_by_key(|device| device.id);
    exclusions.sort();
    (devices, exclusions)
}

/// Builds the snapshot of set `set` from [`derive_set_devices`].
pub fn derive_snapshot(
    set: &ConfigSet,
    inventory: &Inventory,
    machine_id: &str,
    defaults: &SetDefaults,
) -> (SetSnapshot, Vec<Exclusion>) {
    let (devices, exclusions) = derive_set_devices(set, inventory, machine_id, defaults);
    let live_sysfs = set.livesysfs.map_or(defaults.live_sysfs, |live| live > 0);
    let snapshot = SetSnapshot {
        name: set.setname.clone(),
        project: set.project.clone(),
        live_sysfs,
        devices,
    };
    (snapshot, exclusions)
}

/// The kubelet's limit on one received gRPC message. The kubelet reads
/// ListAndWatch through a grpc-go client, whose default limit is 4 MiB.
pub const KUBELET_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The size a set's ListAndWatch message may reach: the kubelet's limit
/// less a margin for the gRPC frame header and later protocol fields.
pub const LIST_MESSAGE_BUDGET_BYTES: usize = KUBELET_MAX_MESSAGE_BYTES - 256 * 1024;

/// Returns the largest number of devices per APQN, at most `overcommit`
/// and at least 1, whose ListAndWatch message for `apqns` stays within
/// [`LIST_MESSAGE_BUDGET_BYTES`].
///
/// Every device is sized with the longer health value `Unhealthy`, so a
/// health change cannot push a list over the budget. One device per
/// APQN always fits: 65,536 APQNs take at most about 2 MiB.
pub fn fitting_overcommit(apqns: &[Apqn], overcommit: u32) -> u32 {
    let longest = listed_device_len(DeviceId::new(Apqn::new(255, 255), MAX_OVERCOMMIT - 1));
    if apqns.len() * overcommit as usize * longest <= LIST_MESSAGE_BUDGET_BYTES {
        return overcommit;
    }
    let mut total = 0;
    for index in 0..overcommit {
        for &apqn in apqns {
            total += listed_device_len(DeviceId::new(apqn, index));
        }
        if total > LIST_MESSAGE_BUDGET_BYTES {
            return index.max(1);
        }
    }
    overcommit
}

/// Returns the bytes one device adds to an encoded ListAndWatchResponse.
pub fn listed_device_len(id: DeviceId) -> usize {
    let device = Device {
        id: id.to_string(),
        health: UNHEALTHY.to_string(),
        topology: None,
    };
    prost::encoding::message::encoded_len(1, &device)
}

fn check_entry(
    set: &ConfigSet,
    entry: &ConfigApqn,
    inventory: &Inventory,
    machine_id: &str,
) -> Result<(), ExclusionReason> {
    if !entry.applies_to(machine_id) {
        return Err(ExclusionReason::OtherMachine {
            wanted: entry.machineid.clone(),
            actual: machine_id.to_string(),
        });
    }
    let apqn = entry.apqn();
    if inventory.queue(apqn).is_none() {
        return Err(ExclusionReason::Absent);
    }
    if set.cexmode.is_none() && set.mincexgen.is_none() {
        return Ok(());
    }
    let card_type = inventory
        .card(apqn.adapter)
        .and_then(|card| card.card_type)
        .ok_or(ExclusionReason::UnknownCardType)?;
    if let Some(wanted) = set.cexmode {
        if card_type.mode != wanted {
            return Err(ExclusionReason::Mode {
                wanted,
                actual: card_type.mode,
            });
        }
    }
    if let Some(wanted) = set.mincexgen {
        if card_type.generation < wanted {
            return Err(ExclusionReason::Generation {
                wanted,
                actual: card_type.generation,
            });
        }
    }
    Ok(())
}

/// Formats device ids with their health for log lines:
/// `apqn-1-5-0 (Healthy), apqn-2-5-0 (Unhealthy)`, at most
/// `MAX_LOGGED_DEVICES` of them followed by `and N more`.
pub fn format_devices(devices: &[PluginDevice]) -> String {
    let mut parts: Vec<String> = devices
        .iter()
        .take(MAX_LOGGED_DEVICES)
        .map(|device| {
            let health = if device.healthy {
                "Healthy"
            } else {
                "Unhealthy"
            };
            format!("{} ({health})", device.id)
        })
        .collect();
    if devices.len() > MAX_LOGGED_DEVICES {
        parts.push(format!("and {} more", devices.len() - MAX_LOGGED_DEVICES));
    }
    parts.join(", ")
}

/// The maximum number of device ids one log line lists. Without it, a set of
/// thousands of APQNs at high overcommit would log lines of megabytes.
const MAX_LOGGED_DEVICES: usize = 64;

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use cex_ap::{Card, Queue};
    use cex_config::ConfigApqn;

    use super::*;

    const MACHINE: &str = "IBM-3931-0000000000012345";

    fn card(adapter: u8, card_type: &str) -> Card {
        Card {
            adapter,
            card_type: Some(card_type.parse().expect("valid type")),
            hwtype: Some(14),
            raw_hwtype: Some(14),
            online: Some(true),
            config: None,
            chkstop: None,
        }
    }

    fn queue(adapter: u8, domain: u8, online: bool) -> Queue {
        Queue {
            apqn: Apqn::new(adapter, domain),
            online: Some(online),
            config: None,
            chkstop: None,
        }
    }

    /// card01 CEX8P with 01.0005 online, card02 CEX6C with 02.0005 offline.
    fn inventory() -> Inventory {
        Inventory {
            cards: BTreeMap::from([(1, card(1, "CEX8P")), (2, card(2, "CEX6C"))]),
            queues: BTreeMap::from([
                (Apqn::new(1, 5), queue(1, 5, true)),
                (Apqn::new(2, 5), queue(2, 5, false)),
            ]),
        }
    }

    fn entry(adapter: u8, domain: u8, machineid: &str) -> ConfigApqn {
        ConfigApqn {
            adapter,
            domain,
            machineid: machineid.to_string(),
        }
    }

    fn set(apqns: Vec<ConfigApqn>) -> ConfigSet {
        ConfigSet {
            setname: "blue".to_string(),
            project: "blue".to_string(),
            cexmode: None,
            mincexgen: None,
            overcommit: None,
            livesysfs: None,
            apqns,
        }
    }

    const DEFAULTS: SetDefaults = SetDefaults {
        overcommit: 2,
        live_sysfs: true,
    };

    fn ids(devices: &[PluginDevice]) -> Vec<String> {
        devices.iter().map(|device| device.id.to_string()).collect()
    }

    #[test]
    fn overcommit_default_applies() {
        let set = set(vec![entry(1, 5, "")]);
        let (devices, exclusions) = derive_set_devices(&set, &inventory(), MACHINE, &DEFAULTS);
        assert_eq!(ids(&devices), ["apqn-1-5-0", "apqn-1-5-1"]);
        assert!(exclusions.is_empty());
    }

    #[test]
    fn set_overcommit_wins_and_zero_means_one() {
        let mut set = set(vec![entry(1, 5, "")]);
        set.overcommit = Some(3);
        let (devices, _) = derive_set_devices(&set, &inventory(), MACHINE, &DEFAULTS);
        assert_eq!(ids(&devices), ["apqn-1-5-0", "apqn-1-5-1", "apqn-1-5-2"]);
        set.overcommit = Some(0);
        let (devices, _) = derive_set_devices(&set, &inventory(), MACHINE, &DEFAULTS);
        assert_eq!(ids(&devices), ["apqn-1-5-0"]);
    }

    #[test]
    fn offline_queue_is_listed_unhealthy() {
        let mut set = set(vec![entry(1, 5, ""), entry(2, 5, "")]);
        set.overcommit = Some(1);
        let (devices, _) = derive_set_devices(&set, &inventory(), MACHINE, &DEFAULTS);
        assert_eq!(ids(&devices), ["apqn-1-5-0", "apqn-2-5-0"]);
        assert!(devices[0].healthy);
        assert!(!devices[1].healthy);
    }

    #[test]
    fn absent_apqn_is_not_announced() {
        let set = set(vec![entry(3, 5, "")]);
        let (devices, exclusions) = derive_set_devices(&set, &inventory(), MACHINE, &DEFAULTS);
        assert!(devices.is_empty());
        assert_eq!(
            exclusions,
            [Exclusion {
                apqn: Apqn::new(3, 5),
                reason: ExclusionReason::Absent
            }]
        );
    }

    #[test]
    fn machine_id_filters_entries() {
        let set = set(vec![
            entry(1, 5, MACHINE),
            entry(2, 5, "IBM-8561-00000000000ABCDE"),
        ]);
        let (devices, exclusions) = derive_set_devices(&set, &inventory(), MACHINE, &DEFAULTS);
        assert_eq!(ids(&devices), ["apqn-1-5-0", "apqn-1-5-1"]);
        assert_eq!(exclusions.len(), 1);
        assert!(matches!(
            exclusions[0].reason,
            ExclusionReason::OtherMachine { .. }
        ));
    }

    #[test]
    fn cexmode_filters_cards() {
        let mut set = set(vec![entry(1, 5, ""), entry(2, 5, "")]);
        set.cexmode = Some(CexMode::Cca);
        let (devices, exclusions) = derive_set_devices(&set, &inventory(), MACHINE, &DEFAULTS);
        assert_eq!(ids(&devices), ["apqn-2-5-0", "apqn-2-5-1"]);
        let expected = ExclusionReason::Mode {
            wanted: CexMode::Cca,
            actual: CexMode::Ep11,
        };
        assert_eq!(
            exclusions,
            [Exclusion {
                apqn: Apqn::new(1, 5),
                reason: expected
            }]
        );
    }

    #[test]
    fn mincexgen_compares_numbers() {
        let mut inventory = inventory();
        inventory.cards.insert(2, card(2, "CEX10C"));
        let mut set = set(vec![entry(1, 5, ""), entry(2, 5, "")]);
        set.mincexgen = Some(9);
        let (devices, exclusions) = derive_set_devices(&set, &inventory, MACHINE, &DEFAULTS);
        assert_eq!(ids(&devices), ["apqn-2-5-0", "apqn-2-5-1"]);
        let expected = ExclusionReason::Generation {
            wanted: 9,
            actual: 8,
        };
        assert_eq!(
            exclusions,
            [Exclusion {
                apqn: Apqn::new(1, 5),
                reason: expected
            }]
        );
    }

    #[test]
    fn unknown_card_type_fails_filters_only() {
        let mut inventory = inventory();
        if let Some(card) = inventory.cards.get_mut(&1) {
            card.card_type = None;
        }
        let mut set = set(vec![entry(1, 5, "")]);
        let (devices, _) = derive_set_devices(&set, &inventory, MACHINE, &DEFAULTS);
        assert_eq!(devices.len(), 2);
        set.mincexgen = Some(4);
        let (devices, exclusions) = derive_set_devices(&set, &inventory, MACHINE, &DEFAULTS);
        assert!(devices.is_empty());
        assert_eq!(exclusions[0].reason, ExclusionReason::UnknownCardType);
    }

    /// 64 adapters with 85 domains each, all online.
    fn large_inventory() -> Inventory {
        let mut inventory = Inventory::default();
        for adapter in 0..64 {
            inventory.cards.insert(adapter, card(adapter, "CEX8P"));
            for domain in 0..85 {
                inventory
                    .queues
                    .insert(Apqn::new(adapter, domain), queue(adapter, domain, true));
            }
        }
        inventory
    }

    fn list_message_len(devices: &[PluginDevice]) -> usize {
        use cex_kubelet_api::deviceplugin::v1beta1::ListAndWatchResponse;
        use prost::Message as _;

        let devices = devices
            .iter()
            .map(|device| Device {
                id: device.id.to_string(),
                health: if device.healthy { "Healthy" } else { UNHEALTHY }.to_string(),
                topology: None,
            })
            .collect();
        ListAndWatchResponse { devices }.encoded_len()
    }

    #[test]
    fn oversized_list_is_capped_per_apqn() {
        let inventory = large_inventory();
        let entries = inventory
            .queues
            .keys()
            .map(|apqn| entry(apqn.adapter, apqn.domain, ""))
            .collect();
        let mut set = set(entries);
        set.overcommit = Some(100);
        let (devices, _) = derive_set_devices(&set, &inventory, MACHINE, &DEFAULTS);

        let apqns: BTreeSet<Apqn> = devices.iter().map(|device| device.id.apqn).collect();
        assert_eq!(apqns.len(), 64 * 85);
        let slots = devices.len() / apqns.len();
        assert!(
            slots > 1,
            "expected more than 1 device per APQN, got {slots}"
        );
        assert!(
            slots < 100,
            "expected fewer than 100 devices per APQN, got {slots}"
        );
        assert_eq!(devices.len(), slots * apqns.len());
        assert!(list_message_len(&devices) <= LIST_MESSAGE_BUDGET_BYTES);

        set.overcommit = Some(slots as u32 + 1);
        let (more, _) = derive_set_devices(&set, &inventory, MACHINE, &DEFAULTS);
        assert_eq!(more.len(), devices.len(), "one slot more must not fit");
    }

    #[test]
    fn fitting_overcommit_keeps_small_sets() {
        let apqns: Vec<Apqn> = (0..85).map(|domain| Apqn::new(1, domain)).collect();
        assert_eq!(fitting_overcommit(&apqns, 100), 100);
        assert_eq!(fitting_overcommit(&[], 100), 100);
    }

    #[test]
    fn snapshot_takes_live_sysfs_default() {
        let mut set = set(vec![entry(1, 5, "")]);
        let (snapshot, _) = derive_snapshot(&set, &inventory(), MACHINE, &DEFAULTS);
        assert!(snapshot.live_sysfs);
        set.livesysfs = Some(0);
        let (snapshot, _) = derive_snapshot(&set, &inventory(), MACHINE, &DEFAULTS);
        assert!(!snapshot.live_sysfs);
        assert_eq!(
            snapshot
                .device(&"apqn-1-5-1".parse().expect("id"))
                .map(|d| d.healthy),
            Some(true)
        );
    }

    #[test]
    fn format_devices_caps_long_lists() {
        let devices: Vec<PluginDevice> = (0..100)
            .map(|index| PluginDevice {
                id: DeviceId::new(cex_ap::Apqn::new(1, 5), index),
                healthy: index % 2 == 0,
            })
            .collect();
        let text = format_devices(&devices);
        assert!(
            text.starts_with("apqn-1-5-0 (Healthy), apqn-1-5-1 (Unhealthy)"),
            "{text}"
        );
        assert!(text.contains("apqn-1-5-63 (Unhealthy)"), "{text}");
        assert!(!text.contains("apqn-1-5-64 "), "{text}");
        assert!(text.ends_with(", and 36 more"), "{text}");
        assert_eq!(
            format_devices(&devices[..2]),
            "apqn-1-5-0 (Healthy), apqn-1-5-1 (Unhealthy)"
        );
    }
}
