//! Host-side effects of an allocation.
//!
//! * [`zcrypt`]: private zcrypt device nodes (`zcrypt-apqn-<a>-<d>-<n>`)
//!   made through `/sys/class/zcrypt/create` and restricted to one APQN
//!   through the node's `apmask`, `aqmask`, `admask` and `ioctlmask`.
//! * [`shadow`]: the shadow sysfs trees mounted over `/sys/bus/ap` and
//!   `/sys/devices/ap` in a container, built with no-follow semantics
//!   under a base directory that may sit below a world-writable parent.
//!
//! Every host path comes from one [`NodePaths`] value.

#![forbid(unsafe_code)]

mod fsat;
mod paths;
pub mod shadow;
mod wait;
pub mod zcrypt;

#[cfg(test)]
mod test_node;

pub use paths::NodePaths;
pub use shadow::{remove_shadow_dir, ShadowBase, ShadowDir, ShadowError, SysfsVariant};
pub use zcrypt::{ZcryptError, ZcryptNode, ZcryptNodes};
