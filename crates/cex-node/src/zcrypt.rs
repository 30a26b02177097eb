//! zcrypt device nodes restricted to one APQN.
//!
//! A kernel with multiple zcrypt node support (4.20 and later) has
//! `/sys/class/zcrypt/create` and `destroy`. Writing a name to `create`
//! makes `/sys/devices/virtual/zcrypt/<name>/` with the masks `apmask`,
//! `aqmask`, `admask` and `ioctlmask` (all zero at first), and udev makes
//! `/dev/<name>` shortly after. Writing the name to `destroy` removes the
//! node (see drivers/s390/crypto/zcrypt_api.c, `zcdn_create_store`).
//!
//! Every write is one `write()` of the whole value on a file opened with
//! `O_WRONLY | O_TRUNC`, so a simulation made of plain files reads back
//! exactly the value written. Writes to `create` and `destroy` are
//! serialised per class dir within this process, and the lock is held
//! until the kernel has acted on the name, because a plain file cannot
//! keep two writers apart the way the kernel does.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use cex_ap::{DeviceId, Mask256};

use crate::wait::wait_until;
use crate::NodePaths;

/// The default bound on waiting for a new node to appear.
pub const DEFAULT_CREATE_TIMEOUT: Duration = Duration::from_secs(5);

/// The mask files of a node attribute dir, in the order they are written.
const MASK_FILES: [&str; 4] = ["apmask", "aqmask", "admask", "ioctlmask"];

/// A failed zcrypt node operation, naming the node and the file.
#[derive(Debug, thiserror::Error)]
pub enum ZcryptError {
    #[error("zcrypt multiple device nodes are not supported: {} is missing", create.display())]
    NotSupported { create: PathBuf },
    #[error("zcrypt node {node}: writing {value:?} to {} failed: {source}", file.display())]
    Write {
        node: String,
        file: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("zcrypt node {node}: short write to {}: {written} of {len} bytes", file.display())]
    ShortWrite {
        node: String,
        file: PathBuf,
        written: usize,
        len: usize,
    },
    #[error("zcrypt node {node}: reading {} failed: {source}", file.display())]
    Read {
        node: String,
        file: PathBuf,
        source: io::Error,
    },
    #[error("zcrypt node {node}: {} did not appear within {waited:?}", path.display())]
    NotCreated {
        node: String,
        path: PathBuf,
        waited: Duration,
    },
    #[error("zcrypt node {node}: {} is still present {waited:?} after destroy", path.display())]
    NotDestroyed {
        node: String,
        path: PathBuf,
        waited: Duration,
    },
    #[error("zcrypt node {node}: {} reads {found:?} after writing {expected}", file.display())]
    MaskMismatch {
        node: String,
        file: PathBuf,
        expected: Mask256,
        found: String,
    },
    #[error("zcrypt node {node}: {} is not a device node or a regular file", path.display())]
    NotADevice { node: String, path: PathBuf },
    #[error("zcrypt node {node}: setting mode 0666 on {} failed: {source}", path.display())]
    Chmod {
        node: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("listing zcrypt nodes in {} failed: {source}", dir.display())]
    List { dir: PathBuf, source: io::Error },
}

/// A zcrypt node made (or found) for one plug-in device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZcryptNode {
    /// `zcrypt-apqn-<a>-<d>-<n>`.
    pub name: String,
    /// `<dev_dir>/<name>`.
    pub dev_path: PathBuf,
    /// `<zcrypt_nodes_dir>/<name>`.
    pub attr_dir: PathBuf,
    /// Whether this call created the node (false: an existing node was reused).
    pub created: bool,
}

/// Creates, restricts and destroys zcrypt nodes of one host.
#[derive(Debug, Clone)]
pub struct ZcryptNodes {
    class_dir: PathBuf,
    nodes_dir: PathBuf,
    dev_dir: PathBuf,
    timeout: Duration,
}

