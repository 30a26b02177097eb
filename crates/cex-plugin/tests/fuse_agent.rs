//! End-to-end tests of the `cex-plugin` binary on a simulated node served
//! through FUSE, where every sysfs write reaches a kernel-like `store` and
//! fails with the kernel's errno. The agent reads the AP bus, the zcrypt
//! class, `/dev` and `/proc/sysinfo` from the mount and keeps its shadow
//! sysfs on `/dev/shm`. The tests cover allocation through the simulated
//! kubelet, failed creates, late device nodes and rejected masks,
//! cleanup of unused nodes, and live state changes of the hardware.
//!
//! The `cex8-mixed-lpar` machine has CEX8C 00 and CEX8P 04 in domains
//! 0x29 and 0x2a. Set `blue` contains 00.0029 and 04.002a.
//!
//! Each test prints `SKIPPED: <reason>` and passes when the host cannot
//! mount FUSE file systems.

mod agent_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_support::{
    all_healthy, first_message_of_new_stream, health, pause, wait_until, Agent, Node, BLUE, WAIT,
};
use cex_ap::{Apqn, Mask256};
use cex_sim::fuse::{CreateFault, FuseControl, FuseError, FuseNode};
use cex_sim::kubelet::{FakeKubelet, FakePod, PodResources};

/// Set `blue` with 00.0029 (CEX8C) and 04.002a (CEX8P).
const FUSE_CONFIG: &str = r#"{"cryptoconfigsets":[{"setname":"blue","project":"blue",
  "apqns":[{"adapter":0,"domain":41},{"adapter":4,"domain":42}]}]}"#;

const CEX8C_ID: &str = "apqn-0-41-0";
const CEX8P_ID: &str = "apqn-4-42-0";
/// Linux errno values, the same on every architecture the agent runs on.
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;

/// A FUSE node below a host-like temp root on `/dev/shm`. The mount is
/// dropped before the root it sits in.
struct FuseHost {
    fuse: FuseNode,
    node: Node,
}

impl FuseHost {
    /// Mounts `cex8-mixed-lpar` and writes [`FUSE_CONFIG`], or prints
    /// `SKIPPED` and returns `None` when FUSE is not available.
    fn mount(test: &str) -> Option<Self> {
        let node = Node::on_tmpfs();
        let mountpoint = node.path("fuse");
        fs::create_dir(&mountpoint).expect("mount point");
        let machine = cex_sim::machines::by_name("cex8-mixed-lpar").expect("built-in machine");
        let fuse = match FuseNode::mount(machine, &mountpoint) {
            Ok(fuse) => fuse,
            Err(FuseError::Unavailable { reason }) => {
                println!("SKIPPED: {test}: {reason}");
                return None;
            }
            Err(error) => panic!("mount failed: {error}"),
        };
        node.write_config(FUSE_CONFIG);
        Some(Self { fuse, node })
    }

    /// Returns a path inside the FUSE mount.
    fn fuse_path(&self, relative: &str) -> PathBuf {
        self.fuse.root().join(relative)
    }

    fn control(&self) -> &FuseControl {
        self.fuse.control()
    }

    fn nodes_dir(&self) -> PathBuf {
        self.fuse_path("sys/devices/virtual/zcrypt")
    }

    fn dev_dir(&self) -> PathBuf {
        self.fuse_path("dev")
    }

    fn shadow_base(&self) -> PathBuf {
        self.node.path("var/tmp/shadowsysfs")
    }

    /// Starts the agent with every kernel path in the FUSE mount.
    fn spawn_agent(&self, extra: &[(&str, &str)]) -> Agent {
        let kernel_paths = [
            ("APSYSFS_BUSDIR", "sys/bus/ap"),
            ("APSYSFS_DEVSDIR", "sys/devices/ap"),
            ("ZCRYPT_CLASSDIR", "sys/class/zcrypt"),
            ("ZCRYPT_NODESDIR", "sys/devices/virtual/zcrypt"),
            ("DEV_DIR", "dev"),
            ("PROC_SYSINFO_FILE", "proc/sysinfo"),
        ]
        .map(|(name, relative)| (name, self.fuse_path(relative).display().to_string()));
        let mut env: Vec<(&str, &str)> = kernel_paths
            .iter()
            .map(|(name, path)| (*name, path.as_str()))
            .collect();
        env.push(("CRYPTOCONFIG_CHECK_INTERVAL", "60"));
        env.extend_from_slice(extra);
        self.node.spawn_agent(&env)
    }

    /// Starts the kubelet and the agent, and waits for blue's first list
    /// with both devices healthy.
    async fn start(&self, extra: &[(&str, &str)]) -> (FakeKubelet, Agent) {
        let kubelet = FakeKubelet::start(self.node.plugin_dir())
            .await
            .expect("kubelet");
        let agent = self.spawn_agent(extra);
        let first = first_message_of_new_stream(&kubelet, BLUE, 0).await;
        let first = first.unwrap_or_else(|| panic!("no blue list; log:\n{}", agent.log_text()));
        assert_eq!(health(&first), all_healthy(&[CEX8C_ID, CEX8P_ID]));
        (kubelet, agent)
    }

