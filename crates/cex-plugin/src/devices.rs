//! Plug-in devices: what one config set offers the kubelet on this node.

use cex_ap::DeviceId;

/// One plug-in device of a set as announced on ListAndWatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PluginDevice {
    pub id: DeviceId,
    pub healthy: bool,
}

/// What one set currently announces, as the allocation path sees it.
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
        self.devices.binary_search_by(|device| device.id.cmp(id)).ok().map(|i| &self.devices[i])
    }
}
