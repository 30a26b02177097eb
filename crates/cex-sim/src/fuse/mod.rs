//! The kernel-faithful simulated node: a machine description served
//! through FUSE, so that each `write()` to an attribute reaches a `store`
//! call and its errno reaches the writer, as on sysfs.
//!
//! [`FuseNode::mount`] lays the machine out in plain files with
//! [`crate::layout::lay_out`] in a private staging dir, loads that tree
//! into memory, and serves it at the mount point: `sys/bus/ap`,
//! `sys/devices/ap`, `sys/class/zcrypt`, `sys/devices/virtual/zcrypt`,
//! `dev` and `proc/sysinfo`. Attributes follow the kernel rules:
//!
//! * a bad mask value (bus `apmask`/`aqmask`, node masks) fails with
//!   EINVAL and leaves the mask unchanged;
//! * `create` of an existing name fails with EEXIST, and with ENOSPC when
//!   no minor is free. `destroy` of an unknown name fails with ENOENT.
//!   `create` makes the node's attribute dir and `/dev/<name>` before the
//!   write returns;
//! * card and queue `online` and card `config` take only 0 and 1 (else
//!   EINVAL). Online 1 on a deconfigured or check-stopped device fails with
//!   ENODEV, and queue online 1 under an offline card with EINVAL. A
//!   card's `online` sets all its queues;
//! * `request_count` resets on any write; files without a `store` method
//!   reject an open for writing with EACCES;
//! * a write through a descriptor of a removed card or queue fails with
//!   ENODEV, and path lookups below it give ENOENT.
//!
//! `/dev` nodes are character devices on a `nodev` mount, so they can be
//! stat'ed and chmod'ed but not opened. [`FuseControl`] injects faults:
//! failing creates and mask writes, late `/dev` nodes, vanishing devices,
//! state flips.

mod faults;
mod fs;
mod load;
mod model;
mod tree;
mod zcrypt;

use std::collections::BTreeMap;
use std::fs as stdfs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cex_ap::Apqn;
use fuser::{BackgroundSession, Config, MountOption};

pub use model::CreateFault;

use crate::layout::{lay_out, LayoutError};
use crate::machines::Machine;
use model::Sim;

/// The FUSE device that must exist for a mount.
const FUSE_DEVICE: &str = "/dev/fuse";

/// A failure to mount, unmount or change a FUSE node.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// This host cannot mount FUSE file systems (no `/dev/fuse`, no
    /// permission, no `fusermount3`). Tests skip on this variant.
    #[error("FUSE is not available: {reason}")]
    Unavailable { reason: String },
    /// Mounting failed for another reason.
    #[error("failed to mount a FUSE node at {}: {source}", mountpoint.display())]
    Mount {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Unmounting failed, also lazily.
    #[error("failed to unmount the FUSE node at {}: {source}", mountpoint.display())]
    Unmount {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Laying the machine out for loading failed.
    #[error("failed to lay out the machine for the FUSE node: {0}")]
    Layout(#[from] LayoutError),
    /// The staging dir could not be made, read or removed.
    #[error("failed to use the staging path {}: {source}", path.display())]
    Staging {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// No card with this adapter id is present.
    #[error("card {adapter:02x} is not present in machine {machine:?}")]
    UnknownCard { machine: String, adapter: u8 },
    /// No queue with this APQN is present.
    #[error("queue {apqn} is not present in machine {machine:?}")]
    UnknownQueue { machine: String, apqn: Apqn },
}

/// A machine served through FUSE. Dropping it unmounts, also during a
/// panic; a mount still in use is detached lazily.
pub struct FuseNode {
    root: PathBuf,
    control: FuseControl,
    session: Option<BackgroundSession>,
}

impl std::fmt::Debug for FuseNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseNode")
            .field("root", &self.root)
            .finish()
    }
}

impl FuseNode {
    /// Serves `machine` at `mountpoint`, an existing empty directory.
    pub fn mount(machine: Machine, mountpoint: &Path) -> Result<Self, FuseError> {
        check_fuse_device()?;
        let tree = load_machine(&machine)?;
        let sim = Arc::new(Mutex::new(Sim {
            tree,
            machine,
            nodes: BTreeMap::new(),
            create_faults: Default::default(),
            mask_write_faults: Default::default(),
            dev_node_delay: None,
        }));
        let filesystem = fs::NodeFs::new(Arc::clone(&sim));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("cex-sim".to_string()),
            MountOption::Subtype("cex-sim".to_string()),
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoExec,
        ];
        let session = fuser::spawn_mount(filesystem, mountpoint, &config)
            .map_err(|source| mount_error(mountpoint, source))?;
        tracing::info!(mountpoint = %mountpoint.display(), "FUSE node mounted");
        Ok(Self {
            root: mountpoint.to_path_buf(),
            control: FuseControl { sim },
            session: Some(session),
        })
    }

    /// Returns the mount point, the simulated node's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns the fault injection handle. Its clones share the node.
    pub fn control(&self) -> &FuseControl {
        &self.control
    }

    /// Unmounts and waits for the serving thread to end.
    pub fn unmount(mut self) -> Result<(), FuseError> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<(), FuseError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match session.umount_and_join() {
            Ok(()) => {
                tracing::info!(mountpoint = %self.root.display(), "FUSE node unmounted");
                Ok(())
            }
            Err(error) => {
                tracing::warn!(mountpoint = %self.root.display(), %error,
                    "FUSE node busy, detaching it lazily");
                detach(&self.root)
            }
        }
    }
}

