//! The Linux AP bus as the node agent sees it.
//!
//! This crate owns the vocabulary shared by every other part of the
//! product: APQNs (adapter and domain pairs), card types with their
//! generation and mode, the 256-bit masks of the AP bus and of zcrypt
//! nodes, and plug-in device ids. It also reads the kernel's view of the
//! bus from sysfs (`/sys/devices/ap`) and the machine id from
//! `/proc/sysinfo`.

#![forbid(unsafe_code)]

mod apqn;
mod card;
mod device_id;
mod mask;

pub use apqn::Apqn;
pub use card::{CardType, CardTypeError, CexMode};
pub use device_id::{DeviceId, DeviceIdError};
pub use mask::{Mask256, MaskError};

mod inventory;

pub use inventory::{Card, Inventory, Queue};

pub mod scan;
pub mod sysinfo;
pub mod uevent;

pub use scan::{format_apqns, scan, ProblemKind, ScanError, ScanProblem, ScanReport};
pub use sysinfo::{parse_machine_id, read_machine_id, SysinfoError};
pub use uevent::{ap_change, ApChange, BusEvent, DeviceEvent, UEvent, UEventError};
