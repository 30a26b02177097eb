//! Hostile Allocate and GetPreferredAllocation requests against the agent
//! binary: malformed ids, ids of other sets, unannounced and unhealthy
//! ids, oversized requests and concurrent requests for one id. A rejected
//! request must name the id and leave no zcrypt node, shadow dir or
//! build dir behind; the agent must keep serving.

mod adversarial_support;
mod agent_support;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use adversarial_support::{blue_healthy, kernel};
use agent_support::{first_message_of_new_stream, Node, BLUE};
use cex_kubelet_api::deviceplugin::v1beta1::{
    ContainerPreferredAllocationRequest, PreferredAllocationRequest,
};
use cex_sim::kernel::RunningKernel;
use cex_sim::kubelet::FakeKubelet;
use tonic::Code;

const RED: &str = "cex.s390.ibm.com/red";

/// Sets `blue` (1/5, 2/5) and `red` (1/6 online, 2/6 offline).
const TWO_SETS: &str = r#"{"cryptoconfigsets":[
  {"setname":"blue","project":"blue","apqns":[{"adapter":1,"domain":5},{"adapter":2,"domain":5}]},
  {"setname":"red","project":"red","apqns":[{"adapter":1,"domain":6},{"adapter":2,"domain":6}]}]}"#;

struct Running {
    node: Node,
    kubelet: Arc<FakeKubelet>,
    agent: agent_support::Agent,
    _kernel: RunningKernel,
}

async fn start() -> Running {
    let node = Node::new();
    node.add_queue(1, 6, true);
    node.add_queue(2, 6, false);
    node.write_config(TWO_SETS);
    let kernel = kernel(&node);

    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let agent = node.spawn_agent(&[("APQN_LIVE_SYSFS", "0")]);

    for resource in [BLUE, RED] {
        first_message_of_new_stream(&kubelet, resource, 0)
            .await
            .expect("first list");
    }
    Running {
        node,
        kubelet: Arc::new(kubelet),
        agent,
        _kernel: kernel,
    }
}

/// Lists the entries of `dir`, sorted, or none when the dir is absent.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|read| {
            read.filter_map(Result::ok)
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Lists what allocations leave on the node: zcrypt attribute dirs,
/// `/dev` nodes and shadow base entries.
fn made(node: &Node) -> Vec<String> {
    let mut all = Vec::new();

    for dir in ["sys/devices/virtual/zcrypt", "dev", "var/tmp/shadowsysfs"] {
        for name in entries(&node.path(dir)) {
            all.push(format!("{dir}/{name}"));
        }
    }
    all.sort();
    all
}