impl Drop for FuseNode {
    fn drop(&mut self) {
        if let Err(error) = self.shut_down() {
            tracing::error!(%error, "FUSE node left mounted");
        }
    }
}

/// Injects faults into a mounted node and reads its model.
#[derive(Debug, Clone)]
pub struct FuseControl {
    sim: Arc<Mutex<Sim>>,
}

impl FuseControl {
    fn sim(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns a copy of the machine as the node shows it now.
    pub fn machine(&self) -> Machine {
        self.sim().machine.clone()
    }

    /// Lists the names of the zcrypt nodes that exist now.
    pub fn zcrypt_node_names(&self) -> Vec<String> {
        self.sim().nodes.keys().cloned().collect()
    }

    /// Makes the next write to `create` fail as `fault` describes. Faults
    /// queue up, and each one applies to one write.
    pub fn fail_next_create(&self, fault: CreateFault) {
        self.sim().create_faults.push_back(fault);
    }

    /// Makes the next write to any zcrypt node mask file fail with
    /// `errno`, leaving the mask unchanged.
    pub fn fail_next_mask_write(&self, errno: i32) {
        self.sim().mask_write_faults.push_back(errno);
    }

    /// Delays `/dev/<name>` of every following create by `delay`, as a
    /// slow udev would; `None` makes device nodes appear at once again.
    pub fn set_dev_node_delay(&self, delay: Option<Duration>) {
        self.sim().dev_node_delay = delay;
    }

    /// Removes a queue, as when its domain leaves the configuration.
    pub fn remove_queue(&self, apqn: Apqn) -> Result<(), FuseError> {
        self.sim().vanish_queue(apqn)
    }

    /// Removes a card with its queues (hot unplug).
    pub fn remove_card(&self, adapter: u8) -> Result<(), FuseError> {
        self.sim().vanish_card(adapter)
    }

    /// Sets a card's software online flag and those of its queues.
    pub fn set_card_online(&self, adapter: u8, online: bool) -> Result<(), FuseError> {
        self.sim().flip_card_online(adapter, online)
    }

    /// Configures or deconfigures a card with its queues.
    pub fn set_card_config(&self, adapter: u8, config: bool) -> Result<(), FuseError> {
        self.sim().flip_card_config(adapter, config)
    }

    /// Check-stops a card with its queues, or clears the check-stop.
    pub fn set_card_chkstop(&self, adapter: u8, chkstop: bool) -> Result<(), FuseError> {
        self.sim().flip_card_chkstop(adapter, chkstop)
    }

    /// Sets a queue's software online flag.
    pub fn set_queue_online(&self, apqn: Apqn, online: bool) -> Result<(), FuseError> {
        self.sim().flip_queue_online(apqn, online)
    }

    /// Configures or deconfigures one queue.
    pub fn set_queue_config(&self, apqn: Apqn, config: bool) -> Result<(), FuseError> {
        self.sim().flip_queue_config(apqn, config)
    }

    /// Check-stops one queue, or clears its check-stop.
    pub fn set_queue_chkstop(&self, apqn: Apqn, chkstop: bool) -> Result<(), FuseError> {
        self.sim().flip_queue_chkstop(apqn, chkstop)
    }
}

fn check_fuse_device() -> Result<(), FuseError> {
    match stdfs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(FUSE_DEVICE)
    {
        Ok(_) => Ok(()),
        Err(error) => Err(FuseError::Unavailable {
            reason: format!("cannot open {FUSE_DEVICE}: {error}"),
        }),
    }
}

fn mount_error(mountpoint: &Path, source: io::Error) -> FuseError {
    match source.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => FuseError::Unavailable {
            reason: format!("mounting at {} failed: {source}", mountpoint.display()),
        },
        _ => FuseError::Mount {
            mountpoint: mountpoint.to_path_buf(),
            source,
        },
    }
}

/// Detaches a busy mount with `fusermount3 -u -z`, or `umount -l` when
/// the helper is missing.
fn detach(mountpoint: &Path) -> Result<(), FuseError> {
    let unmount_error = |source| FuseError::Unmount {
        mountpoint: mountpoint.to_path_buf(),
        source,
    };
    let status = Command::new("fusermount3")
        .args(["-u", "-z", "--"])
        .arg(mountpoint)
        .status()
        .or_else(|_| Command::new("umount").arg("-l").arg(mountpoint).status())
        .map_err(unmount_error)?;
    if status.success() {
        Ok(())
    } else {
        Err(unmount_error(io::Error::other(format!(
            "lazy unmount exited with {status}"
        ))))
    }
}

/// Lays `machine` out in a fresh staging dir below the temp dir, loads it
/// and removes the staging dir.
fn load_machine(machine: &Machine) -> Result<tree::Tree, FuseError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let staging = loop {
        let number = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("cex-sim-fuse-{}-{number}", std::process::id()));
        // create_dir fails on an existing path, so the dir is ours alone.
        match stdfs::create_dir(&path) {
            Ok(()) => break path,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(FuseError::Staging { path, source }),
        }
    };
    let loaded = lay_out(machine, &staging)
        .map_err(FuseError::from)
        .and_then(|()| load::load(&staging));
    let removed = stdfs::remove_dir_all(&staging).map_err(|source| FuseError::Staging {
        path: staging.clone(),
        source,
    });
    let tree = loaded?;
    removed?;
    Ok(tree)
}
