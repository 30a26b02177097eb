//! A simulated kubelet pod-resources API (`v1.PodResourcesLister`) that
//! serves a pod list set by the caller.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use cex_kubelet_api::podresources::v1::{
    pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer},
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources as PodResourcesMessage,
};
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::FakeKubeletError;

/// One container and the devices it holds, by resource name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeContainer {
    pub name: String,
    /// `(resource name, device ids)` pairs.
    pub devices: Vec<(String, Vec<String>)>,
}

/// One pod as the pod-resources API lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakePod {
    pub name: String,
    pub namespace: String,
    pub containers: Vec<FakeContainer>,
}

impl FakePod {
    /// Builds a pod with one container holding `ids` of `resource`.
    pub fn with_devices(name: &str, namespace: &str, resource: &str, ids: &[&str]) -> Self {
        let devices = vec![(
            resource.to_string(),
            ids.iter().map(|id| id.to_string()).collect(),
        )];
        let container = FakeContainer {
            name: format!("{name}-container"),
            devices,
        };
        Self {
            name: name.to_string(),
            namespace: namespace.to_string(),
            containers: vec![container],
        }
    }

    fn to_message(&self) -> PodResourcesMessage {
        PodResourcesMessage {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            containers: self.containers.iter().map(container_message).collect(),
        }
    }
}

fn container_message(container: &FakeContainer) -> ContainerResources {
    ContainerResources {
        name: container.name.clone(),
        devices: container
            .devices
            .iter()
            .map(|(resource, ids)| ContainerDevices {
                resource_name: resource.clone(),
                device_ids: ids.clone(),
                topology: None,
            })
            .collect(),
        ..Default::default()
    }
}

#[derive(Default)]
struct State {
    pods: RwLock<Vec<FakePod>>,
    allocatable: RwLock<Vec<(String, Vec<String>)>>,
    list_calls: AtomicU64,
}

/// A running pod-resources server.
pub struct PodResources {
    path: PathBuf,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl PodResources {
    /// Serves the pod-resources API on the Unix socket `path`.
    pub async fn start(path: impl AsRef<Path>) -> Result<Self, FakeKubeletError> {
        let path = path.as_ref().to_path_buf();
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| FakeKubeletError::Bind {
            path: path.clone(),
            source,
        })?;
        let state = Arc::new(State::default());
        let service = PodResourcesListerServer::new(Lister {
            state: Arc::clone(&state),
        });
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, "simulated pod-resources server failed");
            }
        });
        Ok(Self {
            path,
            state,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Returns the socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the pod list returned by List and Get.
    pub fn set_pods(&self, pods: Vec<FakePod>) {
        *self
            .state
            .pods
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = pods;
    }

    /// Replaces the devices returned by GetAllocatableResources.
    pub fn set_allocatable(&self, devices: Vec<(String, Vec<String>)>) {
        *self
            .state
            .allocatable
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = devices;
    }

    /// Returns the number of List calls served so far.
    pub fn list_calls(&self) -> u64 {
        self.state.list_calls.load(Ordering::SeqCst)
    }

    /// Stops serving and removes the socket.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Lister {
    state: Arc<State>,
}

impl Lister {
    fn pods(&self) -> Vec<FakePod> {
        self.state
            .pods
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[tonic::async_trait]
impl PodResourcesLister for Lister {
    async fn list(
        &self,
        _request: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        self.state.list_calls.fetch_add(1, Ordering::SeqCst);
        let pod_resources = self.pods().iter().map(FakePod::to_message).collect();
        Ok(Response::new(ListPodResourcesResponse { pod_resources }))
    }

    async fn get_allocatable_resources(
        &self,
        _request: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        let allocatable = self
            .state
            .allocatable
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let devices = allocatable
            .into_iter()
            .map(|(resource_name, device_ids)| ContainerDevices {
                resource_name,
                device_ids,
                topology: None,
            })
            .collect();
        Ok(Response::new(AllocatableResourcesResponse {
            devices,
            ..Default::default()
        }))
    }

    async fn get(
        &self,
        request: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        let request = request.into_inner();
        let pod = self
            .pods()
            .into_iter()
            .find(|pod| pod.name == request.pod_name && pod.namespace == request.pod_namespace)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "pod {}/{} not found",
                    request.pod_namespace, request.pod_name
                ))
            })?;
        Ok(Response::new(GetPodResourcesResponse {
            pod_resources: Some(pod.to_message()),
        }))
    }
}
