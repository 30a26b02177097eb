//! End-to-end tests of pod surveillance and cleanup through the agent
//! binary: a simulated node with its fake kernel, the simulated kubelet
//! (registration, `Allocate`) and a pod-resources server whose pod list
//! each test sets. Intervals are short: one pass a second, removal 2 s
//! after the last use and 3 s after creation when never used.
//!
//! The last test drives the allocator and the pod lister of the library
//! directly, to show that a removal never overlaps an allocation.

mod agent_support;
mod metrics_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use agent_support::{exists, pause, wait_until, Agent, Node, BLUE, WAIT};
use cex_ap::DeviceId;
use cex_config::CryptoConfig;
use cex_kubelet_api::deviceplugin::v1beta1::{AllocateRequest, ContainerAllocateRequest};
use cex_kubelet_api::podresources::v1::ListPodResourcesResponse;
use cex_node::{NodePaths, ZcryptNodes};
use cex_plugin::allocate::{Allocator, AllocatorOptions};
use cex_plugin::devices::{PluginDevice, SetSnapshot};
use cex_plugin::surveillance::{
    FsNodeStore, ListError, NodeKind, NodeStore, PodLister, PodListerSettings, PodSource,
    StoreError,
};
use cex_sim::kernel::{FakeKernel, RunningKernel};
use cex_sim::kubelet::{FakeKubelet, FakePod, PodResources};
use metrics_support::{http_get, parse, Exposition, Format};
use tokio::sync::watch;

const DEVICE: &str = "apqn-1-5-0";

/// Removal delays of most tests, in seconds: (unused, never used).
const DELAYS: (u64, u64) = (2, 3);

/// A node whose fake kernel serves zcrypt `create` and `destroy`.
struct Host {
    node: Node,
    _kernel: FakeKernel,
    _running: RunningKernel,
}

impl Host {
    fn new() -> Self {
        let node = Node::new();
        let kernel = FakeKernel::new(node.root.path()).expect("fake kernel");
        let running = kernel.start().expect("fake kernel runs");
        Host {
            node,
            _kernel: kernel,
            _running: running,
        }
    }

    /// Starts the pod-resources server with no pods.
    async fn serve_pods(&self) -> PodResources {
        let socket = self.node.pod_resources_socket();
        std::fs::create_dir_all(socket.parent().expect("socket dir")).expect("socket dir");
        PodResources::start(&socket)
            .await
            .expect("pod-resources server")
    }

    /// Starts the agent with removal delays `(unused, never_used)` and
    /// waits for its registration beyond the first `seen` ones.
    async fn agent(
        &self,
        kubelet: &FakeKubelet,
        (unused, never_used): (u64, u64),
        seen: usize,
        extra: &[(&str, &str)],
    ) -> Agent {
        let (unused, never_used) = (unused.to_string(), never_used.to_string());
        let mut env = vec![
            ("PODLISTER_POLL_INTERVAL", "1"),
            ("RESOURCE_DELETE_UNUSED", unused.as_str()),
            ("RESOURCE_DELETE_NEVER_USED", never_used.as_str()),
        ];
        env.extend_from_slice(extra);
        let agent = self.node.spawn_agent(&env);
        let registered = kubelet.wait_registration(BLUE, seen, WAIT).await;
        assert!(
            registered.is_some(),
            "no registration; log:\n{}",
            agent.log_text()
        );
        agent
    }

    /// Returns the zcrypt node dir, the `/dev` entry and the shadow dir of
    /// `id`.
    fn device_files(&self, id: &str) -> [PathBuf; 3] {
        [
            self.node
                .path(&format!("sys/devices/virtual/zcrypt/zcrypt-{id}")),
            self.node.path(&format!("dev/zcrypt-{id}")),
            self.node.path(&format!("var/tmp/shadowsysfs/sysfs-{id}")),
        ]
    }

    fn all_present(&self, id: &str) -> bool {
        self.device_files(id).iter().all(|path| exists(path))
    }

