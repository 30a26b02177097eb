//! What IBM's `lszcrypt` lists inside a container that got one CEX device:
//! the mounts of an `Allocate` response, applied read-only in a private
//! mount namespace exactly as the response lists them, show one card and
//! one queue, online, with the card's type and mode, and the allocated
//! domain as the only usage domain. Static and live shadow sysfs alike.
//!
//! The node is the built-in simulated z16 LPAR `cex8-mixed-lpar` with its
//! fake kernel answering zcrypt `create`. Each test prints
//! `SKIPPED: <reason>` and passes when qemu-user, the unpacked tool
//! (scripts/fetch-s390-tools.sh), `unshare` or root is missing.

use std::path::Path;
use std::time::Duration;

use cex_ap::{Apqn, DeviceId};
use cex_kubelet_api::deviceplugin::v1beta1::{
    AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse,
};
use cex_node::NodePaths;
use cex_plugin::allocate::{Allocator, AllocatorOptions};
use cex_plugin::devices::{PluginDevice, SetSnapshot};
use cex_sim::kernel::FakeKernel;
use cex_sim::layout::SimNode;
use cex_sim::lszcrypt::{
    self, container_mounts, parse_devices, parse_domains, tools_or_skip, Row, Tools,
};
use cex_sim::machines;

const MACHINE: &str = "cex8-mixed-lpar";

/// A simulated node with its fake kernel running, and an allocator on it.
struct Node {
    node: SimNode,
    allocator: Allocator,
    _kernel: cex_sim::kernel::RunningKernel,
    _temp: tempfile::TempDir,
}

fn node() -> Node {
    let temp = tempfile::tempdir().expect("temp dir");
    let root = temp.path().join("node");
    let machine = machines::by_name(MACHINE).expect("built-in machine");
    let node = SimNode::create(machine, &root).expect("lay out");
    let kernel = FakeKernel::new(&root)
        .expect("fake kernel")
        .start()
        .expect("start fake kernel");
    let paths = NodePaths::under_root(&root, &root.join("var/tmp/shadowsysfs"));
    let options = AllocatorOptions {
        create_timeout: Duration::from_secs(20),
        shadow_owner: None,
    };
    Node {
        node,
        allocator: Allocator::new(paths, options),
        _kernel: kernel,
        _temp: temp,
    }
}

/// Allocates device 0 of `apqn` from a set holding only that APQN.
async fn allocate(node: &Node, apqn: Apqn, live_sysfs: bool) -> ContainerAllocateResponse {
    let id = DeviceId::new(apqn, 0);
    let set = SetSnapshot {
        name: "blue".to_string(),
        project: "blue".to_string(),
        live_sysfs,
        devices: vec![PluginDevice { id, healthy: true }],
    };
    let request = AllocateRequest {
        container_requests: vec![ContainerAllocateRequest {
            devices_i_ds: vec![id.to_string()],
        }],
    };
    let mut response = node
        .allocator
        .allocate(&set, request)
        .await
        .expect("allocation succeeds");
    assert_eq!(response.container_responses.len(), 1);
    response.container_responses.remove(0)
}

fn run(tools: &Tools, response: &ContainerAllocateResponse, args: &[&str]) -> String {
    let mounts = container_mounts(response);
    assert!(mounts.iter().all(|mount| mount.read_only), "{mounts:?}");
    let output = lszcrypt::run_lszcrypt_in_view(tools, &mounts, args).expect("lszcrypt runs");
    let command = format!("lszcrypt {}", args.join(" "));
    lszcrypt::success_stdout(&output, &command).expect("lszcrypt succeeds")
}

/// Returns id, type, mode and status of each row.
fn summary(rows: &[Row]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|row| {
            row.columns()[..4]
                .iter()
                .map(|column| column.to_string())
                .collect()
        })
        .collect()
}

/// Asserts that the device spec maps the APQN's zcrypt node to
/// `/dev/z90crypt`.
// NOTE: the view does not bind the node at /dev/z90crypt; lszcrypt only
// reads sysfs, so the device spec is checked by its fields alone.
fn assert_device(response: &ContainerAllocateResponse, apqn: Apqn) {
    assert_eq!(response.devices.len(), 1);
    let device = &response.devices[0];
    assert_eq!(device.container_path, "/dev/z90crypt");
    assert_eq!(device.permissions, "rw");
    let name = format!("zcrypt-apqn-{}-{}-0", apqn.adapter, apqn.domain);
    assert!(
        device.host_path.ends_with(&format!("/dev/{name}")),
        "{}",
        device.host_path
    );
    assert!(
        Path::new(&device.host_path).exists(),
        "{}",
        device.host_path
    );
}

