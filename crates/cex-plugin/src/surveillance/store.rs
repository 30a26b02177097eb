//! The zcrypt nodes and shadow dirs of this host, listed and removed
//! through cex-node (zcrypt `destroy`, no-follow shadow dir removal).

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;

use cex_ap::DeviceId;
use cex_node::{NodePaths, ShadowBase, ShadowError, ZcryptError, ZcryptNodes};
use tracing::info;

use super::cleanup::{NodeKind, NodeStore};

/// A failed listing or removal of a zcrypt node or shadow dir.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Zcrypt(#[from] ZcryptError),
    #[error(transparent)]
    Shadow(#[from] ShadowError),
    /// `DEV_DIR` could not be read.
    #[error("listing {} failed: {source}", dir.display())]
    ListDev { dir: PathBuf, source: io::Error },
    /// A `/dev` entry left without its zcrypt node could not be removed.
    #[error("removing the stale device file {} failed: {source}", path.display())]
    RemoveDev { path: PathBuf, source: io::Error },
}

/// The per-device objects below the host paths of one node.
#[derive(Debug, Clone)]
pub struct FsNodeStore {
    zcrypt: ZcryptNodes,
    nodes_dir: PathBuf,
    dev_dir: PathBuf,
    shadow_base: PathBuf,
}

impl FsNodeStore {
    /// Creates a store over `paths` that destroys zcrypt nodes through `zcrypt`.
    pub fn new(paths: &NodePaths, zcrypt: ZcryptNodes) -> Self {
        FsNodeStore {
            zcrypt,
            nodes_dir: paths.zcrypt_nodes_dir.clone(),
            dev_dir: paths.dev_dir.clone(),
            shadow_base: paths.shadow_base.clone(),
        }
    }

    /// Names of `zcrypt-apqn-*` entries in `DEV_DIR`; a missing dir is empty.
    fn dev_names(&self) -> Result<Vec<String>, StoreError> {
        let list_error = |source| StoreError::ListDev {
            dir: self.dev_dir.clone(),
            source,
        };
        let entries = match fs::read_dir(&self.dev_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(list_error(error)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(list_error)?;
            if let Some(name) = entry.file_name().to_str() {
                if name.starts_with("zcrypt-apqn-") {
                    names.push(name.to_string());
                }
            }
        }
        Ok(names)
    }

    fn destroy_zcrypt_node(&self, device: &DeviceId) -> Result<(), StoreError> {
        let name = device.zcrypt_node_name();
        if self.nodes_dir.join(&name).symlink_metadata().is_ok() {
            self.zcrypt.destroy(&name)?;
        }
        // A /dev entry the kernel no longer backs (udev missed the removal,
        // or the node was destroyed by hand) is unlinked, but only when it
        // is a device or plain file: unlinking never follows a symlink.
        let dev_path = self.dev_dir.join(&name);
        let Ok(meta) = dev_path.symlink_metadata() else {
            return Ok(());
        };
        let kind = meta.file_type();
        if self.nodes_dir.join(&name).symlink_metadata().is_err()
            && (kind.is_char_device() || kind.is_file())
        {
            match fs::remove_file(&dev_path) {
                Ok(()) => info!(path = %dev_path.display(), "PodLister: removed stale device file"),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StoreError::RemoveDev {
                        path: dev_path,
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

impl NodeStore for FsNodeStore {
    type Error = StoreError;

    fn list_names(&self, kind: NodeKind) -> Result<Vec<String>, StoreError> {
        match kind {
            NodeKind::ZcryptNode => {
                let mut names: Vec<String> = self
                    .zcrypt
                    .list()?
                    .iter()
                    .map(DeviceId::zcrypt_node_name)
                    .collect();
                names.extend(self.dev_names()?);
                names.sort();
                names.dedup();
                Ok(names)
            }
            NodeKind::ShadowDir => {
                let base = ShadowBase::open(&self.shadow_base)?;
                Ok(base.list()?.iter().map(DeviceId::shadow_dir_name).collect())
            }
        }
    }

    fn remove(&self, kind: NodeKind, device: &DeviceId) -> Result<(), StoreError> {
        match kind {
            NodeKind::ZcryptNode => self.destroy_zcrypt_node(device),
            NodeKind::ShadowDir => {
                ShadowBase::open(&self.shadow_base)?.remove(device)?;
                Ok(())
            }
        }
    }
}