    fn all_gone(&self, id: &str) -> bool {
        self.device_files(id).iter().all(|path| !exists(path))
    }
}

async fn kubelet_of(host: &Host) -> FakeKubelet {
    FakeKubelet::start(host.node.plugin_dir())
        .await
        .expect("kubelet")
}

/// A host with the pod-resources server, the kubelet and the agent, and
/// `DEVICE` allocated.
struct Scene {
    host: Host,
    pods: PodResources,
    kubelet: FakeKubelet,
    agent: Agent,
}

impl Scene {
    /// Starts everything with removal delays `delays` and the agent
    /// environment `extra`, lists no pods and allocates `DEVICE`.
    async fn start(delays: (u64, u64), extra: &[(&str, &str)]) -> Scene {
        let host = Host::new();
        let pods = host.serve_pods().await;
        let kubelet = kubelet_of(&host).await;
        let agent = host.agent(&kubelet, delays, 0, extra).await;
        allocate(&kubelet, &agent, DEVICE).await;
        Scene {
            host,
            pods,
            kubelet,
            agent,
        }
    }
}

/// Allocates `id` of set blue through the kubelet's `Allocate` call.
async fn allocate(kubelet: &FakeKubelet, agent: &Agent, id: &str) {
    let result = kubelet.allocate(BLUE, vec![vec![id.to_string()]]).await;
    if let Err(status) = result {
        panic!("Allocate {id}: {status}; log:\n{}", agent.log_text());
    }
}

fn blue_pod(name: &str, namespace: &str) -> FakePod {
    FakePod::with_devices(name, namespace, BLUE, &[DEVICE])
}

/// Waits until the pod-resources server has served `count` more `List`
/// calls, so that the agent has seen the current pod list.
async fn wait_lists(pods: &PodResources, count: u64) {
    let target = pods.list_calls() + count;
    let reached = wait_until(|| pods.list_calls() >= target).await;
    assert!(reached, "the agent stopped listing pods");
}

/// Waits until every file of `id` is gone.
async fn wait_gone(host: &Host, agent: &Agent, id: &str) {
    let gone = wait_until(|| host.all_gone(id)).await;
    assert!(gone, "{id} not cleaned up; log:\n{}", agent.log_text());
}

/// Returns the ages in seconds that the removal lines of `id` report for
/// `reason`, e.g. `never used` or `unused`: the zcrypt node's, then the
/// shadow dir's.
fn removal_ages(agent: &Agent, id: &str, reason: &str) -> Vec<u64> {
    let heads = [
        (
            format!("PodLister: zcrypt node zcrypt-{id} {reason} for "),
            ", destroying",
        ),
        (
            format!("PodLister: shadow dir sysfs-{id} {reason} for "),
            ", removing",
        ),
    ];
    let log = agent.log_text();
    heads
        .iter()
        .filter_map(|(head, tail)| {
            let line = log.lines().find(|line| line.contains(head.as_str()))?;
            let rest = &line[line.find(head.as_str())? + head.len()..];
            let seconds = rest.split(" s").next()?;
            assert!(rest.contains(tail), "{line}");
            seconds.parse().ok()
        })
        .collect()
}

/// Returns the messages of the log lines that contain `needle`, from
/// `PodLister:` up to the structured fields.
fn messages(agent: &Agent, needle: &str) -> Vec<String> {
    agent
        .log_text()
        .lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| {
            let start = line.find("PodLister:")?;
            let message = &line[start..];
            let end = message.find(" pod=").unwrap_or(message.len());
            Some(message[..end].to_string())
        })
        .collect()
}

// === project mismatch ===

