//! Crypto config sets: the cluster-wide `cex_resources.json` that groups
//! equivalent APQNs into sets, each offered to the kubelet as one resource
//! `cex.s390.ibm.com/<setname>`.

#![forbid(unsafe_code)]

use cex_ap::CexMode;

/// The resource name prefix; a set's resource is this plus its name.
pub const RESOURCE_PREFIX: &str = "cex.s390.ibm.com/";

/// A verified configuration: the sets in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CryptoConfig {
    pub sets: Vec<ConfigSet>,
}

/// One crypto config set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSet {
    pub setname: String,
    /// The namespace meant to use the set.
    pub project: String,
    /// Only APQNs on cards in this mode are announced.
    pub cexmode: Option<CexMode>,
    /// Only APQNs on cards of this generation or newer are announced.
    pub mincexgen: Option<u32>,
    /// Plug-in devices per APQN; 0 means 1; `None` takes the agent default.
    pub overcommit: Option<u32>,
    /// 0 static shadow sysfs, above 0 live; `None` takes the agent default.
    pub livesysfs: Option<u32>,
    pub apqns: Vec<ConfigApqn>,
}

/// One APQN entry of a set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigApqn {
    pub adapter: u8,
    pub domain: u8,
    /// `<Manufacturer>-<Type>-<Sequence Code>`; empty matches every machine.
    pub machineid: String,
}

impl ConfigSet {
    /// The extended resource name registered with the kubelet.
    pub fn resource_name(&self) -> String {
        format!("{RESOURCE_PREFIX}{}", self.setname)
    }
}

impl ConfigApqn {
    pub fn apqn(&self) -> cex_ap::Apqn {
        cex_ap::Apqn::new(self.adapter, self.domain)
    }

    /// Reports whether this entry applies on the machine `machine_id`.
    pub fn applies_to(&self, machine_id: &str) -> bool {
        self.machineid.is_empty() || self.machineid == machine_id
    }
}
