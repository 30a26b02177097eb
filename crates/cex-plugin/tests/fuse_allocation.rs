//! The allocation path, cleanup and a live state change on a simulated
//! node served through FUSE, where every sysfs write can fail with the
//! kernel's errno. The `cex8-mixed-lpar` machine has CEX8C 00, CEX8A 02
//! and CEX8P 03 and 04 in domains 0x11, 0x29 and 0x2a.
//!
//! Each test prints `SKIPPED: <reason>` and passes when the host cannot
//! mount FUSE file systems.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cex_ap::{Apqn, DeviceId, Mask256};
use cex_config::{ConfigApqn, ConfigSet, CryptoConfig};
use cex_kubelet_api::deviceplugin::v1beta1::{AllocateRequest, ContainerAllocateRequest};
use cex_node::{NodePaths, ZcryptNodes};
use cex_plugin::allocate::{Allocator, AllocatorOptions};
use cex_plugin::devices::{derive_snapshot, PluginDevice, SetDefaults, SetSnapshot};
use cex_plugin::surveillance::{FsNodeStore, KubeletPodSource, PodLister, PodListerSettings};
use cex_sim::fuse::{CreateFault, FuseError, FuseNode};
use cex_sim::kubelet::{FakePod, PodResources};
use tokio::sync::watch;

const TIMEOUT: Duration = Duration::from_secs(10);
/// Linux errno values, the same on every architecture the agent runs on.
const EINVAL: i32 = 22;
const ENOSPC: i32 = 28;

/// A FUSE node and the shadow base beside it. The node unmounts first.
struct Node {
    fuse: FuseNode,
    paths: NodePaths,
    dir: tempfile::TempDir,
}

fn node(test: &str) -> Option<Node> {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    fs::create_dir(&root).expect("mount point");
    let machine = cex_sim::machines::by_name("cex8-mixed-lpar").expect("built-in machine");
    let fuse = match FuseNode::mount(machine, &root) {
        Ok(fuse) => fuse,
        Err(FuseError::Unavailable { reason }) => {
            println!("SKIPPED: {test}: {reason}");
            return None;
        }
        Err(error) => panic!("mount failed: {error}"),
    };
    let paths = NodePaths::under_root(&root, &dir.path().join("var/tmp/shadowsysfs"));
    Some(Node { fuse, paths, dir })
}

fn allocator(node: &Node, timeout: Duration) -> Allocator {
    let options = AllocatorOptions {
        create_timeout: timeout,
        shadow_owner: None,
    };
    Allocator::new(node.paths.clone(), options)
}

fn set(apqns: &[(u8, u8)], overcommit: u32) -> SetSnapshot {
    let mut devices: Vec<PluginDevice> = apqns
        .iter()
        .flat_map(|(adapter, domain)| {
            (0..overcommit).map(move |index| PluginDevice {
                id: DeviceId::new(Apqn::new(*adapter, *domain), index),
                healthy: true,
            })
        })
        .collect();
    devices.sort();
    SetSnapshot {
        name: "blue".to_string(),
        project: "blue".to_string(),
        live_sysfs: false,
        devices,
    }
}

