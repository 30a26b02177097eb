#![forbid(unsafe_code)]

pub mod kernel;
pub mod layout;
pub mod machines;