    fn assert_nothing_left(&self) {
        assert_eq!(
            names_in(&self.nodes_dir()),
            Vec::<String>::new(),
            "zcrypt nodes"
        );
        assert_eq!(names_in(&self.dev_dir()), ["z90crypt"], "dev dir");
        assert_eq!(
            names_in(&self.shadow_base()),
            Vec::<String>::new(),
            "shadow base"
        );
        assert_eq!(self.control().zcrypt_node_names(), Vec::<String>::new());
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|entry| {
            let entry = entry.expect("entry");
            entry.file_name().to_string_lossy().into_owned()
        })
        .collect();
    names.sort();
    names
}

fn read_mask(path: &Path) -> Mask256 {
    let text = fs::read_to_string(path).expect("mask file");
    Mask256::parse_kernel(&text, &Mask256::empty()).expect("mask parses")
}

fn one(id: &str) -> Vec<Vec<String>> {
    vec![vec![id.to_string()]]
}

/// Checks that a failed Allocate of [`CEX8P_ID`] names the device and
/// `detail`, that the agent logged it, and that nothing was left behind.
fn assert_failed_cleanly(host: &FuseHost, agent: &Agent, status: &tonic::Status, detail: &str) {
    let message = status.message();
    assert!(message.contains(CEX8P_ID), "{message}");
    assert!(message.contains(detail), "{message}");
    let log = agent.log_text();
    let logged = format!("Allocate: device {CEX8P_ID} failed");
    assert!(log.contains(&logged), "{log}");
    host.assert_nothing_left();
}

// === allocation ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_writes_masks_through_fuse() {
    let Some(host) = FuseHost::mount("allocation_writes_masks_through_fuse") else {
        return;
    };
    let (kubelet, _agent) = host.start(&[]).await;

    let response = kubelet
        .allocate(BLUE, one(CEX8P_ID))
        .await
        .expect("allocated");

    let name = format!("zcrypt-{CEX8P_ID}");
    let device = &response.container_responses[0].devices[0];
    let dev_path = host.dev_dir().join(&name);
    assert_eq!(device.host_path, dev_path.display().to_string());
    assert_eq!(device.container_path, "/dev/z90crypt");
    let mode = fs::symlink_metadata(&dev_path)
        .expect("dev node")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);

    let attr_dir = host.nodes_dir().join(&name);
    assert_eq!(read_mask(&attr_dir.join("apmask")), Mask256::single(4));
    assert_eq!(read_mask(&attr_dir.join("aqmask")), Mask256::single(42));
    assert_eq!(read_mask(&attr_dir.join("admask")), Mask256::empty());
    assert_eq!(read_mask(&attr_dir.join("ioctlmask")), Mask256::full());
    assert_eq!(host.control().zcrypt_node_names(), [name]);

    let shadow = host.shadow_base().join(format!("sysfs-{CEX8P_ID}"));
    let card = shadow.join("devices/ap/card04");
    assert_eq!(
        fs::read_to_string(card.join("type")).expect("type"),
        "CEX8P\n"
    );
    assert_eq!(names_in(&shadow.join("devices/ap")), ["card04"]);
}

// === failed allocations ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_create_leaves_nothing() {
    let Some(host) = FuseHost::mount("failed_create_leaves_nothing") else {
        return;
    };
    let (kubelet, agent) = host.start(&[]).await;
    host.control().fail_next_create(CreateFault::Errno(ENOSPC));

    let status = kubelet
        .allocate(BLUE, one(CEX8P_ID))
        .await
        .expect_err("create fails");

    assert_failed_cleanly(&host, &agent, &status, &format!("os error {ENOSPC}"));
    kubelet
        .allocate(BLUE, one(CEX8P_ID))
        .await
        .expect("the next create succeeds");
    assert_eq!(
        host.control().zcrypt_node_names(),
        [format!("zcrypt-{CEX8P_ID}")]
    );
}