/// A pod in namespace red holding a device of set blue is logged once
/// with the exact line, however many passes list it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatch_logged_once_while_it_persists() {
    let Scene {
        host,
        pods,
        kubelet: _kubelet,
        agent,
    } = Scene::start(DELAYS, &[]).await;
    pods.set_pods(vec![blue_pod("app", "red")]);

    let line = "PodLister: Container app-container in namespace red uses a CEX resource \
                apqn-1-5-0 marked for project blue!";
    assert!(agent.wait_for_log(line).await, "{}", agent.log_text());
    wait_lists(&pods, 4).await;
    assert_eq!(messages(&agent, "marked for project"), [line]);
    assert!(host.all_present(DEVICE), "a held device was cleaned up");
}

// === cleanup ===

/// An allocated device that no pod ever holds is destroyed after the
/// never-used delay: zcrypt node, `/dev` entry and shadow dir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_listed_device_destroyed() {
    let Scene {
        host,
        pods,
        kubelet: _kubelet,
        agent,
    } = Scene::start(DELAYS, &[]).await;
    assert!(host.all_present(DEVICE));

    wait_gone(&host, &agent, DEVICE).await;
    let ages = removal_ages(&agent, DEVICE, "never used");
    assert_eq!(ages.len(), 2, "{}", agent.log_text());
    assert!(ages.iter().all(|age| *age >= DELAYS.1), "{ages:?}");
    assert!(pods.list_calls() > 0);
}

/// A device a pod held is destroyed after the unused delay once the pod
/// is no longer listed, and not before, even past the never-used delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_device_destroyed() {
    let Scene {
        host,
        pods,
        kubelet: _kubelet,
        agent,
    } = Scene::start(DELAYS, &[]).await;
    pods.set_pods(vec![blue_pod("app", "blue")]);
    wait_lists(&pods, 5).await;
    assert!(host.all_present(DEVICE), "{}", agent.log_text());

    pods.set_pods(Vec::new());
    wait_gone(&host, &agent, DEVICE).await;
    let ages = removal_ages(&agent, DEVICE, "unused");
    assert_eq!(ages.len(), 2, "{}", agent.log_text());
    assert!(ages.iter().all(|age| *age >= DELAYS.0), "{ages:?}");
    assert!(removal_ages(&agent, DEVICE, "never used").is_empty());
}

/// Holds a listed pod for twice the longer delay, checks that nothing was
/// removed, then lets the pod go and waits for the cleanup.
async fn held_device_survives(delays: (u64, u64)) {
    let Scene {
        host,
        pods,
        kubelet: _kubelet,
        agent,
    } = Scene::start(delays, &[]).await;
    pods.set_pods(vec![blue_pod("app", "blue")]);

    let longer = delays.0.max(delays.1);
    pause(Duration::from_secs(2 * longer + 1)).await;
    wait_lists(&pods, 1).await;
    assert!(host.all_present(DEVICE), "{delays:?}: {}", agent.log_text());
    assert_eq!(agent.log_count(", destroying"), 0, "{delays:?}");
    assert_eq!(agent.log_count(", removing"), 0, "{delays:?}");

    pods.set_pods(Vec::new());
    wait_gone(&host, &agent, DEVICE).await;
    assert_eq!(removal_ages(&agent, DEVICE, "unused").len(), 2);
}

/// A listed pod keeps its device whatever the delays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_pod_keeps_device_for_any_delays() {
    tokio::join!(
        held_device_survives((1, 1)),
        held_device_survives(DELAYS),
        held_device_survives((4, 2)),
    );
}

/// While the pod-resources socket is missing nothing is destroyed; once
/// it is back the outage end is logged and cleanup resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cleanup_until_pod_resources_return() {
    let host = Host::new();
    let kubelet = kubelet_of(&host).await;
    let agent = host.agent(&kubelet, DELAYS, 0, &[]).await;
    allocate(&kubelet, &agent, DEVICE).await;

    let failed = "PodLister: pod-resources List failed, no cleanup until it succeeds";
    assert!(agent.wait_for_log(failed).await, "{}", agent.log_text());
    pause(Duration::from_secs(DELAYS.1 + 2)).await;
    assert!(host.all_present(DEVICE), "{}", agent.log_text());
    assert_eq!(agent.log_count(failed), 1, "outage logged more than once");

    let pods = host.serve_pods().await;
    let back = "PodLister: pod-resources API reachable again after";
    assert!(agent.wait_for_log(back).await, "{}", agent.log_text());
    wait_gone(&host, &agent, DEVICE).await;
    assert_eq!(removal_ages(&agent, DEVICE, "never used").len(), 2);
    assert!(pods.list_calls() > 0);
}

