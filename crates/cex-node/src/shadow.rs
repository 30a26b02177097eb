//! Shadow sysfs trees: the restricted `/sys/bus/ap` and `/sys/devices/ap`
//! shown to a container.
//!
//! Each allocated plug-in device gets `<base>/sysfs-apqn-<a>-<d>-<n>/`
//! holding `bus/ap` and `devices/ap`, copied from the host's AP sysfs and
//! cut down to the one allocated APQN (see [`SysfsVariant`] for the static
//! and live forms). The base sits below a world-writable parent
//! (`/var/tmp`), so every operation here walks paths with `openat` and
//! `O_NOFOLLOW` and never follows a symlink, the base must be owned by the
//! agent's effective uid (root in production) and must not be writable by
//! group or others, and a tree is built under a temp name inside the base
//! and renamed into place, so a half-built tree is never visible.

mod tree;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cex_ap::DeviceId;
use rustix::fs::{renameat_with, RenameFlags};

use crate::fsat::{AtError, DirHandle};
use crate::NodePaths;

/// The name prefix of trees being built.
const BUILD_PREFIX: &str = ".build-";

/// A failed shadow sysfs operation, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("unsafe shadow sysfs base {}: {reason}", path.display())]
    UnsafeBase { path: PathBuf, reason: String },
    #[error("shadow sysfs: failed to {op} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("shadow sysfs: failed to read {}: {source}", path.display())]
    ReadSource { path: PathBuf, source: io::Error },
}

impl From<AtError> for ShadowError {
    fn from(error: AtError) -> Self {
        ShadowError::Io {
            path: error.path,
            op: error.op,
            source: error.source,
        }
    }
}

/// The kind of shadow sysfs an allocation gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysfsVariant {
    /// Static copies; counters read 0 and `online` reads 1.
    Static,
    /// As static, but the card-level `online`, `pendingq_count`,
    /// `request_count` and `requestq_count` are symlinks into the queue
    /// directory, over which the host's real queue directory is mounted.
    Live,
}

/// A shadow sysfs tree in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowDir {
    /// `<base>/sysfs-apqn-<a>-<d>-<n>`.
    pub path: PathBuf,
    /// The tree mounted on `/sys/bus/ap`.
    pub bus_ap: PathBuf,
    /// The tree mounted on `/sys/devices/ap`.
    pub devices_ap: PathBuf,
}

/// The shadow sysfs base directory, opened and checked.
#[derive(Debug)]
pub struct ShadowBase {
    dir: DirHandle,
}

impl ShadowBase {
    /// Opens (creating when missing) the base dir `path`, which must be
    /// owned by the effective uid of this process.
    pub fn open(path: &Path) -> Result<Self, ShadowError> {
        Self::open_owned_by(path, rustix::process::geteuid().as_raw())
    }

