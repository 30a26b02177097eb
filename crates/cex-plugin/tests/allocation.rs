//! The allocation path end to end: `Allocator` on a simulated z16 LPAR
//! laid out in a temp dir, with the simulator's fake kernel serving zcrypt
//! `create` and `destroy`. The `cex8-mixed-lpar` machine has CEX8C 00,
//! CEX8A 02 and CEX8P 03 and 04 in domains 0x11, 0x29 and 0x2a.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cex_ap::{Apqn, DeviceId, Mask256};
use cex_kubelet_api::deviceplugin::v1beta1::{
    AllocateRequest, AllocateResponse, ContainerAllocateRequest,
    ContainerPreferredAllocationRequest, PreferredAllocationRequest,
};
use cex_node::NodePaths;
use cex_plugin::allocate::{Allocator, AllocatorOptions};
use cex_plugin::devices::{PluginDevice, SetSnapshot};
use cex_sim::kernel::{FakeKernel, KernelEvent, RunningKernel};
use tonic::Code;

// ---------------------------------------------------------------------------
// Simulated node

/// How the fake kernel handles `create` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Makes the attribute dir and the `/dev` node at once.
    Normal,
    /// Makes nothing for the next create, as when the kernel rejects it.
    RefuseCreate,
    /// Makes the attribute dir but the `/dev` node only after an hour.
    NoDevNode,
}

struct Node {
    _temp: tempfile::TempDir,
    root: PathBuf,
    paths: NodePaths,
    _kernel: KernelThread,
}

/// The fake kernel running either on its own thread, or on a test thread
/// that records every event it returns.
enum KernelThread {
    Running {
        _kernel: RunningKernel,
    },
    Recording {
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<()>>,
    },
}

