//! Records of the simulated kubelet: Register calls and ListAndWatch
//! messages with their arrival times, and the handles of open streams.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cex_kubelet_api::deviceplugin::v1beta1::{Device, DevicePluginOptions, HEALTHY};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// One Register call.
#[derive(Debug, Clone)]
pub struct Registration {
    pub at: Instant,
    pub version: String,
    pub endpoint: String,
    pub resource: String,
    pub options: Option<DevicePluginOptions>,
    /// False when the call was rejected on purpose.
    pub accepted: bool,
}

/// One ListAndWatch message.
#[derive(Debug, Clone)]
pub struct Message {
    pub at: Instant,
    pub stream: u64,
    pub devices: Vec<Device>,
}

impl Message {
    /// Returns the ids in the message, in message order.
    pub fn ids(&self) -> Vec<String> {
        self.devices
            .iter()
            .map(|device| device.id.clone())
            .collect()
    }

    /// Counts the devices reported Healthy.
    pub fn healthy(&self) -> usize {
        self.devices
            .iter()
            .filter(|device| device.health == HEALTHY)
            .count()
    }

    /// Returns the health of device `id`, if listed.
    pub fn health_of(&self, id: &str) -> Option<&str> {
        self.devices
            .iter()
            .find(|device| device.id == id)
            .map(|device| device.health.as_str())
    }
}

/// End of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The simulated kubelet closed it (restart, `close_stream`, stop).
    ClosedByKubelet,
    /// The plug-in ended it, with the gRPC status text if any.
    EndedByPlugin(Option<String>),
    /// The plug-in socket could not be dialled or ListAndWatch failed.
    Failed(String),
}

/// One ListAndWatch stream opened after an accepted registration.
#[derive(Debug, Clone)]
pub struct StreamRecord {
    pub id: u64,
    pub resource: String,
    pub endpoint: String,
    pub opened_at: Instant,
    pub messages: Vec<Message>,
    pub ended: Option<StreamEnd>,
}

/// Everything recorded so far.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub registrations: Vec<Registration>,
    pub streams: Vec<StreamRecord>,
}

impl Recorded {
    /// Register calls of `resource`, accepted or not.
    pub fn registrations_of(&self, resource: &str) -> Vec<&Registration> {
        self.registrations
            .iter()
            .filter(|r| r.resource == resource)
            .collect()
    }

    /// Accepted Register calls of `resource`.
    pub fn accepted(&self, resource: &str) -> Vec<&Registration> {
        self.registrations
            .iter()
            .filter(|r| r.resource == resource && r.accepted)
            .collect()
    }

    /// Streams of `resource` in opening order.
    pub fn streams_of(&self, resource: &str) -> Vec<&StreamRecord> {
        self.streams
            .iter()
            .filter(|s| s.resource == resource)
            .collect()
    }

    /// Returns every message of `resource` over all its streams, in arrival order.
    pub fn messages(&self, resource: &str) -> Vec<&Message> {
        let mut messages: Vec<&Message> = self
            .streams_of(resource)
            .into_iter()
            .flat_map(|s| s.messages.iter())
            .collect();
        messages.sort_by_key(|message| message.at);
        messages
    }
}

struct OpenStream {
    close: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// State shared by the registration server, the stream tasks and the
/// [`super::FakeKubelet`] handle.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) reject_next: AtomicU32,
    next_stream: AtomicU64,
    state: Mutex<Recorded>,
    open: Mutex<BTreeMap<u64, (String, OpenStream)>>,
    version: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            reject_next: AtomicU32::new(0),
            next_stream: AtomicU64::new(1),
            state: Mutex::new(Recorded::default()),
            open: Mutex::new(BTreeMap::new()),
            version: watch::channel(0).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Recorded> {
        // Plain records stay consistent even if a holder panicked.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn open_streams(&self) -> MutexGuard<'_, BTreeMap<u64, (String, OpenStream)>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn recorded(&self) -> Recorded {
        self.lock().clone()
    }

    /// Applies `change` to the records and wakes every waiter.
    pub(crate) fn record<T>(&self, change: impl FnOnce(&mut Recorded) -> T) -> T {
        let result = change(&mut self.lock());
        self.version.send_modify(|version| *version += 1);
        result
    }

    pub(crate) fn new_stream_id(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::SeqCst)
    }

    pub(crate) fn add_open_stream(
        &self,
        id: u64,
        resource: String,
        close: oneshot::Sender<()>,
        task: JoinHandle<()>,
    ) {
        self.open_streams()
            .insert(id, (resource, OpenStream { close, task }));
    }

    /// Signals the open streams of `resource` (all when `None`) to close
    /// and returns their tasks.
    pub(crate) fn close_streams(&self, resource: Option<&str>) -> Vec<JoinHandle<()>> {
        let mut open = self.open_streams();
        let ids: Vec<u64> = open
            .iter()
            .filter(|(_, (name, _))| resource.is_none_or(|wanted| wanted == name))
            .map(|(id, _)| *id)
            .collect();
        let mut tasks = Vec::new();
        for id in ids {
            if let Some((_, stream)) = open.remove(&id) {
                let _ = stream.close.send(());
                tasks.push(stream.task);
            }
        }
        tasks
    }

    pub(crate) async fn join_streams(&self, tasks: Vec<JoinHandle<()>>) {
        for task in tasks {
            let _ = task.await;
        }
    }

    pub(crate) async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Recorded) -> Option<T>,
    ) -> Option<T> {
        let mut version = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            version.borrow_and_update();
            if let Some(found) = check(&self.lock()) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, version.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }
}