// === agent restart ===

/// Stops the agent with SIGTERM and checks that it exits cleanly.
async fn terminate(agent: Agent) {
    let code = tokio::task::spawn_blocking(move || {
        let mut agent = agent;
        agent.terminate()
    })
    .await
    .expect("terminate task");
    assert_eq!(code, Some(0));
}

/// A new agent adopts the node and shadow dir of a device a listed pod
/// holds, registers again, and destroys them once the pod is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_agent_adopts_devices_in_use() {
    let Scene {
        host,
        pods,
        kubelet,
        agent,
    } = Scene::start(DELAYS, &[]).await;
    pods.set_pods(vec![blue_pod("app", "blue")]);
    wait_lists(&pods, 2).await;
    terminate(agent).await;
    assert!(host.all_present(DEVICE), "SIGTERM removed a device in use");

    let agent = host.agent(&kubelet, DELAYS, 1, &[]).await;
    let adopted = "PodLister: adopted 1 zcrypt nodes and 1 shadow dirs found at start";
    assert!(agent.wait_for_log(adopted).await, "{}", agent.log_text());
    pause(Duration::from_secs(DELAYS.0 + DELAYS.1)).await;
    assert!(host.all_present(DEVICE), "{}", agent.log_text());
    let nodes_dir = host.node.path("sys/devices/virtual/zcrypt");
    let names: Vec<_> = std::fs::read_dir(nodes_dir)
        .expect("nodes dir")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["zcrypt-apqn-1-5-0"], "a node leaked or was remade");

    pods.set_pods(Vec::new());
    wait_gone(&host, &agent, DEVICE).await;
    let ages = removal_ages(&agent, DEVICE, "unused");
    assert_eq!(ages.len(), 2, "{}", agent.log_text());
    assert!(ages.iter().all(|age| *age >= DELAYS.0), "{ages:?}");
}

// === field cases ===

/// Reads the metrics listener's address from the agent's start-up log.
async fn metrics_addr(agent: &Agent) -> SocketAddr {
    let head = "serving /metrics, /healthz and /readyz on ";
    assert!(agent.wait_for_log(head).await, "{}", agent.log_text());
    let log = agent.log_text();
    let rest = &log[log.find(head).expect("listener line") + head.len()..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end].parse().expect("listener address")
}

fn scrape(addr: SocketAddr) -> Exposition {
    let response = http_get(addr, "/metrics", Some("text/plain"));
    assert_eq!(response.status, 200, "{}", response.body);
    parse(&response.body, Format::Text).expect("valid exposition")
}

/// Scrapes until `check` holds; panics with the last scrape otherwise.
async fn scrape_until(addr: SocketAddr, what: &str, check: impl Fn(&Exposition) -> bool) {
    let held = wait_until(|| check(&scrape(addr))).await;
    assert!(held, "{what} never held: {:#?}", scrape(addr).samples);
}

/// C6: the kubelet lists one device under a finished pod in namespace
/// blue and a new pod in namespace red. The device counts once, only the
/// red pod is a mismatch, and the node is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_under_two_pods_counts_once() {
    let Scene {
        host,
        pods,
        kubelet: _kubelet,
        agent,
    } = Scene::start(DELAYS, &[("METRICS_LISTEN", "127.0.0.1:0")]).await;
    let addr = metrics_addr(&agent).await;
    pods.set_pods(vec![blue_pod("p1", "blue"), blue_pod("p2", "red")]);

    let used = |e: &Exposition| e.value("cex_plugin_plugindevs_used", &[("setname", "blue")]);
    scrape_until(addr, "one blue device used", |e| used(e) == Some(1.0)).await;
    pause(Duration::from_secs(DELAYS.0 + DELAYS.1)).await;
    wait_lists(&pods, 1).await;

    let line = "PodLister: Container p2-container in namespace red uses a CEX resource \
                apqn-1-5-0 marked for project blue!";
    assert_eq!(messages(&agent, "marked for project"), [line]);
    assert_eq!(used(&scrape(addr)), Some(1.0));
    assert!(host.all_present(DEVICE), "{}", agent.log_text());
}