    /// Opens (creating when missing, mode 0755) the base dir `path`
    /// without following a symlink in any component, and rejects it
    /// unless it is owned by `owner` and not writable by group or others.
    pub fn open_owned_by(path: &Path, owner: u32) -> Result<Self, ShadowError> {
        let existed = path.symlink_metadata().is_ok();
        let dir = DirHandle::open_path(path, true).map_err(|error| unsafe_or_io(path, error))?;
        if !existed {
            dir.set_mode(0o755)?;
        }
        let (uid, mode) = dir.owner_and_mode()?;
        if uid != owner {
            let reason =
                format!("owned by uid {uid}, expected uid {owner} (the agent's effective uid)");
            return Err(ShadowError::UnsafeBase {
                path: path.to_path_buf(),
                reason,
            });
        }
        if mode & 0o022 != 0 {
            let reason = format!("writable by group or others (mode {mode:04o}); expected 0755");
            return Err(ShadowError::UnsafeBase {
                path: path.to_path_buf(),
                reason,
            });
        }
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Builds the shadow sysfs of `id` from the host sysfs in `paths` and
    /// renames it into place, replacing an older tree of the same id. On
    /// failure nothing new is left in the base.
    pub fn build(
        &self,
        paths: &NodePaths,
        id: &DeviceId,
        variant: SysfsVariant,
    ) -> Result<ShadowDir, ShadowError> {
        static BUILDS: AtomicU64 = AtomicU64::new(0);
        let name = id.shadow_dir_name();
        let sequence = BUILDS.fetch_add(1, Ordering::Relaxed);
        let temp_name = format!("{BUILD_PREFIX}{name}-{}-{sequence}", std::process::id());

        let result = self
            .dir
            .create_dir(&temp_name, 0o755)
            .map_err(ShadowError::from)
            .and_then(|root| tree::build(&root, paths, id.apqn, variant))
            .and_then(|()| self.move_into_place(&temp_name, &name));
        if let Err(error) = result {
            if let Err(remove_error) = self.dir.remove_tree(&temp_name) {
                tracing::warn!(dir = %self.path().join(&temp_name).display(),
                    error = %ShadowError::from(remove_error),
                    "failed to remove a partly built shadow sysfs dir");
            }
            return Err(error);
        }
        let path = self.path().join(&name);
        Ok(ShadowDir {
            bus_ap: path.join("bus/ap"),
            devices_ap: path.join("devices/ap"),
            path,
        })
    }

    /// Renames the finished tree `temp_name` to `name`. An existing tree of
    /// that name is swapped out atomically and then removed.
    fn move_into_place(&self, temp_name: &str, name: &str) -> Result<(), ShadowError> {
        let fd = self.dir.fd();
        let rename_error = |errno: rustix::io::Errno| ShadowError::Io {
            path: self.path().join(name),
            op: "rename a new tree to",
            source: errno.into(),
        };
        match renameat_with(fd, temp_name, fd, name, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => {
                renameat_with(fd, temp_name, fd, name, RenameFlags::EXCHANGE)
                    .map_err(rename_error)?;
                // `temp_name` now contains the previous tree, which no
                // container uses any more: the kubelet allocates only free
                // devices.
                if let Err(error) = self.dir.remove_tree(temp_name) {
                    tracing::warn!(error = %ShadowError::from(error),
                        "failed to remove a replaced shadow sysfs dir");
                }
                Ok(())
            }
            // A file system without renameat2 flags: replace non-atomically.
            Err(rustix::io::Errno::INVAL) => {
                self.dir.remove_tree(name)?;
                rustix::fs::renameat(fd, temp_name, fd, name).map_err(rename_error)
            }
            Err(errno) => Err(rename_error(errno)),
        }
    }

    /// Removes the shadow dir of `id` without following symlinks. Returns
    /// false when it did not exist.
    pub fn remove(&self, id: &DeviceId) -> Result<bool, ShadowError> {
        Ok(self.dir.remove_tree(id.shadow_dir_name())?)
    }

    /// Lists the plug-in devices that have a shadow dir (`sysfs-apqn-*`) now.
    pub fn list(&self) -> Result<Vec<DeviceId>, ShadowError> {
        let mut ids: Vec<DeviceId> = self
            .dir
            .entry_names()?
            .iter()
            .filter_map(|name| name.to_str().and_then(DeviceId::from_shadow_dir_name))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Removes trees left half-built by an earlier agent process (one that
    /// stopped mid-build). Returns how many were removed.
    pub fn remove_stale_builds(&self) -> Result<usize, ShadowError> {
        let own_pid = std::process::id().to_string();
        let mut removed = 0;
        for name in self.dir.entry_names()? {
            let Some(rest) = name
                .to_str()
                .and_then(|name| name.strip_prefix(BUILD_PREFIX))
            else {
                continue;
            };
            let pid = rest.rsplit('-').nth(1);
            if pid != Some(own_pid.as_str()) && self.dir.remove_tree(&name)? {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Maps a failed no-follow walk to an unsafe-base error when a component
/// is a symlink or not a directory (`O_DIRECTORY | O_NOFOLLOW` fails with
/// ENOTDIR or ELOOP on a symlink).
fn unsafe_or_io(base: &Path, error: AtError) -> ShadowError {
    let code = error.source.raw_os_error();
    if code != Some(rustix::io::Errno::NOTDIR.raw_os_error())
        && code != Some(rustix::io::Errno::LOOP.raw_os_error())
    {
        return error.into();
    }
    let is_symlink = error
        .path
        .symlink_metadata()
        .is_ok_and(|meta| meta.file_type().is_symlink());
    let reason = if is_symlink {
        "is a symbolic link"
    } else {
        "is not a directory"
    };
    ShadowError::UnsafeBase {
        path: base.to_path_buf(),
        reason: format!("{} {reason}", error.path.display()),
    }
}

/// Removes the shadow dir of `id` below `base` without following
/// symlinks, after the same checks as [`ShadowBase::open`]. Returns false
/// when it did not exist.
pub fn remove_shadow_dir(base: &Path, id: &DeviceId) -> Result<bool, ShadowError> {
    ShadowBase::open(base)?.remove(id)
}

#[cfg(test)]
mod tests;
