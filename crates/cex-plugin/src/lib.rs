//! The CEX device plug-in node agent: settings, the agent runtime that
//! follows the AP bus and the config, and the device-plug-in servers
//! that announce each config set to the kubelet.

#![forbid(unsafe_code)]

pub mod agent;
pub mod allocate;
pub mod devices;
pub mod kubelet;
pub mod settings;
pub mod surveillance;

/// Formats an error with its sources: `outer: inner: root`.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