/// Waits for a blue ListAndWatch message, sent after `seen` ones, in
/// which `DEVICE` has the health `state`.
async fn wait_health(kubelet: &FakeKubelet, seen: usize, state: &str) -> bool {
    let message = kubelet
        .wait_for(WAIT, |recorded| {
            let mut later = recorded.messages(BLUE).into_iter().skip(seen);
            later.find(|m| m.health_of(DEVICE) == Some(state)).cloned()
        })
        .await;
    message.is_some()
}

/// C9: the queue of an allocated and listed device goes offline. The
/// kubelet hears Unhealthy, the log names the pod, the node and shadow
/// dir stay, and back online the device is Healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_queue_of_held_device() {
    let Scene {
        host,
        pods,
        kubelet,
        agent,
    } = Scene::start(DELAYS, &[("METRICS_LISTEN", "127.0.0.1:0")]).await;
    let addr = metrics_addr(&agent).await;
    pods.set_pods(vec![blue_pod("app", "blue")]);
    wait_lists(&pods, 2).await;

    let seen = kubelet.recorded().messages(BLUE).len();
    host.node.set_queue_online(1, 5, false);
    assert!(wait_health(&kubelet, seen, "Unhealthy").await);
    let line = "PodLister: pod blue/app (container app-container) holds unhealthy device \
                apqn-1-5-0: APQN 01.0005 is not usable";
    assert!(agent.wait_for_log(line).await, "{}", agent.log_text());
    let health = |e: &Exposition| {
        e.value(
            "cex_plugin_apqn_healthy",
            &[("adapter", "1"), ("domain", "5")],
        )
    };
    scrape_until(addr, "APQN 1/5 unhealthy", |e| health(e) == Some(0.0)).await;
    pause(Duration::from_secs(DELAYS.0 + DELAYS.1)).await;
    assert!(host.all_present(DEVICE), "{}", agent.log_text());
    assert_eq!(agent.log_count(line), 1);

    let seen = kubelet.recorded().messages(BLUE).len();
    host.node.set_queue_online(1, 5, true);
    assert!(wait_health(&kubelet, seen, "Healthy").await);
    let cleared = "PodLister: pod blue/app no longer holds an unusable device apqn-1-5-0";
    assert!(agent.wait_for_log(cleared).await, "{}", agent.log_text());
    scrape_until(addr, "APQN 1/5 healthy", |e| health(e) == Some(1.0)).await;
    assert!(host.all_present(DEVICE));
}

// === removal against allocation ===

/// A pod-resources source that lists no pods.
struct NoPods;

impl PodSource for NoPods {
    async fn list(&mut self) -> Result<ListPodResourcesResponse, ListError> {
        Ok(ListPodResourcesResponse::default())
    }
}

/// What [`RacingStore`] saw during its first removal.
#[derive(Debug, Default)]
struct Race {
    /// The result of the concurrent `Allocate`, once it finished.
    allocated: Option<Result<PathBuf, String>>,
    /// Whether that `Allocate` finished while the removal waited.
    finished_during_removal: Option<bool>,
}

/// The real store of a node with a hook in its first removal. The hook
/// starts an `Allocate` of the same device on another task and gives it
/// one second to finish before anything is removed.
struct RacingStore {
    inner: FsNodeStore,
    allocator: Allocator,
    runtime: tokio::runtime::Handle,
    race: Arc<Mutex<Race>>,
}