fn request(id: &str) -> AllocateRequest {
    AllocateRequest {
        container_requests: vec![ContainerAllocateRequest {
            devices_i_ds: vec![id.to_string()],
        }],
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn assert_nothing_left(node: &Node) {
    assert_eq!(
        names_in(&node.paths.zcrypt_nodes_dir),
        Vec::<String>::new(),
        "zcrypt nodes"
    );
    assert_eq!(names_in(&node.paths.dev_dir), ["z90crypt"], "dev dir");
    assert_eq!(
        names_in(&node.paths.shadow_base),
        Vec::<String>::new(),
        "shadow base"
    );
    assert!(node.fuse.control().zcrypt_node_names().is_empty());
}

fn read_mask(path: &Path) -> Mask256 {
    let text = fs::read_to_string(path).expect("mask file");
    Mask256::parse_kernel(&text, &Mask256::empty()).expect("mask parses")
}

// === allocation ===

#[tokio::test]
async fn allocation_writes_masks() {
    let Some(node) = node("allocation_writes_masks") else {
        return;
    };
    let allocator = allocator(&node, TIMEOUT);

    let response = allocator
        .allocate(&set(&[(4, 0x2a)], 2), request("apqn-4-42-1"))
        .await
        .expect("allocated");

    let device = &response.container_responses[0].devices[0];
    let dev_path = node.paths.dev_dir.join("zcrypt-apqn-4-42-1");
    assert_eq!(device.host_path, dev_path.display().to_string());
    let mode = fs::symlink_metadata(&dev_path)
        .expect("dev node")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
    let attr_dir = node.paths.zcrypt_nodes_dir.join("zcrypt-apqn-4-42-1");
    assert_eq!(read_mask(&attr_dir.join("apmask")), Mask256::single(4));
    assert_eq!(read_mask(&attr_dir.join("aqmask")), Mask256::single(42));
    assert_eq!(read_mask(&attr_dir.join("admask")), Mask256::empty());
    assert_eq!(read_mask(&attr_dir.join("ioctlmask")), Mask256::full());
    let shadow = node.paths.shadow_base.join("sysfs-apqn-4-42-1");
    let card = shadow.join("devices/ap/card04");
    assert_eq!(
        fs::read_to_string(card.join("type")).expect("type"),
        "CEX8P\n"
    );
    assert!(card.join("04.002a/mkvps").is_file());
    assert_eq!(names_in(&shadow.join("devices/ap")), ["card04"]);
    assert_eq!(
        node.fuse.control().zcrypt_node_names(),
        ["zcrypt-apqn-4-42-1"]
    );
}

#[tokio::test]
async fn create_errno_fails_allocation() {
    let Some(node) = node("create_errno_fails_allocation") else {
        return;
    };
    node.fuse
        .control()
        .fail_next_create(CreateFault::Errno(ENOSPC));
    let allocator = allocator(&node, TIMEOUT);

    let status = allocator
        .allocate(&set(&[(0, 0x29)], 1), request("apqn-0-41-0"))
        .await
        .expect_err("create fails");

    let message = status.message();
    assert!(message.contains("zcrypt-apqn-0-41-0"), "{message}");
    assert!(message.contains("create"), "{message}");
    assert!(
        message.contains(&format!("os error {}", ENOSPC)),
        "{message}"
    );
    assert_nothing_left(&node);
    assert!(allocator.allocations().records.is_empty());
}

#[tokio::test]
async fn late_dev_node_fails_allocation() {
    let Some(node) = node("late_dev_node_fails_allocation") else {
        return;
    };
    node.fuse
        .control()
        .set_dev_node_delay(Some(Duration::from_secs(3600)));
    let allocator = allocator(&node, Duration::from_millis(300));

    let status = allocator
        .allocate(&set(&[(0, 0x29)], 1), request("apqn-0-41-0"))
        .await
        .expect_err("no dev node");

    assert!(
        status.message().contains("dev/zcrypt-apqn-0-41-0"),
        "{}",
        status.message()
    );
    assert_nothing_left(&node);
}

#[tokio::test]
async fn rejected_mask_fails_allocation() {
    let Some(node) = node("rejected_mask_fails_allocation") else {
        return;
    };
    node.fuse.control().fail_next_mask_write(EINVAL);
    let allocator = allocator(&node, TIMEOUT);

    let status = allocator
        .allocate(&set(&[(2, 0x29)], 1), request("apqn-2-41-0"))
        .await
        .expect_err("mask write fails");

    let message = status.message();
    assert!(message.contains("apmask"), "{message}");
    assert!(
        message.contains(&format!("os error {}", EINVAL)),
        "{message}"
    );
    assert_nothing_left(&node);
}

// === cleanup ===

fn blue_config() -> watch::Receiver<Option<CryptoConfig>> {
    let blue = ConfigSet {
        setname: "blue".to_string(),
        project: "blue".to_string(),
        cexmode: None,
        mincexgen: None,
        overcommit: None,
        livesysfs: None,
        apqns: vec![ConfigApqn {
            adapter: 0,
            domain: 0x29,
            machineid: String::new(),
        }],
    };
    let (sender, receiver) = watch::channel(Some(CryptoConfig { sets: vec![blue] }));
    drop(sender);
    receiver
}

#[tokio::test]
async fn cleanup_destroys_unheld_nodes() {
    let Some(node) = node("cleanup_destroys_unheld_nodes") else {
        return;
    };
    let allocator = allocator(&node, TIMEOUT);
    let set = set(&[(0, 0x29)], 2);
    for id in ["apqn-0-41-0", "apqn-0-41-1"] {
        allocator
            .allocate(&set, request(id))
            .await
            .expect("allocated");
    }
    let socket: PathBuf = node.dir.path().join("pod-resources.sock");
    let pods = PodResources::start(&socket)
        .await
        .expect("pod-resources server");
    let held = FakePod::with_devices("app", "blue", "cex.s390.ibm.com/blue", &["apqn-0-41-0"]);
    pods.set_pods(vec![held]);

    let second = Duration::from_secs(1);
    let mut settings = PodListerSettings::new(second, second, second, String::new());
    settings.list_timeout = second;
    let source = KubeletPodSource::new(socket.clone(), settings.list_timeout);
    let store = FsNodeStore::new(&node.paths, ZcryptNodes::new(&node.paths, TIMEOUT));
    let mut lister = PodLister::new(settings, source, store, blue_config());

    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline && names_in(&node.paths.zcrypt_nodes_dir).len() > 1 {
        lister.pass().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    assert_eq!(
        names_in(&node.paths.zcrypt_nodes_dir),
        ["zcrypt-apqn-0-41-0"]
    );
    assert_eq!(
        names_in(&node.paths.dev_dir),
        ["z90crypt", "zcrypt-apqn-0-41-0"]
    );
    assert_eq!(names_in(&node.paths.shadow_base), ["sysfs-apqn-0-41-0"]);
    assert_eq!(
        node.fuse.control().zcrypt_node_names(),
        ["zcrypt-apqn-0-41-0"]
    );
    pods.stop().await;
}

// === live changes ===

/// Rescans the node and derives the devices of a set holding 04.002a.
fn rescan(node: &Node) -> Vec<PluginDevice> {
    let report = cex_ap::scan::scan(&node.paths.ap_devs_dir).expect("AP bus scanned");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let set = ConfigSet {
        setname: "green".to_string(),
        project: "green".to_string(),
        cexmode: None,
        mincexgen: None,
        overcommit: Some(1),
        livesysfs: None,
        apqns: vec![ConfigApqn {
            adapter: 4,
            domain: 0x2a,
            machineid: String::new(),
        }],
    };
    let defaults = SetDefaults {
        overcommit: 1,
        live_sysfs: false,
    };
    let (snapshot, _) = derive_snapshot(&set, &report.inventory, "", &defaults);
    snapshot.devices
}

#[tokio::test]
async fn offline_queue_becomes_unhealthy() {
    let Some(node) = node("offline_queue_becomes_unhealthy") else {
        return;
    };
    let healthy = |devices: &[PluginDevice]| devices.iter().map(|d| d.healthy).collect::<Vec<_>>();
    assert_eq!(healthy(&rescan(&node)), [true]);

    let online = node.paths.ap_devs_dir.join("card04/04.002a/online");
    fs::write(&online, "0\n").expect("set queue offline");
    assert_eq!(healthy(&rescan(&node)), [false]);
    fs::write(&online, "1\n").expect("set queue online");
    assert_eq!(healthy(&rescan(&node)), [true]);

    let control = node.fuse.control();
    control.set_card_config(4, false).expect("deconfigure card");
    assert_eq!(healthy(&rescan(&node)), [false]);
    control.set_card_config(4, true).expect("configure card");
    control.set_card_chkstop(4, true).expect("check-stop card");
    assert_eq!(healthy(&rescan(&node)), [false]);
    control
        .set_card_chkstop(4, false)
        .expect("clear check-stop");
    assert_eq!(healthy(&rescan(&node)), [true]);

    control
        .remove_queue(Apqn::new(4, 0x2a))
        .expect("remove queue");
    assert!(rescan(&node).is_empty(), "a vanished APQN is not announced");
}
