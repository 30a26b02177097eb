//! The `Registration` service of the simulated kubelet and the
//! ListAndWatch client it starts for each accepted registration.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use cex_kubelet_api::deviceplugin::v1beta1::{
    device_plugin_client::DevicePluginClient,
    registration_server::{Registration as RegistrationService, RegistrationServer as TonicServer},
    Empty, RegisterRequest, KUBELET_SOCKET,
};
use tokio::net::UnixListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use super::recorder::{Message, Registration, Shared, StreamEnd, StreamRecord};
use super::FakeKubeletError;

/// A running `Registration` server on `kubelet.sock`.
pub(crate) struct RegistrationServer {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RegistrationServer {
    pub(crate) fn start(dir: &Path, shared: Arc<Shared>) -> Result<Self, FakeKubeletError> {
        let path = dir.join(KUBELET_SOCKET);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| FakeKubeletError::Bind {
            path: path.clone(),
            source,
        })?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let service = TonicServer::new(Registrar { shared });
        let task = tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = result {
                tracing::warn!(%error, "simulated kubelet registration server failed");
            }
        });
        Ok(Self { shutdown, task })
    }

    pub(crate) async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

struct Registrar {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl RegistrationService for Registrar {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let request = request.into_inner();
        let rejected = self
            .shared
            .reject_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        let registration = Registration {
            at: Instant::now(),
            version: request.version.clone(),
            endpoint: request.endpoint.clone(),
            resource: request.resource_name.clone(),
            options: request.options,
            accepted: !rejected,
        };
        self.shared
            .record(|recorded| recorded.registrations.push(registration));
        if rejected {
            return Err(Status::unavailable(
                "registration rejected by the simulated kubelet",
            ));
        }
        start_stream(
            Arc::clone(&self.shared),
            request.resource_name,
            request.endpoint,
        );
        Ok(Response::new(Empty {}))
    }
}

/// Dials the plug-in and follows its ListAndWatch stream in a task, as
/// the kubelet does after accepting a registration.
fn start_stream(shared: Arc<Shared>, resource: String, endpoint: String) {
    let id = shared.new_stream_id();
    shared.record(|recorded| {
        recorded.streams.push(StreamRecord {
            id,
            resource: resource.clone(),
            endpoint: endpoint.clone(),
            opened_at: Instant::now(),
            messages: Vec::new(),
            ended: None,
        });
    });
    let (close, closed) = oneshot::channel();
    let path = shared.dir.join(&endpoint);
    let task_shared = Arc::clone(&shared);
    let task = tokio::spawn(async move {
        let end = follow_stream(&task_shared, id, &path, closed).await;
        task_shared.record(|recorded| {
            if let Some(stream) = recorded.streams.iter_mut().find(|stream| stream.id == id) {
                stream.ended = Some(end);
            }
        });
    });
    shared.add_open_stream(id, resource, close, task);
}

async fn follow_stream(
    shared: &Shared,
    id: u64,
    path: &Path,
    mut closed: oneshot::Receiver<()>,
) -> StreamEnd {
    let channel = match cex_kubelet_api::uds::connect(path).await {
        Ok(channel) => channel,
        Err(error) => return StreamEnd::Failed(format!("connect {}: {error}", path.display())),
    };
    let mut client = DevicePluginClient::new(channel);
    let mut stream = tokio::select! {
        _ = &mut closed => return StreamEnd::ClosedByKubelet,
        response = client.list_and_watch(Empty {}) => match response {
            Ok(response) => response.into_inner(),
            Err(status) => return StreamEnd::Failed(status.to_string()),
        },
    };
    loop {
        let message = tokio::select! {
            _ = &mut closed => return StreamEnd::ClosedByKubelet,
            message = stream.message() => message,
        };
        match message {
            Ok(Some(response)) => shared.record(|recorded| {
                let message = Message {
                    at: Instant::now(),
                    stream: id,
                    devices: response.devices,
                };
                if let Some(stream) = recorded.streams.iter_mut().find(|stream| stream.id == id) {
                    stream.messages.push(message);
                }
            }),
            Ok(None) => return StreamEnd::EndedByPlugin(None),
            Err(status) => return StreamEnd::EndedByPlugin(Some(status.to_string())),
        }
    }
}
