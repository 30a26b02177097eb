//! The subcommands of `cexctl`, one file each.

pub mod agent;
pub mod bench;
pub mod demo;
pub mod inventory;
pub mod quotas;
pub mod sim;
pub mod validate;
