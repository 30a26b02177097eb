//! The subcommands of `cexctl`, one file each.

pub mod quotas;
pub mod sim;
