//! The two kubelet gRPC APIs the CEX device plug-in speaks, plus Unix
//! socket helpers for tonic.
//!
//! * [`deviceplugin::v1beta1`]: `Registration` (served by the kubelet on
//!   `kubelet.sock`) and `DevicePlugin` (served by each plug-in).
//! * [`podresources::v1`]: `PodResourcesLister`, served by the kubelet on
//!   its pod-resources socket.

#![forbid(unsafe_code)]

pub mod deviceplugin {
    pub mod v1beta1 {
        tonic::include_proto!("v1beta1");

        /// The API version a plug-in sends in `RegisterRequest.version`.
        pub const VERSION: &str = "v1beta1";
        /// `Device.health` of a usable device.
        pub const HEALTHY: &str = "Healthy";
        /// `Device.health` of a device that must not be allocated.
        pub const UNHEALTHY: &str = "Unhealthy";
        /// The kubelet's registration socket name in the device-plugin dir.
        pub const KUBELET_SOCKET: &str = "kubelet.sock";
    }
}

pub mod podresources {
    pub mod v1 {
        tonic::include_proto!("v1");
    }
}

pub mod uds;

/// The protobuf runtime of the generated types, for `encoded_len` and
/// the `Message` trait without a direct dependency.
pub use prost;
