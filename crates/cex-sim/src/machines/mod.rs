//! Built-in descriptions of IBM Z machines with Crypto Express cards.
//!
//! A description lists what a simulated node shows: the machine identity
//! of `/proc/sysinfo`, which optional sysfs files the kernel has, the AP
//! bus attributes, and every card and queue with its type and state. The
//! descriptions are JSON files embedded in the crate (`machines/*.json`)
//! plus one generated machine near the hardware maximum. `layout` turns a
//! description into a directory tree.

mod parse;
mod scale;

use std::collections::BTreeMap;

use cex_ap::{Apqn, CardType, CexMode, Mask256};

pub use parse::parse;

/// A machine description that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The text is not JSON of the description schema.
    #[error("invalid machine description: {source}")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    /// A value is out of range or contradicts another one.
    #[error("machine {machine:?}: {reason}")]
    Invalid { machine: String, reason: String },
}

/// The identity lines of `/proc/sysinfo`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sysinfo {
    pub manufacturer: String,
    /// Machine type, 4 characters (`3931` is a z16).
    #[serde(rename = "type")]
    pub machine_type: String,
    pub model: String,
    pub model_capacity: String,
    /// Serial number, 16 characters zero-padded on the left.
    pub sequence_code: String,
    pub plant: String,
    pub lpar: Option<Lpar>,
    #[serde(default)]
    pub vm: Vec<VmLevel>,
}

/// The LPAR block of `/proc/sysinfo`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lpar {
    pub number: u32,
    pub name: String,
    pub characteristics: String,
}

/// One virtualization level (`VM00`, `VM01`, ...) of `/proc/sysinfo`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmLevel {
    pub name: String,
    /// `z/VM    7.3.0` for z/VM, `KVM/Linux` for KVM.
    pub control_program: String,
}

impl Sysinfo {
    /// The machine id `<Manufacturer>-<Type>-<Sequence Code>` that config
    /// entries name in `machineid`.
    pub fn machine_id(&self) -> String {
        format!(
            "{}-{}-{}",
            self.manufacturer.trim(),
            self.machine_type.trim(),
            self.sequence_code.trim()
        )
    }
}

/// The optional sysfs files the described kernel has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelFeatures {
    /// Card and queue `config` and `chkstop` files, queue `ap_functions`.
    pub config_chkstop: bool,
    /// Bus `scans`, `bindings` and `ap_max_adapter_id`.
    pub bindings_scans: bool,
    /// Bus `features`.
    pub features: bool,
    /// Card `max_msg_size`.
    pub max_msg_size: bool,
    /// `sys/class/zcrypt/{create,destroy}`: multiple zcrypt device nodes.
    pub zcrypt_multinode: bool,
}

/// The bus attributes of `sys/bus/ap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApBus {
    /// With QCI the three `ap_*_mask` files hold masks, else `not supported`.
    pub qci: bool,
    /// The default domain, -1 when there is none.
    pub ap_domain: i32,
    pub ap_max_domain_id: u8,
    pub ap_max_adapter_id: u8,
    pub adapter_mask: Mask256,
    pub usage_domain_mask: Mask256,
    pub control_domain_mask: Mask256,
    pub apmask: Mask256,
    pub aqmask: Mask256,
    pub ap_interrupts: bool,
    pub poll_thread: bool,
    /// Poll timer period in nanoseconds.
    pub poll_timeout: u64,
    /// Seconds between periodic bus rescans.
    pub config_time: u32,
    pub scans: u64,
    /// Space-separated facility names such as `APSC APXA QACT`.
    pub features: String,
}

/// EP11 firmware attributes of an EP11 card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ep11Info {
    pub api_ordinalnr: u32,
    pub fw_version: String,
    pub op_modes: String,
}

/// One card (`sys/devices/ap/cardXX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSpec {
    pub adapter: u8,
    pub card_type: CardType,
    pub hwtype: u32,
    pub raw_hwtype: u32,
    pub ap_functions: u32,
    pub depth: u32,
    pub config: bool,
    pub chkstop: bool,
    /// The software online flag; `online` reads 1 only when the card is
    /// also configured and not check-stopped (see `reads_online`).
    pub online: bool,
    /// The bound driver (`cex4card`), `None` for an unbound card.
    pub driver: Option<String>,
    pub serialnr: String,
    pub ep11: Option<Ep11Info>,
    pub max_msg_size: u32,
    pub request_count: u64,
    pub queues: Vec<QueueSpec>,
}

/// One queue (`sys/devices/ap/cardXX/XX.YYYY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub domain: u8,
    pub config: bool,
    pub chkstop: bool,
    /// The software online flag, as for cards.
    pub online: bool,
    /// `cex4queue`, `vfio_ap`, or `None` for an unbound queue.
    pub driver: Option<String>,
    pub request_count: u64,
    pub ap_functions: u32,
    /// `mkvps` text (CCA and EP11 queues).
    pub mkvps: Option<String>,
}

impl CardSpec {
    pub fn mode(&self) -> CexMode {
        self.card_type.mode
    }

