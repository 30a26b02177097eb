//! Pod surveillance against a real pod-resources gRPC server on a Unix
//! socket and a simulated node: a fake kernel serving zcrypt create and
//! destroy on plain files, and a shadow base dir in a temp dir.
//!
//! Each test drives `PodLister::pass` itself, with removal delays of one
//! or two seconds, and checks the files on disk and the captured log.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cex_ap::{Apqn, Card, DeviceId, Inventory, Queue};
use cex_config::{ConfigApqn, ConfigSet, CryptoConfig};
use cex_kubelet_api::podresources::v1::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use cex_kubelet_api::podresources::v1::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
};
use cex_node::{NodePaths, ZcryptNodes};
use cex_plugin::surveillance::{
    AllocationLog, FsNodeStore, KubeletPodSource, PodLister, PodListerSettings,
};
use cex_sim::kernel::{FakeKernel, RunningKernel};
use tokio::net::UnixListener;
use tokio::sync::{oneshot, watch};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

const UNUSED: Duration = Duration::from_secs(1);
const NEVER_USED: Duration = Duration::from_secs(2);

// === pod-resources server ===

/// The pods the server lists, and an optional delay before each answer.
#[derive(Clone, Default)]
struct Pods {
    pods: Arc<Mutex<Vec<PodResources>>>,
    delay: Arc<Mutex<Duration>>,
}

impl Pods {
    fn set(&self, pods: Vec<PodResources>) {
        *self.pods.lock().expect("pods lock") = pods;
    }
}

#[tonic::async_trait]
impl PodResourcesLister for Pods {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        let delay = *self.delay.lock().expect("delay lock");
        tokio::time::sleep(delay).await;
        let pod_resources = self.pods.lock().expect("pods lock").clone();
        Ok(Response::new(ListPodResourcesResponse { pod_resources }))
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        Ok(Response::new(AllocatableResourcesResponse::default()))
    }

    async fn get(
        &self,
        _: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented(
            "Get is not served by this test server",
        ))
    }
}