impl ZcryptNodes {
    /// Uses the zcrypt paths of `paths`; `timeout` bounds each wait for
    /// the kernel (node creation, `/dev` node, removal).
    pub fn new(paths: &NodePaths, timeout: Duration) -> Self {
        Self {
            class_dir: paths.zcrypt_class_dir.clone(),
            nodes_dir: paths.zcrypt_nodes_dir.clone(),
            dev_dir: paths.dev_dir.clone(),
            timeout,
        }
    }

    fn create_file(&self) -> PathBuf {
        self.class_dir.join("create")
    }

    /// Reports whether the kernel supports multiple zcrypt nodes (`create` exists).
    pub fn multi_node_supported(&self) -> bool {
        self.create_file().exists()
    }

    /// Makes sure the node of `id` exists and reaches exactly its APQN.
    ///
    /// An existing node of the same name (agent restart, the same id
    /// allocated again) is reused and its masks are written again. A new
    /// node is created, waited for, given mode 0666 and restricted; if any
    /// of that fails the new node is destroyed again before returning.
    pub fn ensure(&self, id: &DeviceId) -> Result<ZcryptNode, ZcryptError> {
        let name = id.zcrypt_node_name();
        let mut node = ZcryptNode {
            dev_path: self.dev_dir.join(&name),
            attr_dir: self.nodes_dir.join(&name),
            created: false,
            name,
        };
        node.created = self.create_unless_present(&node)?;
        match self.finish(&node, id) {
            Ok(()) => Ok(node),
            Err(error) => {
                if node.created {
                    if let Err(destroy_error) = self.destroy(&node.name) {
                        tracing::warn!(node = %node.name, error = %destroy_error,
                            "failed to destroy a zcrypt node after a failed set-up");
                    }
                }
                Err(error)
            }
        }
    }

    /// Writes the name to `create` unless the node exists and waits for the
    /// attribute dir with all mask files, holding the class dir lock
    /// throughout. Returns whether the node was created.
    fn create_unless_present(&self, node: &ZcryptNode) -> Result<bool, ZcryptError> {
        let create = self.create_file();
        if !create.exists() {
            return Err(ZcryptError::NotSupported { create });
        }
        let _guard = lock_class_dir(&self.class_dir);
        if node.attr_dir.is_dir() {
            return Ok(false);
        }
        write_value(&node.name, &create, &format!("{}\n", node.name))?;
        let appeared = wait_until(self.timeout, || {
            MASK_FILES
                .iter()
                .all(|file| node.attr_dir.join(file).is_file())
        });
        if appeared {
            return Ok(true);
        }
        // The kernel may still act on the name later; asking it to destroy
        // the node keeps a late node from leaking. The write fails on a
        // kernel that never made the node, which is expected here.
        let _ = write_value(
            &node.name,
            &self.class_dir.join("destroy"),
            &format!("{}\n", node.name),
        );
        Err(ZcryptError::NotCreated {
            node: node.name.clone(),
            path: node.attr_dir.clone(),
            waited: self.timeout,
        })
    }

    /// Waits for the `/dev` node, sets its mode and writes the masks.
    fn finish(&self, node: &ZcryptNode, id: &DeviceId) -> Result<(), ZcryptError> {
        if !wait_until(self.timeout, || node.dev_path.symlink_metadata().is_ok()) {
            return Err(ZcryptError::NotCreated {
                node: node.name.clone(),
                path: node.dev_path.clone(),
                waited: self.timeout,
            });
        }
        set_mode_0666(&node.name, &node.dev_path)?;
        let masks = [
            Mask256::single(id.apqn.adapter),
            Mask256::single(id.apqn.domain),
            Mask256::empty(),
            Mask256::full(),
        ];
        for (file, mask) in MASK_FILES.iter().zip(masks) {
            write_mask(&node.name, &node.attr_dir.join(file), &mask)?;
        }
        Ok(())
    }