/// The agent waits 5 s for `/dev/<name>`, so a node that a slow udev
/// would make an hour later fails the allocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_dev_node_leaves_nothing() {
    let Some(host) = FuseHost::mount("late_dev_node_leaves_nothing") else {
        return;
    };
    let (kubelet, agent) = host.start(&[]).await;
    host.control()
        .set_dev_node_delay(Some(Duration::from_secs(3600)));

    let status = kubelet
        .allocate(BLUE, one(CEX8P_ID))
        .await
        .expect_err("no dev node");

    assert_failed_cleanly(&host, &agent, &status, &format!("dev/zcrypt-{CEX8P_ID}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_mask_leaves_nothing() {
    let Some(host) = FuseHost::mount("rejected_mask_leaves_nothing") else {
        return;
    };
    let (kubelet, agent) = host.start(&[]).await;
    host.control().fail_next_mask_write(EINVAL);

    let status = kubelet
        .allocate(BLUE, one(CEX8P_ID))
        .await
        .expect_err("mask write fails");

    assert_failed_cleanly(&host, &agent, &status, &format!("os error {EINVAL}"));
    assert!(status.message().contains("apmask"), "{}", status.message());
}

// === cleanup ===

/// A node that no listed pod uses is destroyed through the FUSE `destroy`
/// file once never used for 2 s. A node that a listed pod uses is kept
/// until the pod is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_destroys_unused_nodes() {
    let Some(host) = FuseHost::mount("cleanup_destroys_unused_nodes") else {
        return;
    };
    let socket = host.node.path("var/lib/kubelet/pod-resources/kubelet.sock");
    fs::create_dir_all(socket.parent().expect("socket dir")).expect("socket dir");
    let pods = PodResources::start(&socket)
        .await
        .expect("pod-resources server");
    let pod = FakePod::with_devices("app", "blue", BLUE, &[CEX8C_ID]);
    pods.set_pods(vec![pod]);
    let (kubelet, agent) = host
        .start(&[
            ("PODLISTER_POLL_INTERVAL", "1"),
            ("RESOURCE_DELETE_NEVER_USED", "2"),
            ("RESOURCE_DELETE_UNUSED", "2"),
        ])
        .await;
    for id in [CEX8C_ID, CEX8P_ID] {
        kubelet.allocate(BLUE, one(id)).await.expect("allocated");
    }
    let used_node = format!("zcrypt-{CEX8C_ID}");

    let only_used = wait_until(|| host.control().zcrypt_node_names() == [used_node.clone()]).await;
    assert!(only_used, "unused node kept; log:\n{}", agent.log_text());
    assert_eq!(
        names_in(&host.nodes_dir()),
        std::slice::from_ref(&used_node)
    );
    assert_eq!(
        names_in(&host.dev_dir()),
        ["z90crypt".to_string(), used_node.clone()]
    );
    assert_eq!(names_in(&host.shadow_base()), [format!("sysfs-{CEX8C_ID}")]);

    // Twice the delete delay later the used node is still there.
    pause(Duration::from_secs(4)).await;
    assert_eq!(host.control().zcrypt_node_names(), [used_node]);

    pods.set_pods(Vec::new());
    let none = wait_until(|| host.control().zcrypt_node_names().is_empty()).await;
    assert!(none, "node of a gone pod kept; log:\n{}", agent.log_text());
    host.assert_nothing_left();
    pods.stop().await;
}

// === live changes ===

/// Applies `change` through the FUSE control and waits for a blue list
/// equal to `expected` sent after it.
async fn change_and_expect(
    kubelet: &FakeKubelet,
    label: &str,
    change: impl FnOnce() -> Result<(), FuseError>,
    expected: &[(&str, &str)],
) {
    let seen = kubelet.recorded().messages(BLUE).len();
    change().unwrap_or_else(|error| panic!("{label}: {error}"));
    let message = kubelet
        .wait_for(WAIT, |recorded| {
            let later = recorded.messages(BLUE).into_iter().skip(seen);
            let same = |list: &Vec<(String, String)>| {
                let list = list.iter().map(|(id, state)| (id.as_str(), state.as_str()));
                list.eq(expected.iter().copied())
            };
            later.map(health).find(same)
        })
        .await;
    if message.is_none() {
        let last = kubelet.recorded().messages(BLUE).last().map(|m| health(m));
        panic!("{label}: no list {expected:?}; last {last:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hardware_changes_reach_kubelet() {
    let Some(host) = FuseHost::mount("hardware_changes_reach_kubelet") else {
        return;
    };
    let (kubelet, _agent) = host.start(&[("APQN_CHECK_INTERVAL", "1")]).await;
    let control = host.control();
    let queue = Apqn::new(4, 0x2a);
    let down = [(CEX8C_ID, "Healthy"), (CEX8P_ID, "Unhealthy")];
    let up = [(CEX8C_ID, "Healthy"), (CEX8P_ID, "Healthy")];

    let offline = || control.set_queue_online(queue, false);
    change_and_expect(&kubelet, "queue offline", offline, &down).await;
    let online = || control.set_queue_online(queue, true);
    change_and_expect(&kubelet, "queue online", online, &up).await;

    let deconfigure = || control.set_card_config(4, false);
    change_and_expect(&kubelet, "card deconfigured", deconfigure, &down).await;
    let configure = || control.set_card_config(4, true);
    change_and_expect(&kubelet, "card configured", configure, &up).await;

    let check_stop = || control.set_queue_chkstop(queue, true);
    change_and_expect(&kubelet, "queue check-stopped", check_stop, &down).await;
    let clear = || control.set_queue_chkstop(queue, false);
    change_and_expect(&kubelet, "check-stop cleared", clear, &up).await;

    // NOTE: FuseControl can remove a card but not plug one back, so the
    // unplug is the last step and has no recovery here.
    let unplug = || control.remove_card(4);
    change_and_expect(&kubelet, "card removed", unplug, &[(CEX8C_ID, "Healthy")]).await;
    assert_eq!(kubelet.recorded().registrations_of(BLUE).len(), 1);
}