/// A pod-resources server on `socket`; dropping it stops the server and
/// removes the socket.
struct Server {
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    fn start(socket: &Path, pods: &Pods) -> Server {
        let listener = UnixListener::bind(socket).expect("bind pod-resources socket");
        let (stop, stopped) = oneshot::channel::<()>();
        let service = PodResourcesListerServer::new(pods.clone());
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        Server {
            socket: socket.to_path_buf(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn pod(namespace: &str, name: &str, set: &str, device: &str) -> PodResources {
    PodResources {
        name: name.to_string(),
        namespace: namespace.to_string(),
        containers: vec![ContainerResources {
            name: format!("{name}-app"),
            devices: vec![ContainerDevices {
                resource_name: format!("cex.s390.ibm.com/{set}"),
                device_ids: vec![device.to_string()],
                topology: None,
            }],
            ..Default::default()
        }],
    }
}

// === simulated node ===

struct Node {
    dir: tempfile::TempDir,
    paths: NodePaths,
    _kernel: RunningKernel,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        let class_dir = root.join("sys/class/zcrypt");
        std::fs::create_dir_all(&class_dir).expect("zcrypt class dir");
        for file in ["create", "destroy"] {
            std::fs::write(class_dir.join(file), "").expect("zcrypt control file");
        }
        let kernel = FakeKernel::new(&root)
            .expect("fake kernel")
            .start()
            .expect("start kernel");
        let paths = NodePaths::under_root(&root, &dir.path().join("shadowsysfs"));
        Node {
            dir,
            paths,
            _kernel: kernel,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("pod-resources.sock")
    }

    fn zcrypt(&self) -> ZcryptNodes {
        ZcryptNodes::new(&self.paths, Duration::from_secs(5))
    }

    /// Makes the zcrypt node and a shadow dir of `device`, as an
    /// allocation would.
    fn allocate(&self, device: &str) {
        let id: DeviceId = device.parse().expect("canonical id");
        self.zcrypt().ensure(&id).expect("create zcrypt node");
        let base = &self.paths.shadow_base;
        std::fs::create_dir_all(base).expect("shadow base");
        set_mode(base, 0o755);
        let shadow = base.join(id.shadow_dir_name());
        std::fs::create_dir_all(shadow.join("bus/ap")).expect("shadow dir");
        std::fs::create_dir_all(shadow.join("devices/ap")).expect("shadow dir");
    }

    fn has_node(&self, device: &str) -> bool {
        let name = format!("zcrypt-{device}");
        self.paths.zcrypt_nodes_dir.join(&name).exists() || self.paths.dev_dir.join(&name).exists()
    }

    fn has_shadow_dir(&self, device: &str) -> bool {
        self.paths
            .shadow_base
            .join(format!("sysfs-{device}"))
            .exists()
    }

    fn lister(
        &self,
        config: watch::Receiver<Option<CryptoConfig>>,
    ) -> PodLister<KubeletPodSource, FsNodeStore, Option<CryptoConfig>> {
        let mut settings =
            PodListerSettings::new(Duration::from_secs(1), UNUSED, NEVER_USED, String::new());
        settings.list_timeout = Duration::from_secs(1);
        let source = KubeletPodSource::new(self.socket(), settings.list_timeout);
        let store = FsNodeStore::new(&self.paths, self.zcrypt());
        PodLister::new(settings, source, store, config)
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn blue_config() -> watch::Receiver<Option<CryptoConfig>> {
    let apqn = |adapter| ConfigApqn {
        adapter,
        domain: 5,
        machineid: String::new(),
    };
    let blue = ConfigSet {
        setname: "blue".to_string(),
        project: "blue".to_string(),
        cexmode: None,
        mincexgen: None,
        overcommit: None,
        livesysfs: None,
        apqns: vec![apqn(1), apqn(2)],
    };
    let (sender, receiver) = watch::channel(Some(CryptoConfig { sets: vec![blue] }));
    // The receiver keeps the last value after the sender is gone.
    drop(sender);
    receiver
}

// === log capture ===

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log lock")).into_owned()
    }

    fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }
}

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures the log of the current thread; the tests run on a
/// current-thread runtime, so the lister's passes log here.
fn capture_log() -> (Log, tracing::subscriber::DefaultGuard) {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (log, tracing::subscriber::set_default(subscriber))
}

// === harness ===

/// A simulated node with a pod-resources server, and the captured log.
struct Harness {
    log: Log,
    _guard: tracing::subscriber::DefaultGuard,
    node: Node,
    pods: Pods,
    server: Option<Server>,
}

impl Harness {
    /// Starts a node whose `devices` have a zcrypt node and a shadow dir,
    /// with the pod-resources server running.
    fn start(devices: &[&str]) -> Harness {
        let mut harness = Harness::without_kubelet(devices);
        harness.start_kubelet();
        harness
    }

    /// Starts a node whose `devices` have a zcrypt node and a shadow dir,
    /// with no pod-resources socket.
    fn without_kubelet(devices: &[&str]) -> Harness {
        let (log, guard) = capture_log();
        let node = Node::new();
        for device in devices {
            node.allocate(device);
        }
        let pods = Pods::default();
        Harness {
            log,
            _guard: guard,
            node,
            pods,
            server: None,
        }
    }

    fn start_kubelet(&mut self) {
        self.server = Some(Server::start(&self.node.socket(), &self.pods));
    }

    fn lister(&self) -> PodLister<KubeletPodSource, FsNodeStore, Option<CryptoConfig>> {
        self.node.lister(blue_config())
    }

    async fn finish(self) {
        if let Some(server) = self.server {
            server.stop().await;
        }
    }
}

async fn sleep_past(delay: Duration) {
    tokio::time::sleep(delay + Duration::from_millis(100)).await;
}

// === tests ===

#[tokio::test]
async fn mismatch_logged_once_with_fields() {
    let harness = Harness::start(&["apqn-1-5-0"]);
    let (log, pods) = (&harness.log, &harness.pods);
    pods.set(vec![pod("red", "intruder", "blue", "apqn-1-5-0")]);

    let mut lister = harness.lister();
    for _ in 0..3 {
        lister.pass().await;
    }

    let line = "PodLister: Container intruder-app in namespace red uses a CEX resource \
                apqn-1-5-0 marked for project blue!";
    assert_eq!(log.count(line), 1, "{}", log.text());
    let logged = log.text();
    let mismatch = logged
        .lines()
        .find(|l| l.contains(line))
        .expect("mismatch line");
    assert!(mismatch.contains("WARN"), "{mismatch}");
    assert!(mismatch.contains("pod=intruder"), "{mismatch}");
    assert!(mismatch.contains("namespace=red"), "{mismatch}");
    assert!(mismatch.contains("set=blue"), "{mismatch}");
    assert!(mismatch.contains("device=apqn-1-5-0"), "{mismatch}");
    let stats = lister.stats().snapshot();
    assert_eq!(stats.mismatches_total, 1);
    assert_eq!(stats.mismatches_current, 1);

    pods.set(vec![]);
    lister.pass().await;
    pods.set(vec![pod("red", "intruder", "blue", "apqn-1-5-0")]);
    lister.pass().await;
    assert_eq!(
        log.count(line),
        2,
        "a mismatch that comes back is logged again"
    );
    harness.finish().await;
}

#[tokio::test]
async fn never_used_node_destroyed_after_timeout() {
    let harness = Harness::start(&["apqn-1-5-0"]);
    let (log, node) = (&harness.log, &harness.node);

    let mut lister = harness.lister();
    lister.pass().await;
    assert!(
        log.text()
            .contains("adopted 1 zcrypt nodes and 1 shadow dirs"),
        "{}",
        log.text()
    );
    assert!(node.has_node("apqn-1-5-0"));

    sleep_past(NEVER_USED).await;
    lister.pass().await;
    assert!(!node.has_node("apqn-1-5-0"), "{}", log.text());
    assert!(!node.has_shadow_dir("apqn-1-5-0"));
    assert!(log
        .text()
        .contains("zcrypt node zcrypt-apqn-1-5-0 never used for 2 s, destroying"));
    assert!(log
        .text()
        .contains("shadow dir sysfs-apqn-1-5-0 never used for 2 s, removing"));
    let stats = lister.stats().snapshot();
    assert_eq!(stats.zcrypt_nodes_destroyed_total, 1);
    assert_eq!(stats.shadow_dirs_removed_total, 1);
    harness.finish().await;
}

#[tokio::test]
async fn unused_node_destroyed_after_pod_leaves() {
    let harness = Harness::start(&["apqn-1-5-0", "apqn-2-5-0"]);
    let (log, node, pods) = (&harness.log, &harness.node, &harness.pods);
    pods.set(vec![
        pod("blue", "p1", "blue", "apqn-1-5-0"),
        pod("blue", "p2", "blue", "apqn-2-5-0"),
    ]);

    let mut lister = harness.lister();
    lister.pass().await;
    pods.set(vec![pod("blue", "p2", "blue", "apqn-2-5-0")]);
    lister.pass().await;
    assert!(
        node.has_node("apqn-1-5-0"),
        "removed before RESOURCE_DELETE_UNUSED"
    );

    sleep_past(UNUSED).await;
    lister.pass().await;
    assert!(!node.has_node("apqn-1-5-0"), "{}", log.text());
    assert!(!node.has_shadow_dir("apqn-1-5-0"));
    assert!(log
        .text()
        .contains("zcrypt node zcrypt-apqn-1-5-0 unused for 1 s, destroying"));
    assert!(
        node.has_node("apqn-2-5-0"),
        "a listed pod's node was removed"
    );
    assert!(node.has_shadow_dir("apqn-2-5-0"));
    harness.finish().await;
}

#[tokio::test]
async fn listed_pod_keeps_its_node() {
    let harness = Harness::start(&["apqn-1-5-0"]);
    let node = &harness.node;
    harness
        .pods
        .set(vec![pod("blue", "p1", "blue", "apqn-1-5-0")]);

    let mut lister = harness.lister();
    for _ in 0..4 {
        lister.pass().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(node.has_node("apqn-1-5-0"));
    assert!(node.has_shadow_dir("apqn-1-5-0"));
    harness.finish().await;
}

#[tokio::test]
async fn no_cleanup_while_kubelet_is_away() {
    let mut harness = Harness::without_kubelet(&["apqn-1-5-0"]);

    let mut lister = harness.lister();
    lister.pass().await;
    lister.pass().await;
    sleep_past(NEVER_USED).await;
    lister.pass().await;
    let (log, node) = (&harness.log, &harness.node);
    assert!(
        node.has_node("apqn-1-5-0"),
        "removed without a successful List"
    );
    assert!(node.has_shadow_dir("apqn-1-5-0"));
    assert_eq!(
        log.count("pod-resources List failed, no cleanup"),
        1,
        "{}",
        log.text()
    );
    assert_eq!(lister.stats().snapshot().list_failures_total, 3);

    harness.start_kubelet();
    lister.pass().await;
    let (log, node) = (&harness.log, &harness.node);
    assert!(
        log.text().contains("pod-resources API reachable again"),
        "{}",
        log.text()
    );
    assert!(
        !node.has_node("apqn-1-5-0"),
        "not removed once the kubelet answered"
    );
    harness.finish().await;
}

#[tokio::test]
async fn slow_kubelet_times_out() {
    let harness = Harness::start(&["apqn-1-5-0"]);
    *harness.pods.delay.lock().expect("delay lock") = Duration::from_secs(3);

    let mut lister = harness.lister();
    lister.pass().await;
    tokio::time::sleep(NEVER_USED).await;
    let delay = lister.pass().await;
    assert!(delay <= Duration::from_secs(1));
    assert!(
        harness.log.text().contains("timed out"),
        "{}",
        harness.log.text()
    );
    assert!(harness.node.has_node("apqn-1-5-0"));
    harness.finish().await;
}

#[tokio::test]
async fn restart_adopts_nodes_in_use() {
    let harness = Harness::start(&["apqn-1-5-0", "apqn-2-5-0"]);
    let (log, node, pods) = (&harness.log, &harness.node, &harness.pods);
    pods.set(vec![pod("blue", "p1", "blue", "apqn-1-5-0")]);

    let mut first = harness.lister();
    first.pass().await;
    drop(first);

    // A new agent process: everything found is adopted, the held node
    // stays, the other one gets the full never-used delay from adoption.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut second = harness.lister();
    second.pass().await;
    assert_eq!(
        log.count("adopted 2 zcrypt nodes and 2 shadow dirs"),
        2,
        "{}",
        log.text()
    );
    assert!(node.has_node("apqn-1-5-0"));
    assert!(
        node.has_node("apqn-2-5-0"),
        "removed before the never-used delay since adoption"
    );

    pods.set(vec![]);
    sleep_past(NEVER_USED).await;
    second.pass().await;
    assert!(!node.has_node("apqn-1-5-0"), "{}", log.text());
    assert!(!node.has_node("apqn-2-5-0"));
    assert!(log
        .text()
        .contains("zcrypt node zcrypt-apqn-1-5-0 unused for 2 s, destroying"));
    assert!(log
        .text()
        .contains("zcrypt node zcrypt-apqn-2-5-0 never used for 2 s, destroying"));
    harness.finish().await;
}

/// A device the kubelet lists under a terminal pod and a new pod is used
/// once, gives one mismatch (for the pod in the wrong namespace), and
/// keeps its node.
#[tokio::test]
async fn device_under_two_pods() {
    let harness = Harness::start(&["apqn-1-5-0"]);
    let (log, node) = (&harness.log, &harness.node);
    harness.pods.set(vec![
        pod("blue", "p1", "blue", "apqn-1-5-0"),
        pod("red", "p2", "blue", "apqn-1-5-0"),
    ]);

    let mut lister = harness.lister();
    let usage = lister.usage();
    lister.pass().await;
    sleep_past(NEVER_USED).await;
    lister.pass().await;

    assert_eq!(usage.borrow().used["blue"].len(), 1);
    assert_eq!(usage.borrow().holders.len(), 2);
    assert_eq!(lister.stats().snapshot().mismatches_total, 1);
    assert_eq!(log.count("PodLister: Container"), 1, "{}", log.text());
    let line = "Container p2-app in namespace red uses a CEX resource apqn-1-5-0";
    assert_eq!(log.count(line), 1);
    assert!(node.has_node("apqn-1-5-0"));
    assert!(node.has_shadow_dir("apqn-1-5-0"));
    harness.finish().await;
}

fn inventory(queue_online: bool) -> Inventory {
    let mut inventory = Inventory::default();
    let card = Card {
        adapter: 1,
        card_type: None,
        hwtype: None,
        raw_hwtype: None,
        online: Some(true),
        config: None,
        chkstop: None,
    };
    inventory.cards.insert(1, card);
    let apqn = Apqn::new(1, 5);
    let queue = Queue {
        apqn,
        online: Some(queue_online),
        config: None,
        chkstop: None,
    };
    inventory.queues.insert(apqn, queue);
    inventory
}

/// A held device whose APQN goes offline is reported with its pod and
/// keeps its node; back online, the finding clears.
#[tokio::test]
async fn unhealthy_device_names_pod() {
    let harness = Harness::start(&["apqn-1-5-0"]);
    let (log, node) = (&harness.log, &harness.node);
    harness
        .pods
        .set(vec![pod("blue", "p1", "blue", "apqn-1-5-0")]);
    let (scan, scans) = watch::channel(inventory(true));

    let mut lister = harness.lister().with_inventory(scans);
    lister.pass().await;
    assert_eq!(lister.stats().snapshot().unhealthy_held_current, 0);

    scan.send_replace(inventory(false));
    lister.pass().await;
    sleep_past(NEVER_USED).await;
    lister.pass().await;
    let line = "pod blue/p1 (container p1-app) holds unhealthy device apqn-1-5-0: \
                APQN 01.0005 is not usable";
    assert_eq!(log.count(line), 1, "{}", log.text());
    assert_eq!(lister.stats().snapshot().unhealthy_held_current, 1);
    assert!(node.has_node("apqn-1-5-0"));
    assert!(node.has_shadow_dir("apqn-1-5-0"));

    scan.send_replace(inventory(true));
    lister.pass().await;
    assert_eq!(lister.stats().snapshot().unhealthy_held_current, 0);
    harness.finish().await;
}

#[tokio::test]
async fn foreign_names_are_never_touched() {
    let harness = Harness::start(&["apqn-1-5-0"]);
    let node = &harness.node;
    let dev = &node.paths.dev_dir;
    let foreign_dev = [
        "zcrypt-apqn-01-5-0",
        "zcrypt-apqn-1-5",
        "zcrypt_3",
        "z90crypt",
    ];
    for name in foreign_dev {
        std::fs::write(dev.join(name), "").expect("foreign device file");
    }
    let base = &node.paths.shadow_base;
    let foreign_dirs = ["sysfs-apqn-1-5-0x", "sysfs-apqn-..-5-0", "keep"];
    for name in foreign_dirs {
        std::fs::create_dir(base.join(name)).expect("foreign dir");
    }

    let mut lister = harness.lister();
    lister.pass().await;
    sleep_past(NEVER_USED).await;
    lister.pass().await;
    assert!(!node.has_node("apqn-1-5-0"));
    for name in foreign_dev {
        assert!(dev.join(name).exists(), "{name} was removed");
    }
    for name in foreign_dirs {
        assert!(base.join(name).exists(), "{name} was removed");
    }
    harness.finish().await;
}

/// Allocation times set by the test, and the devices cleanup forgot.
#[derive(Default)]
struct Allocations {
    times: Mutex<std::collections::BTreeMap<DeviceId, std::time::SystemTime>>,
    forgotten: Mutex<Vec<DeviceId>>,
}

impl AllocationLog for Allocations {
    fn allocated_at(&self) -> std::collections::BTreeMap<DeviceId, std::time::SystemTime> {
        self.times.lock().expect("times lock").clone()
    }

    fn forget(&self, device: &DeviceId) {
        self.forgotten.lock().expect("forgotten lock").push(*device);
    }
}

/// A device allocated again after its pod left gets the never-used delay
/// from the allocation, and its record is dropped once it is removed.
#[tokio::test]
async fn new_allocation_restarts_timer() {
    let harness = Harness::start(&["apqn-1-5-0"]);
    let (log, node, pods) = (&harness.log, &harness.node, &harness.pods);
    let device: DeviceId = "apqn-1-5-0".parse().expect("canonical id");
    let allocations = Arc::new(Allocations::default());
    pods.set(vec![pod("blue", "p1", "blue", "apqn-1-5-0")]);

    let mut lister = harness.lister().with_allocations(allocations.clone());
    lister.pass().await;
    pods.set(vec![]);
    sleep_past(UNUSED).await;
    let now = std::time::SystemTime::now();
    allocations
        .times
        .lock()
        .expect("times lock")
        .insert(device, now);
    lister.pass().await;
    assert!(node.has_node("apqn-1-5-0"), "{}", log.text());
    assert!(allocations
        .forgotten
        .lock()
        .expect("forgotten lock")
        .is_empty());

    sleep_past(NEVER_USED).await;
    lister.pass().await;
    assert!(!node.has_node("apqn-1-5-0"), "{}", log.text());
    assert!(!node.has_shadow_dir("apqn-1-5-0"));
    assert_eq!(
        *allocations.forgotten.lock().expect("forgotten lock"),
        [device]
    );
    harness.finish().await;
}