/// Checks the listing, the verbose listing and the domains of a container
/// holding `apqn`; returns the default rows.
fn check_container_view(
    tools: &Tools,
    response: &ContainerAllocateResponse,
    apqn: Apqn,
    card_type: &str,
    mode: &str,
) -> Vec<Row> {
    let card = format!("{:02x}", apqn.adapter);
    let queue = format!("{card}.{:04x}", apqn.domain);
    let listing = run(tools, response, &[]);
    let rows = parse_devices(&listing).expect("device table");
    let online = |id: &str| [id, card_type, mode, "online"].map(str::to_string).to_vec();
    assert_eq!(
        summary(&rows),
        vec![online(&card), online(&queue)],
        "\n{listing}"
    );

    let verbose = run(tools, response, &["-V"]);
    let drivers: Vec<String> = parse_devices(&verbose)
        .expect("verbose device table")
        .iter()
        .map(|row| row.verbose.clone().expect("verbose columns").driver)
        .collect();
    assert_eq!(drivers, ["cex4card", "cex4queue"], "\n{verbose}");

    let domains = parse_domains(&run(tools, response, &["-d", "C"])).expect("domain table");
    for (domain, letter) in domains.iter().enumerate() {
        let expected = if domain == usize::from(apqn.domain) {
            'U'
        } else {
            '.'
        };
        assert_eq!(*letter, expected, "domain {domain:#04x}");
    }
    let bus = run(tools, response, &["-b"]);
    assert!(
        bus.contains(&format!("ap_domain={:#x}\n", apqn.domain)),
        "\n{bus}"
    );
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_shadow_shows_only_allocated_apqn() {
    let Some(tools) = tools_or_skip("static_shadow_shows_only_allocated_apqn") else {
        return;
    };
    let node = node();
    for (adapter, domain, card_type, mode) in [
        (0x04, 0x2a, "CEX8P", "EP11-Coproc"),
        (0x00, 0x29, "CEX8C", "CCA-Coproc"),
        (0x02, 0x2a, "CEX8A", "Accelerator"),
    ] {
        let apqn = Apqn::new(adapter, domain);
        let response = allocate(&node, apqn, false).await;
        assert_device(&response, apqn);
        assert_eq!(response.mounts.len(), 2, "{:?}", response.mounts);
        let rows = check_container_view(&tools, &response, apqn, card_type, mode);
        // The static tree shows zero counters, whatever the host counted.
        assert!(rows.iter().all(|row| row.requests == "0"), "{rows:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_shadow_follows_real_queue() {
    let Some(tools) = tools_or_skip("live_shadow_follows_real_queue") else {
        return;
    };
    let mut node = node();
    let apqn = Apqn::new(0x04, 0x2a);
    let response = allocate(&node, apqn, true).await;
    assert_device(&response, apqn);
    assert_eq!(response.mounts.len(), 3, "{:?}", response.mounts);
    let rows = check_container_view(&tools, &response, apqn, "CEX8P", "EP11-Coproc");
    let host_requests = node
        .node
        .machine()
        .queue(apqn)
        .expect("described queue")
        .request_count
        .to_string();
    let requests: Vec<&str> = rows.iter().map(|row| row.requests.as_str()).collect();
    assert_eq!(requests, [host_requests.as_str(), host_requests.as_str()]);

    // Taking the host queue offline shows in the running container.
    node.node
        .set_queue_online(apqn, false)
        .expect("queue offline");
    let rows = parse_devices(&run(&tools, &response, &[])).expect("device table");
    let status: Vec<&str> = rows.iter().map(|row| row.status.as_str()).collect();
    assert_eq!(status, ["offline", "offline"], "{rows:?}");
}

/// Checks the text the demo prints for a container: real `lszcrypt -V`
/// and `-d`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn description_names_card_and_queue() {
    if tools_or_skip("description_names_card_and_queue").is_none() {
        return;
    }
    let node = node();
    let apqn = Apqn::new(0x03, 0x11);
    let response = allocate(&node, apqn, false).await;
    let text = lszcrypt::describe_container_view(&response).expect("description");
    println!("{text}");
    assert!(text.contains("$ lszcrypt -V\n"), "{text}");
    assert!(
        text.contains("03.0011     CEX8P EP11-Coproc online"),
        "{text}"
    );
    assert!(text.contains("C: Control domain"), "{text}");
}
