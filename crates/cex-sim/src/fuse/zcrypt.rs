//! `create` and `destroy` of zcrypt device nodes, as `zcdn_create_store`
//! and `zcdn_destroy_store` in drivers/s390/crypto/zcrypt_api.c handle
//! them, with udev's `/dev/<name>` made in the same step unless a delay
//! is injected.

use std::time::Instant;

use cex_ap::Mask256;
use fuser::Errno;

use super::model::{Attr, CreateFault, NodeMask, Sim, ZNode};
use super::tree::{Content, Kind};
use crate::kernel::{MAX_MINORS, MAX_NAME_LEN, ZCRYPT_MAJOR};

const CLASS_DIR: &str = "sys/class/zcrypt";
const NODES_DIR: &str = "sys/devices/virtual/zcrypt";

/// Extracts the node name from a `create` or `destroy` write. Leading
/// whitespace is skipped, at most 31 bytes are kept, and trailing
/// whitespace is stripped.
fn requested_name(data: &[u8]) -> String {
    let start = data
        .iter()
        .position(|byte| !byte.is_ascii_whitespace())
        .unwrap_or(data.len());
    let kept = &data[start..data.len().min(start + MAX_NAME_LEN)];
    String::from_utf8_lossy(kept).trim_end().to_string()
}

impl Sim {
    /// Handles a write to `create`.
    pub(crate) fn create(&mut self, data: &[u8]) -> Result<(), Errno> {
        if let Some(fault) = self.create_faults.pop_front() {
            tracing::debug!(?fault, "FUSE node applies an injected create fault");
            return match fault {
                CreateFault::Errno(errno) => Err(Errno::from_i32(errno)),
                CreateFault::Silent => Ok(()),
            };
        }
        let requested = requested_name(data);
        if !requested.is_empty() && self.nodes.contains_key(&requested) {
            return Err(Errno::EEXIST);
        }
        let used: Vec<u32> = self.nodes.values().map(|node| node.minor).collect();
        let minor = (0..MAX_MINORS)
            .find(|minor| !used.contains(minor))
            .ok_or(Errno::ENOSPC)?;
        // The driver core turns '/' in a device name into '!'.
        let name = match requested.as_str() {
            "" => format!("zcrypt_{minor}"),
            _ => requested.replace('/', "!"),
        };
        if name == "." || name == ".." {
            return Err(Errno::EINVAL);
        }
        if self.nodes.contains_key(&name) {
            return Err(Errno::EEXIST);
        }
        self.make_node(&name, minor)?;
        tracing::debug!(name = %name, minor, "FUSE node created zcrypt node");
        Ok(())
    }

    fn make_node(&mut self, name: &str, minor: u32) -> Result<(), Errno> {
        let nodes_dir = self.tree.resolve(NODES_DIR).ok_or(Errno::ENODEV)?;
        let class_dir = self.tree.resolve(CLASS_DIR).ok_or(Errno::ENODEV)?;
        let dev_dir = self.tree.resolve("dev").ok_or(Errno::ENODEV)?;
        self.nodes.insert(
            name.to_string(),
            ZNode {
                minor,
                masks: [Mask256::empty(); 4],
            },
        );

        let tree = &mut self.tree;
        let dir = tree.add_dir(nodes_dir, name);
        for (mask, file) in NodeMask::ALL {
            let attr = Attr::NodeMask(name.to_string(), mask);
            tree.add_file(dir, file, Content::Attr(attr), 0o644);
        }
        let dev = format!("{ZCRYPT_MAJOR}:{minor}\n");
        tree.add_file(dir, "dev", Content::Fixed(dev.into_bytes()), 0o444);
        let uevent = format!("MAJOR={ZCRYPT_MAJOR}\nMINOR={minor}\nDEVNAME={name}\n");
        tree.add_file(dir, "uevent", Content::Fixed(uevent.into_bytes()), 0o644);
        tree.add_dir(dir, "power");
        tree.add_symlink(dir, "subsystem", "../../../../class/zcrypt");
        tree.add_symlink(
            class_dir,
            name,
            &format!("../../devices/virtual/zcrypt/{name}"),
        );

        let device = Kind::CharDevice {
            major: ZCRYPT_MAJOR,
            minor,
        };
        let dev_node = tree.add(dev_dir, name, device, 0o600);
        if let (Some(delay), Some(inode)) = (self.dev_node_delay, tree.get_mut(dev_node)) {
            inode.visible_at = Some(Instant::now() + delay);
        }
        Ok(())
    }

    /// Handles a write to `destroy`.
    pub(crate) fn destroy(&mut self, data: &[u8]) -> Result<(), Errno> {
        let name = requested_name(data);
        if self.nodes.remove(&name).is_none() {
            return Err(Errno::ENOENT);
        }
        self.tree.remove_path(&format!("{NODES_DIR}/{name}"));
        self.tree.remove_path(&format!("{CLASS_DIR}/{name}"));
        // NOTE: the kernel keeps /dev/<name> until the last opener closes
        // it; the simulation removes it at once.
        self.tree.remove_path(&format!("dev/{name}"));
        tracing::debug!(name = %name, "FUSE node destroyed zcrypt node");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_name_trims_and_cuts() {
        assert_eq!(requested_name(b"  node-1 \n"), "node-1");
        assert_eq!(requested_name(b"\n"), "");
        assert_eq!(requested_name(&[b'x'; 40]), "x".repeat(31));
    }
}
