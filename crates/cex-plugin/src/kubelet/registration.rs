//! One Register call to the kubelet's `Registration` service.

use std::path::{Path, PathBuf};
use std::time::Duration;

use cex_kubelet_api::deviceplugin::v1beta1::{
    registration_client::RegistrationClient, DevicePluginOptions, RegisterRequest, KUBELET_SOCKET,
    VERSION,
};

/// How long one Register call may take, connecting included.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed Register call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegisterError {
    /// `kubelet.sock` cannot be dialled.
    #[error("cannot connect to the kubelet at {}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// The kubelet rejected the request.
    #[error("the kubelet rejected the registration: {}", status.message())]
    Rejected { status: tonic::Status },
    /// The call did not finish in time.
    #[error("registration timed out after {REGISTER_TIMEOUT:?}")]
    TimedOut,
}

/// Returns the options every set announces: GetPreferredAllocation is served,
/// PreStartContainer is not needed.
pub(crate) fn plugin_options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// Registers `resource` served on `<dir>/<socket_name>` with the kubelet.
pub(crate) async fn register(
    dir: &Path,
    socket_name: &str,
    resource: &str,
) -> Result<(), RegisterError> {
    let request = RegisterRequest {
        version: VERSION.to_string(),
        endpoint: socket_name.to_string(),
        resource_name: resource.to_string(),
        options: Some(plugin_options()),
    };
    let kubelet = dir.join(KUBELET_SOCKET);
    let call = async {
        let channel = cex_kubelet_api::uds::connect(&kubelet)
            .await
            .map_err(|source| RegisterError::Connect {
                path: kubelet.clone(),
                source,
            })?;
        RegistrationClient::new(channel)
            .register(request)
            .await
            .map_err(|status| RegisterError::Rejected { status })?;
        Ok(())
    };
    tokio::time::timeout(REGISTER_TIMEOUT, call)
        .await
        .map_err(|_| RegisterError::TimedOut)?
}
