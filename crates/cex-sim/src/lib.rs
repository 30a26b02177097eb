#![forbid(unsafe_code)]

pub mod fuse;
pub mod kernel;
pub mod kubelet;
pub mod layout;
pub mod lszcrypt;
pub mod machines;