impl NodeStore for RacingStore {
    type Error = StoreError;

    fn list_names(&self, kind: NodeKind) -> Result<Vec<String>, StoreError> {
        self.inner.list_names(kind)
    }

    fn remove(&self, kind: NodeKind, device: &DeviceId) -> Result<(), StoreError> {
        let first = self
            .race
            .lock()
            .expect("race lock")
            .finished_during_removal
            .is_none();
        if first {
            let (done, finished) = mpsc::channel();
            let (allocator, race) = (self.allocator.clone(), Arc::clone(&self.race));
            self.runtime.spawn(async move {
                let response = allocator.allocate(&blue_set(), request(DEVICE)).await;
                let result = response
                    .map(|r| PathBuf::from(&r.container_responses[0].devices[0].host_path))
                    .map_err(|status| status.to_string());
                race.lock().expect("race lock").allocated = Some(result);
                let _ = done.send(());
            });
            let during = finished.recv_timeout(Duration::from_secs(1)).is_ok();
            self.race.lock().expect("race lock").finished_during_removal = Some(during);
        }
        self.inner.remove(kind, device)
    }
}

fn blue_set() -> SetSnapshot {
    let id: DeviceId = DEVICE.parse().expect("device id");
    SetSnapshot {
        name: "blue".to_string(),
        project: "blue".to_string(),
        live_sysfs: false,
        devices: vec![PluginDevice { id, healthy: true }],
    }
}

fn request(id: &str) -> AllocateRequest {
    AllocateRequest {
        container_requests: vec![ContainerAllocateRequest {
            devices_i_ds: vec![id.to_string()],
        }],
    }
}

fn node_paths(node: &Node) -> NodePaths {
    NodePaths {
        ap_bus_dir: node.path("sys/bus/ap"),
        ap_devs_dir: node.path("sys/devices/ap"),
        zcrypt_class_dir: node.path("sys/class/zcrypt"),
        zcrypt_nodes_dir: node.path("sys/devices/virtual/zcrypt"),
        dev_dir: node.path("dev"),
        shadow_base: node.path("var/tmp/shadowsysfs"),
    }
}

/// An `Allocate` of a device whose node cleanup is removing waits until
/// the removal is done and then makes the node again, so the container
/// never gets a node that is destroyed under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_waits_for_node_removal() {
    let host = Host::new();
    let paths = node_paths(&host.node);
    let allocator = Allocator::new(paths.clone(), AllocatorOptions::default());
    allocator
        .allocate(&blue_set(), request(DEVICE))
        .await
        .expect("first Allocate");
    assert!(host.all_present(DEVICE));

    let race = Arc::new(Mutex::new(Race::default()));
    let store = RacingStore {
        inner: FsNodeStore::new(&paths, ZcryptNodes::new(&paths, Duration::from_secs(5))),
        allocator: allocator.clone(),
        runtime: tokio::runtime::Handle::current(),
        race: Arc::clone(&race),
    };
    let settings = PodListerSettings::new(
        Duration::from_secs(1),
        Duration::ZERO,
        Duration::ZERO,
        agent_support::MACHINE_ID.to_string(),
    );
    let (_config, config) = watch::channel(None::<CryptoConfig>);
    let mut lister =
        PodLister::new(settings, NoPods, store, config).with_allocations(Arc::new(allocator));
    lister.pass().await;

    let finished = wait_until(|| race.lock().expect("race lock").allocated.is_some()).await;
    assert!(finished, "the concurrent Allocate never finished");
    let race = race.lock().expect("race lock");
    assert_eq!(race.finished_during_removal, Some(false), "{race:?}");
    let dev_path = match &race.allocated {
        Some(Ok(path)) => path.clone(),
        other => panic!("concurrent Allocate failed: {other:?}"),
    };
    assert!(
        exists(&dev_path),
        "{} handed out but gone",
        dev_path.display()
    );
    assert!(host.all_present(DEVICE));
}