    /// Destroys the node `name` by writing it to `destroy` and waits until
    /// its attribute dir is gone. `/dev/<name>` may outlive this briefly
    /// while a process still has the node open.
    pub fn destroy(&self, name: &str) -> Result<(), ZcryptError> {
        let attr_dir = self.nodes_dir.join(name);
        let _guard = lock_class_dir(&self.class_dir);
        write_value(name, &self.class_dir.join("destroy"), &format!("{name}\n"))?;
        if wait_until(self.timeout, || attr_dir.symlink_metadata().is_err()) {
            Ok(())
        } else {
            Err(ZcryptError::NotDestroyed {
                node: name.to_string(),
                path: attr_dir,
                waited: self.timeout,
            })
        }
    }

    /// Lists the plug-in devices whose zcrypt node (`zcrypt-apqn-*`) exists now.
    pub fn list(&self) -> Result<Vec<DeviceId>, ZcryptError> {
        let list_error = |source| ZcryptError::List {
            dir: self.nodes_dir.clone(),
            source,
        };
        let entries = match fs::read_dir(&self.nodes_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(list_error(error)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(list_error)?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(DeviceId::from_zcrypt_node_name)
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// Locks the mutex that serialises `create` and `destroy` writes to one class dir.
fn lock_class_dir(class_dir: &Path) -> MutexGuard<'static, ()> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, &'static Mutex<()>>>> = OnceLock::new();
    let key = fs::canonicalize(class_dir).unwrap_or_else(|_| class_dir.to_path_buf());
    let lock: &'static Mutex<()> = {
        let mut locks = LOCKS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        locks
            .entry(key)
            .or_insert_with(|| Box::leak(Box::default()))
    };
    lock.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `value` to the existing attribute `file` in one `write()`.
fn write_value(node: &str, file: &Path, value: &str) -> Result<(), ZcryptError> {
    let write_error = |source| ZcryptError::Write {
        node: node.to_string(),
        file: file.to_path_buf(),
        value: value.trim_end().to_string(),
        source,
    };
    let mut handle = OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(file)
        .map_err(write_error)?;
    let written = handle.write(value.as_bytes()).map_err(write_error)?;
    if written != value.len() {
        return Err(ZcryptError::ShortWrite {
            node: node.to_string(),
            file: file.to_path_buf(),
            written,
            len: value.len(),
        });
    }
    Ok(())
}

/// Writes `mask` as `0x` + 64 hex digits + newline and reads it back.
fn write_mask(node: &str, file: &Path, mask: &Mask256) -> Result<(), ZcryptError> {
    write_value(node, file, &format!("{mask}\n"))?;
    let text = fs::read_to_string(file).map_err(|source| ZcryptError::Read {
        node: node.to_string(),
        file: file.to_path_buf(),
        source,
    })?;
    verify_read_back(node, file, text, mask)
}

/// Checks that the text read from a mask file contains exactly `mask`.
fn verify_read_back(
    node: &str,
    file: &Path,
    text: String,
    mask: &Mask256,
) -> Result<(), ZcryptError> {
    match Mask256::parse_kernel(&text, &Mask256::empty()) {
        Ok(found) if found == *mask => Ok(()),
        _ => Err(ZcryptError::MaskMismatch {
            node: node.to_string(),
            file: file.to_path_buf(),
            expected: *mask,
            found: text,
        }),
    }
}

/// Gives the device node mode 0666 so that any container user can open it.
fn set_mode_0666(node: &str, path: &Path) -> Result<(), ZcryptError> {
    let chmod_error = |source| ZcryptError::Chmod {
        node: node.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let file_type = path.symlink_metadata().map_err(chmod_error)?.file_type();
    // A simulated node has a regular file where the kernel has a character
    // device; a symlink is never followed.
    if !(file_type.is_char_device() || file_type.is_file()) {
        return Err(ZcryptError::NotADevice {
            node: node.to_string(),
            path: path.to_path_buf(),
        });
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).map_err(chmod_error)
}

#[cfg(test)]
mod tests;