impl Drop for KernelThread {
    fn drop(&mut self) {
        if let KernelThread::Recording { stop, thread } = self {
            stop.store(true, Ordering::SeqCst);
            if let Some(thread) = thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn lay_out(root: &Path) -> NodePaths {
    let machine = cex_sim::machines::by_name("cex8-mixed-lpar").expect("built-in machine");
    cex_sim::layout::lay_out(&machine, root).expect("laid out");
    NodePaths::under_root(root, &root.join("var/tmp/shadowsysfs"))
}

fn node(behaviour: Kernel) -> Node {
    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path().to_path_buf();
    let paths = lay_out(&root);
    let kernel = FakeKernel::new(&root).expect("fake kernel");
    match behaviour {
        Kernel::Normal => {}
        Kernel::RefuseCreate => kernel.fail_next_create(),
        Kernel::NoDevNode => kernel.set_dev_node_delay(Some(Duration::from_secs(3600))),
    }
    let running = KernelThread::Running {
        _kernel: kernel.start().expect("kernel started"),
    };
    Node {
        _temp: temp,
        root,
        paths,
        _kernel: running,
    }
}

/// Lays out a node whose fake kernel a test thread drives every
/// millisecond, recording each event into `events`.
fn recording_node(events: Arc<Mutex<Vec<KernelEvent>>>) -> Node {
    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path().to_path_buf();
    let paths = lay_out(&root);
    let kernel = FakeKernel::new(&root).expect("fake kernel");
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = thread::spawn(move || {
        while !thread_stop.load(Ordering::SeqCst) {
            let handled = kernel.handle_pending_once().expect("kernel pass");
            events.lock().expect("events").extend(handled);
            thread::sleep(Duration::from_millis(1));
        }
    });
    let recording = KernelThread::Recording {
        stop,
        thread: Some(thread),
    };
    Node {
        _temp: temp,
        root,
        paths,
        _kernel: recording,
    }
}

fn allocator(node: &Node, timeout: Duration) -> Allocator {
    let options = AllocatorOptions {
        create_timeout: timeout,
        shadow_owner: None,
    };
    Allocator::new(node.paths.clone(), options)
}

/// Builds a set that announces `overcommit` healthy devices per APQN.
fn set(apqns: &[(u8, u8)], overcommit: u32, live_sysfs: bool) -> SetSnapshot {
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
        live_sysfs,
        devices,
    }
}

fn request(containers: &[&[&str]]) -> AllocateRequest {
    AllocateRequest {
        container_requests: containers
            .iter()
            .map(|ids| ContainerAllocateRequest {
                devices_i_ds: ids.iter().map(|id| id.to_string()).collect(),
            })
            .collect(),
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

/// Asserts that no zcrypt node, `/dev` node, shadow dir or temp dir is left.
fn assert_nothing_left(node: &Node) {
    assert_eq!(
        names_in(&node.paths.zcrypt_nodes_dir),
        Vec::<String>::new(),
        "zcrypt nodes"
    );
    assert_eq!(
        names_in(&node.paths.dev_dir),
        vec!["z90crypt".to_string()],
        "dev dir"
    );
    assert_eq!(
        names_in(&node.paths.shadow_base),
        Vec::<String>::new(),
        "shadow base"
    );
}

fn read_mask(path: &Path) -> Mask256 {
    let text = fs::read_to_string(path).expect("mask file");
    assert_eq!(
        text.len(),
        67,
        "0x + 64 hex digits + newline in {}",
        path.display()
    );
    Mask256::parse_kernel(&text, &Mask256::empty()).expect("mask parses")
}

/// Walks `root`: maps each relative path to "dir", the file text or
/// "link <target>", checking modes and that each symlink resolves inside.
fn walk(root: &Path) -> BTreeMap<String, String> {
    let canonical_root = fs::canonicalize(root).expect("root");
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let relative = path
                .strip_prefix(root)
                .expect("below root")
                .display()
                .to_string();
            let meta = path.symlink_metadata().expect("stat");
            let mode = meta.permissions().mode() & 0o7777;
            let description = if meta.file_type().is_symlink() {
                let resolved = fs::canonicalize(&path).expect("symlink resolves");
                assert!(
                    resolved.starts_with(&canonical_root),
                    "{relative} leaves the tree"
                );
                format!("link {}", fs::read_link(&path).expect("link").display())
            } else if meta.is_dir() {
                assert_eq!(mode, 0o755, "mode of {relative}");
                pending.push(path);
                "dir".to_string()
            } else {
                assert_eq!(mode, 0o444, "mode of {relative}");
                fs::read_to_string(&path).expect("file")
            };
            entries.insert(relative, description);
        }
    }
    entries
}

const TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Successful allocations

#[tokio::test]
async fn static_allocation_builds_node_and_tree() {
    let node = node(Kernel::Normal);
    let allocator = allocator(&node, TIMEOUT);
    let set = set(&[(0, 0x29), (4, 0x2a)], 2, false);

    let response = allocator
        .allocate(&set, request(&[&["apqn-4-42-1"]]))
        .await
        .expect("allocated");

    let [container] = response.container_responses.as_slice() else {
        panic!("one container response expected: {response:?}");
    };
    let [device] = container.devices.as_slice() else {
        panic!("one device: {container:?}")
    };
    let dev_path = node.paths.dev_dir.join("zcrypt-apqn-4-42-1");
    assert_eq!(device.host_path, dev_path.display().to_string());
    assert_eq!(device.container_path, "/dev/z90crypt");
    assert_eq!(device.permissions, "rw");
    let shadow = node.paths.shadow_base.join("sysfs-apqn-4-42-1");
    let mounts: Vec<(String, String, bool)> = container
        .mounts
        .iter()
        .map(|m| (m.container_path.clone(), m.host_path.clone(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        vec![
            (
                "/sys/bus/ap".into(),
                shadow.join("bus/ap").display().to_string(),
                true
            ),
            (
                "/sys/devices/ap".into(),
                shadow.join("devices/ap").display().to_string(),
                true
            ),
        ]
    );

    let mode = fs::metadata(&dev_path)
        .expect("dev node")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
    let attr_dir = node.paths.zcrypt_nodes_dir.join("zcrypt-apqn-4-42-1");
    assert_eq!(
        read_mask(&attr_dir.join("apmask"))
            .bits()
            .collect::<Vec<_>>(),
        vec![4]
    );
    assert_eq!(
        read_mask(&attr_dir.join("aqmask"))
            .bits()
            .collect::<Vec<_>>(),
        vec![42]
    );
    assert_eq!(read_mask(&attr_dir.join("admask")), Mask256::empty());
    assert_eq!(read_mask(&attr_dir.join("ioctlmask")), Mask256::full());

    let tree = walk(&shadow);
    let bus_mask = |name: &str| {
        Mask256::parse_kernel(&tree[&format!("bus/ap/{name}")], &Mask256::empty()).expect("mask")
    };
    assert_eq!(
        bus_mask("ap_adapter_mask").bits().collect::<Vec<_>>(),
        vec![4]
    );
    assert_eq!(
        bus_mask("ap_usage_domain_mask").bits().collect::<Vec<_>>(),
        vec![42]
    );
    assert_eq!(bus_mask("ap_control_domain_mask"), Mask256::empty());
    assert_eq!(bus_mask("apmask"), Mask256::full());
    assert_eq!(bus_mask("aqmask"), Mask256::full());
    assert_eq!(tree["bus/ap/ap_domain"], "42\n");
    assert_eq!(tree["bus/ap/ap_max_domain_id"], "84\n");
    assert!(
        !tree.contains_key("bus/ap/scans"),
        "only the listed bus attributes are copied"
    );
    let mut expected_dirs = vec![
        "bus",
        "bus/ap",
        "bus/ap/devices",
        "bus/ap/drivers",
        "bus/ap/drivers/cex4card",
        "bus/ap/drivers/cex4queue",
        "devices",
        "devices/ap",
        "devices/ap/card04",
        "devices/ap/card04/04.002a",
    ];
    expected_dirs.sort();
    let dirs: Vec<&str> = tree
        .iter()
        .filter(|(_, kind)| *kind == "dir")
        .map(|(path, _)| path.as_str())
        .collect();
    assert_eq!(dirs, expected_dirs);
    assert_eq!(
        tree["bus/ap/devices/04.002a"],
        "link ../../../devices/ap/card04/04.002a"
    );
    assert_eq!(tree["devices/ap/card04/type"], "CEX8P\n");
    assert_eq!(tree["devices/ap/card04/request_count"], "0\n");
    assert_eq!(tree["devices/ap/card04/04.002a/load"], "0\n");
    assert_eq!(tree["devices/ap/card04/04.002a/online"], "1\n");
    assert!(tree["devices/ap/card04/04.002a/mkvps"].starts_with("WK CUR"));
    assert!(!tree.contains_key("devices/ap/card04/config"));
    let copies = [
        (
            "bus/ap",
            node.paths.ap_bus_dir.clone(),
            &[
                "ap_interrupts",
                "ap_max_domain_id",
                "poll_thread",
                "poll_timeout",
                "ap_max_adapter_id",
            ][..],
        ),
        (
            "devices/ap/card04",
            node.paths.ap_devs_dir.join("card04"),
            &[
                "ap_functions",
                "depth",
                "hwtype",
                "raw_hwtype",
                "type",
                "API_ordinalnr",
                "FW_version",
                "op_modes",
                "serialnr",
            ][..],
        ),
        (
            "devices/ap/card04/04.002a",
            node.paths.ap_devs_dir.join("card04/04.002a"),
            &["interrupt", "reset", "mkvps", "op_modes"][..],
        ),
    ];
    for (shadow_dir, host_dir, names) in copies {
        for name in names {
            let host = fs::read_to_string(host_dir.join(name)).expect("host attribute");
            assert_eq!(
                tree[&format!("{shadow_dir}/{name}")],
                host,
                "{shadow_dir}/{name}"
            );
        }
    }

    let allocations = allocator.allocations();
    let id: DeviceId = "apqn-4-42-1".parse().expect("id");
    assert_eq!(allocations.records[&id].set, "blue");
    assert_eq!(allocations.records[&id].node, "zcrypt-apqn-4-42-1");
    assert_eq!(allocations.count_per_apqn()[&id.apqn], 1);
}

#[tokio::test]
async fn live_allocation_mounts_real_queue() {
    let node = node(Kernel::Normal);
    let allocator = allocator(&node, TIMEOUT);
    let set = set(&[(0, 0x29)], 1, true);

    let response = allocator
        .allocate(&set, request(&[&["apqn-0-41-0"]]))
        .await
        .expect("allocated");

    let mounts = &response.container_responses[0].mounts;
    assert_eq!(mounts.len(), 3);
    assert_eq!(mounts[2].container_path, "/sys/bus/ap/devices/00.0029");
    let host_queue = node.paths.ap_devs_dir.join("card00/00.0029");
    assert_eq!(mounts[2].host_path, host_queue.display().to_string());
    assert!(mounts[2].read_only);
    let tree = walk(&node.paths.shadow_base.join("sysfs-apqn-0-41-0"));
    for name in [
        "online",
        "pendingq_count",
        "request_count",
        "requestq_count",
    ] {
        assert_eq!(
            tree[&format!("devices/ap/card00/{name}")],
            format!("link 00.0029/{name}")
        );
    }
    assert_eq!(tree["devices/ap/card00/load"], "0\n");
    let host_serial = node.paths.ap_devs_dir.join("card00/serialnr");
    assert_eq!(
        tree["devices/ap/card00/serialnr"],
        fs::read_to_string(host_serial).expect("host")
    );
}

#[tokio::test]
async fn existing_node_is_reused() {
    let node = node(Kernel::Normal);
    let allocator = allocator(&node, TIMEOUT);
    let set = set(&[(2, 0x29)], 1, false);
    allocator
        .allocate(&set, request(&[&["apqn-2-41-0"]]))
        .await
        .expect("first");
    let aqmask = node
        .paths
        .zcrypt_nodes_dir
        .join("zcrypt-apqn-2-41-0/aqmask");
    fs::write(&aqmask, format!("{}\n", Mask256::full())).expect("tamper");

    // A restarted agent has no records but finds the node.
    let restarted = allocator_after_restart(&node);
    restarted
        .allocate(&set, request(&[&["apqn-2-41-0"]]))
        .await
        .expect("second");

    assert_eq!(read_mask(&aqmask), Mask256::single(41));
    assert_eq!(
        names_in(&node.paths.shadow_base),
        vec!["sysfs-apqn-2-41-0".to_string()]
    );
}

fn allocator_after_restart(node: &Node) -> Allocator {
    allocator(node, TIMEOUT)
}

// ---------------------------------------------------------------------------
// Rejected requests and failures leave nothing behind

#[tokio::test]
async fn bad_ids_are_rejected() {
    let node = node(Kernel::Normal);
    let allocator = allocator(&node, TIMEOUT);
    let mut set = set(&[(0, 0x29), (0, 0x2a)], 1, false);
    set.devices[1].healthy = false;
    let cases: [(&[&[&str]], Code, &str); 7] = [
        (&[&["apqn-0-41-x"]], Code::InvalidArgument, "apqn-0-41-x"),
        (
            &[&["../apqn-0-41-0"]],
            Code::InvalidArgument,
            "../apqn-0-41-0",
        ),
        (&[&["apqn-0-41-7"]], Code::InvalidArgument, "apqn-0-41-7"),
        (&[&["apqn-9-9-0"]], Code::InvalidArgument, "apqn-9-9-0"),
        (&[&["apqn-0-42-0"]], Code::FailedPrecondition, "unhealthy"),
        (
            &[&["apqn-0-41-0", "apqn-0-42-0"]],
            Code::InvalidArgument,
            "exactly one",
        ),
        (&[&[]], Code::InvalidArgument, "exactly one"),
    ];

    for (containers, code, text) in cases {
        let status = allocator
            .allocate(&set, request(containers))
            .await
            .expect_err("rejected");
        assert_eq!(status.code(), code, "{containers:?}: {status:?}");
        assert!(
            status.message().contains(text),
            "{containers:?}: {}",
            status.message()
        );
    }
    let status = allocator
        .allocate(&set, request(&[]))
        .await
        .expect_err("empty request");
    assert_eq!(status.code(), Code::InvalidArgument);
    let twice = request(&[&["apqn-0-41-0"], &["apqn-0-41-0"]]);
    let status = allocator
        .allocate(&set, twice)
        .await
        .expect_err("same id twice");
    assert!(
        status.message().contains("two containers"),
        "{}",
        status.message()
    );

    assert_nothing_left(&node);
    assert!(allocator.allocations().records.is_empty());
}

#[tokio::test]
async fn refused_create_times_out_cleanly() {
    let node = node(Kernel::RefuseCreate);
    let allocator = allocator(&node, Duration::from_millis(300));
    let set = set(&[(0, 0x29)], 1, false);

    let status = allocator
        .allocate(&set, request(&[&["apqn-0-41-0"]]))
        .await
        .expect_err("fails");

    assert_eq!(status.code(), Code::Internal);
    assert!(
        status.message().contains("zcrypt-apqn-0-41-0"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("did not appear"),
        "{}",
        status.message()
    );
    assert_nothing_left(&node);
}

#[tokio::test]
async fn missing_dev_node_destroys_node() {
    let node = node(Kernel::NoDevNode);
    let allocator = allocator(&node, Duration::from_millis(300));
    let set = set(&[(0, 0x29)], 1, false);

    let status = allocator
        .allocate(&set, request(&[&["apqn-0-41-0"]]))
        .await
        .expect_err("fails");

    assert!(
        status.message().contains("dev/zcrypt-apqn-0-41-0"),
        "{}",
        status.message()
    );
    assert_nothing_left(&node);
}

#[tokio::test]
async fn symlinked_shadow_base_is_rejected() {
    let node = node(Kernel::Normal);
    let elsewhere = node.root.join("elsewhere");
    fs::create_dir_all(&elsewhere).expect("elsewhere");
    fs::create_dir_all(node.paths.shadow_base.parent().expect("parent")).expect("var/tmp");
    symlink(&elsewhere, &node.paths.shadow_base).expect("plant symlink");
    let allocator = allocator(&node, TIMEOUT);
    let set = set(&[(0, 0x29)], 1, false);

    let status = allocator
        .allocate(&set, request(&[&["apqn-0-41-0"]]))
        .await
        .expect_err("fails");

    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("symbolic link"),
        "{}",
        status.message()
    );
    assert_eq!(names_in(&elsewhere), Vec::<String>::new());
    assert_eq!(names_in(&node.paths.zcrypt_nodes_dir), Vec::<String>::new());
    assert_eq!(names_in(&node.paths.dev_dir), vec!["z90crypt".to_string()]);
}

#[tokio::test]
async fn world_writable_shadow_base_is_rejected() {
    let node = node(Kernel::Normal);
    fs::create_dir_all(&node.paths.shadow_base).expect("base");
    fs::set_permissions(&node.paths.shadow_base, fs::Permissions::from_mode(0o777)).expect("chmod");
    let allocator = allocator(&node, TIMEOUT);
    let set = set(&[(0, 0x29)], 1, false);

    let status = allocator
        .allocate(&set, request(&[&["apqn-0-41-0"]]))
        .await
        .expect_err("fails");

    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("writable by group or others"),
        "{}",
        status.message()
    );
    assert_nothing_left(&node);
}

#[tokio::test]
async fn failed_second_container_undoes_first() {
    let node = node(Kernel::Normal);
    let allocator = allocator(&node, TIMEOUT);
    let set = set(&[(0, 0x29), (2, 0x2a)], 1, false);
    fs::remove_file(node.paths.ap_devs_dir.join("card02/02.002a/reset")).expect("break queue");

    let containers = request(&[&["apqn-0-41-0"], &["apqn-2-42-0"]]);
    let status = allocator
        .allocate(&set, containers)
        .await
        .expect_err("fails");

    assert!(
        status.message().contains("02.002a/reset"),
        "{}",
        status.message()
    );
    assert_nothing_left(&node);
    assert!(allocator.allocations().records.is_empty());
}

// ---------------------------------------------------------------------------
// Concurrency and preferred allocation

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_allocations_all_succeed() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let node = recording_node(events.clone());
    let allocator = allocator(&node, TIMEOUT);
    let set = Arc::new(set(
        &[(0, 0x29), (0, 0x2a), (2, 0x29), (4, 0x2a)],
        16,
        false,
    ));
    let ids: Vec<String> = set
        .devices
        .iter()
        .map(|device| device.id.to_string())
        .collect();
    assert_eq!(ids.len(), 64);

    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (allocator, set, id) = (allocator.clone(), set.clone(), id.clone());
            tokio::spawn(async move { allocator.allocate(&set, request(&[&[id.as_str()]])).await })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("allocated");
    }

    assert_eq!(names_in(&node.paths.zcrypt_nodes_dir).len(), 64);
    assert_eq!(names_in(&node.paths.shadow_base).len(), 64);
    assert_eq!(allocator.allocations().records.len(), 64);
    // Each create write was read on its own: one Created event per node
    // and no name lost or merged with another.
    let events = events.lock().expect("events");
    let mut created: Vec<String> = events
        .iter()
        .map(|event| match event {
            KernelEvent::Created { name, .. } => name.clone(),
            other => panic!("unexpected kernel event {other:?}"),
        })
        .collect();
    created.sort();
    let mut expected: Vec<String> = ids.iter().map(|id| format!("zcrypt-{id}")).collect();
    expected.sort();
    assert_eq!(created, expected);
}

fn preferred_request(
    available: &[&str],
    must_include: &[&str],
    size: i32,
) -> PreferredAllocationRequest {
    let strings = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect();
    PreferredAllocationRequest {
        container_requests: vec![ContainerPreferredAllocationRequest {
            available_device_i_ds: strings(available),
            must_include_device_i_ds: strings(must_include),
            allocation_size: size,
        }],
    }
}

#[tokio::test]
async fn preferred_allocation_spreads_over_apqns() {
    let node = node(Kernel::Normal);
    let allocator = allocator(&node, TIMEOUT);
    let set = set(&[(0, 0x29), (2, 0x29)], 3, false);
    allocator
        .allocate(&set, request(&[&["apqn-0-41-0"]]))
        .await
        .expect("allocated");
    let available = [
        "apqn-0-41-1",
        "apqn-0-41-2",
        "apqn-2-41-0",
        "apqn-2-41-1",
        "apqn-2-41-2",
    ];

    let response = allocator
        .preferred_allocation(&set, preferred_request(&available, &[], 1))
        .expect("ok");
    assert_eq!(
        response.container_responses[0].device_i_ds,
        vec!["apqn-2-41-0".to_string()]
    );

    let response = allocator
        .preferred_allocation(&set, preferred_request(&available, &[], 3))
        .expect("ok");
    let chosen = &response.container_responses[0].device_i_ds;
    assert_eq!(chosen, &["apqn-2-41-0", "apqn-0-41-1", "apqn-2-41-1"]);

    let response = allocator
        .preferred_allocation(&set, preferred_request(&available, &["apqn-0-41-2"], 2))
        .expect("ok");
    assert_eq!(
        response.container_responses[0].device_i_ds,
        ["apqn-0-41-2", "apqn-2-41-0"]
    );

    let status = allocator
        .preferred_allocation(&set, preferred_request(&available, &["apqn-0-41-2/.."], 1))
        .expect_err("malformed must-include id");
    assert_eq!(status.code(), Code::InvalidArgument);
}

// ---------------------------------------------------------------------------
// Benchmark

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

fn print_latencies(label: &str, mut latencies: Vec<Duration>) {
    latencies.sort();
    println!(
        "{label}: n={} p50={:?} p99={:?} max={:?}",
        latencies.len(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1]
    );
}

async fn timed_allocate(allocator: &Allocator, set: &SetSnapshot, id: &str) -> Duration {
    let start = Instant::now();
    let response: AllocateResponse = allocator
        .allocate(set, request(&[&[id]]))
        .await
        .expect("allocated");
    assert_eq!(response.container_responses.len(), 1);
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run with --ignored"]
async fn allocate_latency_benchmark() {
    let node = node(Kernel::Normal);
    let allocator = allocator(&node, TIMEOUT);
    let set = Arc::new(set(&[(0, 0x29), (4, 0x2a)], 100, true));
    let ids: Vec<String> = set
        .devices
        .iter()
        .map(|device| device.id.to_string())
        .collect();

    let mut sequential = Vec::with_capacity(200);
    for id in &ids {
        sequential.push(timed_allocate(&allocator, &set, id).await);
    }
    print_latencies("Allocate, 200 sequential, new nodes", sequential);

    let mut reused = Vec::with_capacity(200);
    for id in &ids {
        reused.push(timed_allocate(&allocator, &set, id).await);
    }
    print_latencies("Allocate, 200 sequential, nodes reused", reused);

    let fresh = node_after_cleanup(&node, &allocator, &ids);
    let tasks: Vec<_> = ids[..64]
        .iter()
        .map(|id| {
            let (allocator, set, id) = (fresh.clone(), set.clone(), id.clone());
            tokio::spawn(async move { timed_allocate(&allocator, &set, &id).await })
        })
        .collect();
    let mut concurrent = Vec::with_capacity(64);
    for task in tasks {
        concurrent.push(task.await.expect("task"));
    }
    print_latencies("Allocate, 64 concurrent, new nodes", concurrent);
}

/// Destroys every node and shadow dir so the next round creates afresh.
fn node_after_cleanup(node: &Node, allocator: &Allocator, ids: &[String]) -> Allocator {
    for id in ids {
        let id: DeviceId = id.parse().expect("id");
        allocator
            .zcrypt_nodes()
            .destroy(&id.zcrypt_node_name())
            .expect("destroyed");
        cex_node::remove_shadow_dir(&node.paths.shadow_base, &id).expect("removed");
    }
    allocator_after_restart(node)
}