    /// The value the card's `online` file shows.
    pub fn reads_online(&self) -> bool {
        self.online && self.config && !self.chkstop
    }

    /// Reports whether `cex4card` is bound, so zcrypt attributes exist.
    pub fn is_zcrypt_bound(&self) -> bool {
        self.driver.as_deref() == Some("cex4card")
    }

    pub fn queue(&self, domain: u8) -> Option<&QueueSpec> {
        self.queues.iter().find(|queue| queue.domain == domain)
    }
}

impl QueueSpec {
    /// The value the queue's `online` file shows.
    pub fn reads_online(&self) -> bool {
        self.online && self.config && !self.chkstop
    }

    /// Reports whether the queue device is uninitialised, which makes its
    /// `request_count` read `-`.
    pub fn is_uninitialised(&self) -> bool {
        !self.config || self.chkstop
    }

    pub fn is_zcrypt_bound(&self) -> bool {
        self.driver.as_deref() == Some("cex4queue")
    }
}

/// A parsed machine description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    pub name: String,
    pub summary: String,
    /// True when not modelled on a published machine listing.
    pub synthetic: bool,
    pub sysinfo: Sysinfo,
    pub kernel: KernelFeatures,
    /// `None` for a node without an AP bus.
    pub ap_bus: Option<ApBus>,
    /// Cards in ascending adapter order.
    pub cards: Vec<CardSpec>,
}

impl Machine {
    pub fn machine_id(&self) -> String {
        self.sysinfo.machine_id()
    }

    pub fn card(&self, adapter: u8) -> Option<&CardSpec> {
        self.cards.iter().find(|card| card.adapter == adapter)
    }

    pub fn card_mut(&mut self, adapter: u8) -> Option<&mut CardSpec> {
        self.cards.iter_mut().find(|card| card.adapter == adapter)
    }

    pub fn queue(&self, apqn: Apqn) -> Option<&QueueSpec> {
        self.card(apqn.adapter)?.queue(apqn.domain)
    }

    /// Every APQN with its card and queue, in ascending order.
    pub fn apqns(&self) -> BTreeMap<Apqn, (&CardSpec, &QueueSpec)> {
        self.cards
            .iter()
            .flat_map(|card| {
                card.queues
                    .iter()
                    .map(move |queue| (Apqn::new(card.adapter, queue.domain), (card, queue)))
            })
            .collect()
    }

    pub fn apqn_count(&self) -> usize {
        self.cards.iter().map(|card| card.queues.len()).sum()
    }
}

const EMBEDDED: &[(&str, &str)] = &[
    (
        "cex8-mixed-lpar",
        include_str!("../../machines/cex8-mixed-lpar.json"),
    ),
    (
        "cex5-cex6-older-lpar",
        include_str!("../../machines/cex5-cex6-older-lpar.json"),
    ),
    ("cex7-lpar", include_str!("../../machines/cex7-lpar.json")),
    (
        "zvm-guest-one-card",
        include_str!("../../machines/zvm-guest-one-card.json"),
    ),
    (
        "degraded-cex6-node",
        include_str!("../../machines/degraded-cex6-node.json"),
    ),
    ("no-ap-bus", include_str!("../../machines/no-ap-bus.json")),
];

/// The name of the generated machine near the hardware maximum.
pub const SCALE_MACHINE: &str = scale::NAME;

/// The names of all built-in machines, in a stable order.
pub fn names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = EMBEDDED.iter().map(|(name, _)| *name).collect();
    names.push(scale::NAME);
    names
}

/// All built-in machines, parsed.
pub fn all() -> Vec<Machine> {
    names().into_iter().filter_map(by_name).collect()
}

/// The built-in machine called `name`, or `None` when there is none.
pub fn by_name(name: &str) -> Option<Machine> {
    if name == scale::NAME {
        return Some(scale::generate());
    }
    let (_, text) = EMBEDDED.iter().find(|(known, _)| *known == name)?;
    // The embedded files are parsed by this module's tests, so a failure
    // here is a build defect, not an input error.
    Some(parse(text).expect("built-in machine descriptions parse (checked by tests)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_description_parses() {
        for (name, text) in EMBEDDED {
            let machine = parse(text).unwrap_or_else(|error| panic!("{name}: {error}"));
            assert_eq!(&machine.name, name, "file name and description name differ");
            assert!(!machine.summary.is_empty(), "{name} has no summary");
        }
    }

    #[test]
    fn names_are_unique_and_resolvable() {
        let names = names();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        for name in names {
            assert!(by_name(name).is_some(), "{name}");
        }
        assert!(by_name("no-such-machine").is_none());
    }

    #[test]
    fn machine_id_joins_trimmed_fields() {
        let machine = by_name("cex8-mixed-lpar").expect("built in");
        assert_eq!(machine.machine_id(), "IBM-3931-00000000000C4A17");
    }

    #[test]
    fn scale_machine_is_near_hardware_maximum() {
        let machine = by_name(SCALE_MACHINE).expect("built in");
        assert_eq!(machine.cards.len(), 64);
        assert_eq!(machine.apqn_count(), 64 * 85);
    }
}
