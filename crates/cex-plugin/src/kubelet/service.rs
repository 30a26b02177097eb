//! The `DevicePlugin` gRPC service of one set and one server generation.
//!
//! ListAndWatch sends the set's full device list when the stream opens
//! and again on every change of the set's snapshot. Each stream belongs
//! to the generation that opened it: it ends when that generation's
//! server stops, and a stream ended by the kubelet is reported to the
//! runner so the set can register again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cex_kubelet_api::deviceplugin::v1beta1::{
    device_plugin_server::DevicePlugin, AllocateRequest, AllocateResponse, Device,
    DevicePluginOptions, Empty, ListAndWatchResponse, PreStartContainerRequest,
    PreStartContainerResponse, PreferredAllocationRequest, PreferredAllocationResponse, HEALTHY,
    UNHEALTHY,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use super::registration::plugin_options;
use super::PluginContext;
use crate::agent::Snapshots;
use crate::devices::{format_devices, PluginDevice, SetSnapshot};

/// Streams opened and ended on one server generation.
#[derive(Debug)]
pub(crate) struct StreamBook {
    latest: AtomicU64,
    ended: mpsc::UnboundedSender<u64>,
}

impl StreamBook {
    pub(crate) fn new() -> (Arc<Self>, mpsc::UnboundedReceiver<u64>) {
        let (ended, receiver) = mpsc::unbounded_channel();
        (
            Arc::new(Self {
                latest: AtomicU64::new(0),
                ended,
            }),
            receiver,
        )
    }

    fn open(&self) -> u64 {
        self.latest.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Reports whether stream `id` is the newest opened so far.
    pub(crate) fn is_latest(&self, id: u64) -> bool {
        self.latest.load(Ordering::SeqCst) == id
    }
}

/// The `DevicePlugin` service of set `set` for one server generation.
pub(crate) struct DevicePluginService {
    pub(crate) set: String,
    pub(crate) context: PluginContext,
    /// Cancelled when this generation's server stops.
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) streams: Arc<StreamBook>,
}

impl DevicePluginService {
    fn snapshot(&self) -> Option<Arc<SetSnapshot>> {
        self.context.snapshots.borrow().get(&self.set).cloned()
    }
}

/// Returns the set's devices in `snapshots`, empty when the set is gone.
fn set_devices(snapshots: &Snapshots, set: &str) -> Vec<PluginDevice> {
    snapshots
        .get(set)
        .map(|snapshot| snapshot.devices.clone())
        .unwrap_or_default()
}

fn to_response(devices: &[PluginDevice]) -> ListAndWatchResponse {
    let devices = devices
        .iter()
        .map(|device| Device {
            id: device.id.to_string(),
            health: if device.healthy { HEALTHY } else { UNHEALTHY }.to_string(),
            topology: None,
        })
        .collect();
    ListAndWatchResponse { devices }
}

/// Feeds one ListAndWatch stream until the kubelet drops it or the
/// generation stops.
struct StreamFeed {
    set: String,
    id: u64,
    snapshots: watch::Receiver<Arc<Snapshots>>,
    sender: mpsc::Sender<Result<ListAndWatchResponse, Status>>,
    stop: CancellationToken,
    streams: Arc<StreamBook>,
    last: Vec<PluginDevice>,
}

impl StreamFeed {
    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    tracing::debug!(set = %self.set, stream = self.id, "ListAndWatch stream closed, server stopping");
                    return;
                }
                () = self.sender.closed() => break,
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !self.send_if_changed().await {
                        break;
                    }
                }
            }
        }
        tracing::info!(set = %self.set, stream = self.id, "Plugin['{}']: ListAndWatch stream ended by the kubelet", self.set);
        // The runner may be gone already when the set is being removed.
        let _ = self.streams.ended.send(self.id);
    }

    async fn send_if_changed(&mut self) -> bool {
        let devices = set_devices(&self.snapshots.borrow_and_update(), &self.set);
        if devices == self.last {
            return true;
        }
        tracing::info!(
            set = %self.set,
            count = devices.len(),
            "Plugin['{}']: re-announcing {} plug-in devices: {}",
            self.set,
            devices.len(),
            format_devices(&devices)
        );
        let sent = self.sender.send(Ok(to_response(&devices))).await.is_ok();
        self.last = devices;
        sent
    }
}

#[tonic::async_trait]
impl DevicePlugin for DevicePluginService {
    type ListAndWatchStream = ReceiverStream<Result<ListAndWatchResponse, Status>>;

    async fn get_device_plugin_options(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(plugin_options()))
    }

    async fn list_and_watch(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        if self.stop.is_cancelled() || self.tasks.is_closed() {
            return Err(Status::unavailable("device plug-in server is stopping"));
        }
        let id = self.streams.open();
        let mut snapshots = self.context.snapshots.clone();
        let devices = set_devices(&snapshots.borrow_and_update(), &self.set);
        let (sender, receiver) = mpsc::channel(4);
        // The channel is new and has room, so the first list always fits.
        let _ = sender.try_send(Ok(to_response(&devices)));
        tracing::info!(
            set = %self.set,
            stream = id,
            count = devices.len(),
            "Plugin['{}']: ListAndWatch stream opened, announcing {} plug-in devices: {}",
            self.set,
            devices.len(),
            format_devices(&devices)
        );
        let feed = StreamFeed {
            set: self.set.clone(),
            id,
            snapshots,
            sender,
            stop: self.stop.clone(),
            streams: Arc::clone(&self.streams),
            last: devices,
        };
        self.tasks.spawn(feed.run());
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let snapshot = self.snapshot().ok_or_else(|| set_gone(&self.set))?;
        self.context
            .allocator
            .preferred_allocation(&snapshot, request.into_inner())
            .map(Response::new)
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let started = std::time::Instant::now();
        let result = match self.snapshot() {
            Some(snapshot) => {
                self.context
                    .allocator
                    .allocate(&snapshot, request.into_inner())
                    .await
            }
            None => Err(set_gone(&self.set)),
        };
        let error = result.as_ref().err().map(Status::code);
        self.context
            .metrics
            .observe_allocation(&self.set, started.elapsed(), error);
        result.map(Response::new)
    }

    async fn pre_start_container(
        &self,
        _request: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

fn set_gone(set: &str) -> Status {
    Status::not_found(format!(
        "config set {set:?} is no longer configured on this node"
    ))
}