fn one(id: &str) -> Vec<Vec<String>> {
    vec![vec![id.to_string()]]
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|id| id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_bad_ids_rejected() {
    let mut running = start().await;
    let huge = format!("apqn-1-5-{}", "9".repeat(40));
    let cases: Vec<(&str, Vec<Vec<String>>)> = vec![
        ("traversal", one("apqn-1-5-0/../x")),
        ("leading zero", one("apqn-01-5-0")),
        ("huge index", one(&huge)),
        ("adapter 256", one("apqn-256-5-0")),
        ("empty", one("")),
        ("unicode digits", one("apqn-\u{661}-5-0")),
        ("other set", one("apqn-1-6-0")),
        ("unannounced slot", one("apqn-1-5-1")),
        ("no ids", vec![vec![]]),
        ("no containers", vec![]),
        (
            "two ids one container",
            vec![ids(&["apqn-1-5-0", "apqn-2-5-0"])],
        ),
        (
            "one id two containers",
            vec![ids(&["apqn-1-5-0"]), ids(&["apqn-1-5-0"])],
        ),
        (
            "good then bad",
            vec![ids(&["apqn-1-5-0"]), ids(&["apqn-9-9-0"])],
        ),
    ];

    for (what, containers) in cases {
        let request_text = format!("{containers:?}");
        let error = running
            .kubelet
            .allocate(BLUE, containers)
            .await
            .expect_err(what);
        assert!(
            error.message().contains("apqn") || error.message().contains("container"),
            "{what}: {request_text}: {}",
            error.message()
        );
        assert_eq!(error.code(), Code::InvalidArgument, "{what}");
        assert_eq!(
            made(&running.node),
            Vec::<String>::new(),
            "{what} left files"
        );
    }
    let unhealthy = running
        .kubelet
        .allocate(RED, one("apqn-2-6-0"))
        .await
        .expect_err("unhealthy id");
    assert!(
        unhealthy.message().contains("apqn-2-6-0"),
        "{}",
        unhealthy.message()
    );
    assert_eq!(made(&running.node), Vec::<String>::new());
    assert!(running.agent.alive());
    running
        .kubelet
        .allocate(BLUE, one("apqn-1-5-0"))
        .await
        .expect("a good id still allocates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_two_containers() {
    let running = start().await;
    let containers = vec![ids(&["apqn-1-5-0"]), ids(&["apqn-2-5-0"])];

    let response = running
        .kubelet
        .allocate(BLUE, containers)
        .await
        .expect("two containers, two ids");
    assert_eq!(response.container_responses.len(), 2);
    let hosts: Vec<&str> = response
        .container_responses
        .iter()
        .map(|container| container.devices[0].host_path.as_str())
        .collect();
    assert!(hosts[0].ends_with("zcrypt-apqn-1-5-0"), "{hosts:?}");
    assert!(hosts[1].ends_with("zcrypt-apqn-2-5-0"), "{hosts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_same_id_concurrently() {
    let mut running = start().await;

    let mut calls = Vec::new();

    for _ in 0..16 {
        let kubelet = Arc::clone(&running.kubelet);
        calls.push(tokio::spawn(async move {
            kubelet.allocate(BLUE, one("apqn-1-5-0")).await
        }));
    }
    let mut succeeded = 0;

    for call in calls {
        match call.await.expect("task") {
            Ok(_) => succeeded += 1,
            Err(status) => println!("concurrent allocate failed: {status:?}"),
        }
    }
    println!("{succeeded} of 16 concurrent allocates succeeded");
    assert!(succeeded >= 1);
    assert!(running.agent.alive());
    assert_eq!(
        made(&running.node),
        vec![
            "dev/zcrypt-apqn-1-5-0".to_string(),
            "sys/devices/virtual/zcrypt/zcrypt-apqn-1-5-0".to_string(),
            "var/tmp/shadowsysfs/sysfs-apqn-1-5-0".to_string(),
        ]
    );
}

fn preferred(available: &[&str], must: &[&str], size: i32) -> PreferredAllocationRequest {
    PreferredAllocationRequest {
        container_requests: vec![ContainerPreferredAllocationRequest {
            available_device_i_ds: ids(available),
            must_include_device_i_ds: ids(must),
            allocation_size: size,
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_allocation_odd_sizes() {
    let running = start().await;
    let both = ["apqn-1-5-0", "apqn-2-5-0"];
    let zero = running
        .kubelet
        .preferred_allocation(BLUE, preferred(&both, &[], 0))
        .await;

    let large = running
        .kubelet
        .preferred_allocation(BLUE, preferred(&both, &[], 5))
        .await
        .expect("size above available");
    let mut chosen = large.container_responses[0].device_i_ds.clone();
    chosen.sort();
    assert_eq!(chosen, ids(&both));

    let negative = running
        .kubelet
        .preferred_allocation(BLUE, preferred(&["apqn-1-5-0"], &[], -1))
        .await
        .expect_err("negative size");
    assert_eq!(negative.code(), Code::InvalidArgument);
    let zero = zero.expect("size 0");
    assert!(zero.container_responses[0].device_i_ds.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_during_card_unplug() {
    let running = start().await;
    let mut outcomes = (0, 0);

    for round in 0..5 {
        let card = running.node.card_dir(2);
        let unplug = tokio::task::spawn_blocking(move || fs::remove_dir_all(card));
        let result = running.kubelet.allocate(BLUE, one("apqn-2-5-0")).await;
        let _ = unplug.await;
        match &result {
            Ok(_) => outcomes.0 += 1,
            Err(status) => {
                outcomes.1 += 1;
                assert!(
                    status.message().contains("apqn-2-5-0"),
                    "{}",
                    status.message()
                );
            }
        }
        let leftovers: Vec<String> = entries(&running.node.path("var/tmp/shadowsysfs"))
            .into_iter()
            .filter(|name| name.starts_with(".build-"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
        running.node.add_card(2, "CEX7C");
        running.node.add_queue(2, 5, true);
        let back = blue_healthy(&running.kubelet, 2).await;
        assert!(back, "round {round}: card02 not Healthy again");
    }
    println!(
        "allocate during unplug: {} ok, {} failed",
        outcomes.0, outcomes.1
    );
    assert_eq!(outcomes.0 + outcomes.1, 5);
}
