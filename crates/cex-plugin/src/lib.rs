//! The CEX device plug-in node agent.

#![forbid(unsafe_code)]

pub mod allocate;
pub mod devices;
pub mod settings;
pub mod surveillance;
