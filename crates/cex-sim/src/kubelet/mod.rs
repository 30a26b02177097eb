//! A simulated kubelet: the device-plugin `Registration` service on
//! `<dir>/kubelet.sock` over a real Unix socket, plus a client that
//! follows each registered plug-in's ListAndWatch stream and calls
//! Allocate and GetPreferredAllocation, as the kubelet's device manager
//! does. It can restart (delete every socket, re-create `kubelet.sock`),
//! end a stream without restarting and reject Register calls, so tests
//! and demos can drive a plug-in through the kubelet's failure modes.
//!
//! [`PodResources`] serves the kubelet's pod-resources API from a pod
//! list that callers set.

mod pod_resources;
mod recorder;
mod registration;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cex_kubelet_api::deviceplugin::v1beta1::{
    device_plugin_client::DevicePluginClient, AllocateRequest, AllocateResponse,
    ContainerAllocateRequest, PreferredAllocationRequest, PreferredAllocationResponse,
    KUBELET_SOCKET,
};
use tokio::sync::Mutex;

pub use pod_resources::{FakeContainer, FakePod, PodResources};
pub use recorder::{Message, Recorded, Registration, StreamEnd, StreamRecord};

use recorder::Shared;
use registration::RegistrationServer;

/// The simulated kubelet failed to set up a socket.
#[derive(Debug, thiserror::Error)]
pub enum FakeKubeletError {
    /// Binding a socket failed.
    #[error("cannot bind {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Listing or cleaning the device-plugin directory failed.
    #[error("cannot clean device-plugin directory {}", path.display())]
    Clean {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A running simulated kubelet.
pub struct FakeKubelet {
    dir: PathBuf,
    shared: Arc<Shared>,
    server: Mutex<Option<RegistrationServer>>,
}

impl FakeKubelet {
    /// Serves `Registration` on `<dir>/kubelet.sock`, replacing a stale
    /// socket file of that name.
    pub async fn start(dir: impl AsRef<Path>) -> Result<Self, FakeKubeletError> {
        let dir = dir.as_ref().to_path_buf();
        let shared = Arc::new(Shared::new(dir.clone()));
        let server = RegistrationServer::start(&dir, Arc::clone(&shared))?;
        Ok(Self {
            dir,
            shared,
            server: Mutex::new(Some(server)),
        })
    }

    /// Returns the device-plugin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Returns the path of `kubelet.sock`.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(KUBELET_SOCKET)
    }

    /// Rejects the next `count` Register calls with `UNAVAILABLE`.
    pub fn reject_next_registrations(&self, count: u32) {
        self.shared.reject_next.store(count, Ordering::SeqCst);
    }

    /// Returns a copy of everything recorded so far.
    pub fn recorded(&self) -> Recorded {
        self.shared.recorded()
    }

    /// Waits until `check` returns `Some` for the recorded state, or
    /// `timeout` passes.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        check: impl FnMut(&Recorded) -> Option<T>,
    ) -> Option<T> {
        self.shared.wait_for(timeout, check).await
    }

    /// Waits for an accepted Register call of `resource` beyond the first
    /// `seen` accepted ones.
    pub async fn wait_registration(
        &self,
        resource: &str,
        seen: usize,
        timeout: Duration,
    ) -> Option<Registration> {
        self.wait_for(timeout, |recorded| {
            recorded.accepted(resource).into_iter().nth(seen).cloned()
        })
        .await
    }

    /// Waits for the next ListAndWatch message of `resource` (received
    /// after this call) that satisfies `matches`.
    pub async fn next_message(
        &self,
        resource: &str,
        timeout: Duration,
        mut matches: impl FnMut(&Message) -> bool,
    ) -> Option<Message> {
        let seen = self.recorded().messages(resource).len();
        self.wait_for(timeout, |recorded| {
            recorded
                .messages(resource)
                .into_iter()
                .skip(seen)
                .find(|m| matches(m))
                .cloned()
        })
        .await
    }

    /// Ends every open ListAndWatch stream of `resource` from the kubelet
    /// side without a restart, and waits until they are recorded as ended.
    pub async fn close_stream(&self, resource: &str) {
        let closed = self.shared.close_streams(Some(resource));
        self.shared.join_streams(closed).await;
    }

    /// Simulates a kubelet restart: deletes every `*.sock` in the
    /// directory (ours too), ends every stream and serves a new
    /// `kubelet.sock`.
    pub async fn restart(&self) -> Result<(), FakeKubeletError> {
        let mut server = self.server.lock().await;
        remove_sockets(&self.dir)?;
        let closed = self.shared.close_streams(None);
        if let Some(old) = server.take() {
            old.stop().await;
        }
        self.shared.join_streams(closed).await;
        *server = Some(RegistrationServer::start(
            &self.dir,
            Arc::clone(&self.shared),
        )?);
        Ok(())
    }

    /// Stops serving, ends every stream and removes `kubelet.sock`.
    pub async fn stop(&self) {
        let mut server = self.server.lock().await;
        let closed = self.shared.close_streams(None);
        if let Some(old) = server.take() {
            old.stop().await;
        }
        self.shared.join_streams(closed).await;
        let _ = std::fs::remove_file(self.socket());
    }

    /// Calls Allocate on the plug-in of the latest accepted registration
    /// of `resource`, one container per entry of `containers`.
    pub async fn allocate(
        &self,
        resource: &str,
        containers: Vec<Vec<String>>,
    ) -> Result<AllocateResponse, tonic::Status> {
        let mut client = self.plugin_client(resource).await?;
        let container_requests = containers
            .into_iter()
            .map(|devices_i_ds| ContainerAllocateRequest { devices_i_ds })
            .collect();
        let request = AllocateRequest { container_requests };
        client
            .allocate(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Calls GetPreferredAllocation on the plug-in of `resource`.
    pub async fn preferred_allocation(
        &self,
        resource: &str,
        request: PreferredAllocationRequest,
    ) -> Result<PreferredAllocationResponse, tonic::Status> {
        let mut client = self.plugin_client(resource).await?;
        client
            .get_preferred_allocation(request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn plugin_client(
        &self,
        resource: &str,
    ) -> Result<DevicePluginClient<tonic::transport::Channel>, tonic::Status> {
        let recorded = self.recorded();
        let registration = recorded
            .accepted(resource)
            .into_iter()
            .last()
            .ok_or_else(|| {
                tonic::Status::failed_precondition(format!("no plug-in registered for {resource}"))
            })?;
        let path = self.dir.join(&registration.endpoint);
        let channel = cex_kubelet_api::uds::connect(&path)
            .await
            .map_err(|error| {
                tonic::Status::unavailable(format!("cannot connect to {}: {error}", path.display()))
            })?;
        Ok(DevicePluginClient::new(channel))
    }
}

/// Deletes every `*.sock` file in `dir`, as a restarting kubelet does.
fn remove_sockets(dir: &Path) -> Result<(), FakeKubeletError> {
    let error = |source| FakeKubeletError::Clean {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(error)? {
        let path = entry.map_err(error)?.path();
        if path
            .extension()
            .is_some_and(|extension| extension == "sock")
        {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(source) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(error(source)),
            }
        }
    }
    Ok(())
}
