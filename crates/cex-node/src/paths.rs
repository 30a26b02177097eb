//! The host paths the allocation path reads and writes.

use std::path::{Path, PathBuf};

/// Every host path used by zcrypt node and shadow sysfs handling.
///
/// The agent fills this from its settings; tests and the simulator point
/// it at a temp dir laid out like a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    /// The AP bus dir, `/sys/bus/ap` on a host.
    pub ap_bus_dir: PathBuf,
    /// The AP devices dir, `/sys/devices/ap` on a host.
    pub ap_devs_dir: PathBuf,
    /// The zcrypt class dir holding `create` and `destroy`, `/sys/class/zcrypt` on a host.
    pub zcrypt_class_dir: PathBuf,
    /// The zcrypt node attribute dirs, `/sys/devices/virtual/zcrypt` on a host.
    pub zcrypt_nodes_dir: PathBuf,
    /// The directory where zcrypt device nodes appear, `/dev` on a host.
    pub dev_dir: PathBuf,
    /// The shadow sysfs base dir, `/var/tmp/shadowsysfs` by default.
    pub shadow_base: PathBuf,
}

impl NodePaths {
    /// Lays the host paths out below `root` the way a simulated node is
    /// laid out (`<root>/sys/bus/ap`, `<root>/dev`, ...), with the shadow
    /// base given separately.
    pub fn under_root(root: &Path, shadow_base: &Path) -> Self {
        Self {
            ap_bus_dir: root.join("sys/bus/ap"),
            ap_devs_dir: root.join("sys/devices/ap"),
            zcrypt_class_dir: root.join("sys/class/zcrypt"),
            zcrypt_nodes_dir: root.join("sys/devices/virtual/zcrypt"),
            dev_dir: root.join("dev"),
            shadow_base: shadow_base.to_path_buf(),
        }
    }
}
