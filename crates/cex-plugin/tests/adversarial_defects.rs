//! The agent under hostile requests and surroundings: huge or foreign
//! ids, a removed device-plugin directory, a second agent, a file in the
//! way of the socket, the longest set name and a huge config value.

mod agent_support;

use std::fs;
use std::time::Duration;

use agent_support::{first_message_of_new_stream, pause, Node, BLUE, WAIT};
use cex_kubelet_api::deviceplugin::v1beta1::{
    ContainerPreferredAllocationRequest, PreferredAllocationRequest,
};
use cex_sim::kubelet::FakeKubelet;

fn preferred(available: &[&str], must: &[&str], size: i32) -> PreferredAllocationRequest {
    let ids = |list: &[&str]| list.iter().map(|id| id.to_string()).collect();
    PreferredAllocationRequest {
        container_requests: vec![ContainerPreferredAllocationRequest {
            available_device_i_ds: ids(available),
            must_include_device_i_ds: ids(must),
            allocation_size: size,
        }],
    }
}

async fn started(node: &Node) -> (FakeKubelet, agent_support::Agent) {
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let agent = node.spawn_agent(&[]);
    first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first list");
    (kubelet, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_allocation_with_huge_size_keeps_the_agent_alive() {
    let node = Node::new();
    let (kubelet, mut agent) = started(&node).await;
    let request = preferred(&["apqn-1-5-0", "apqn-2-5-0"], &[], i32::MAX);
    let _ = kubelet.preferred_allocation(BLUE, request).await;
    pause(Duration::from_millis(500)).await;
    assert!(agent.alive(), "agent died:\n{}", agent.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_allocation_offers_only_announced_available_ids() {
    let node = Node::new();
    let (kubelet, _agent) = started(&node).await;
    let foreign = kubelet
        .preferred_allocation(BLUE, preferred(&["apqn-1-5-0"], &["apqn-7-7-0"], 1))
        .await;
    assert!(
        foreign.is_err(),
        "unannounced must_include accepted: {foreign:?}"
    );
    let duplicate = kubelet
        .preferred_allocation(
            BLUE,
            preferred(
                &["apqn-1-5-0", "apqn-2-5-0"],
                &["apqn-1-5-0", "apqn-1-5-0"],
                1,
            ),
        )
        .await;
    if let Ok(response) = duplicate {
        let chosen = &response.container_responses[0].device_i_ds;
        assert!(chosen.len() <= 1, "size 1 answered with {chosen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_of_a_huge_request_stays_readable() {
    let node = Node::new();
    let (kubelet, _agent) = started(&node).await;
    let many: Vec<String> = (0..1000).map(|n| format!("apqn-1-5-{n}")).collect();
    let error = kubelet
        .allocate(BLUE, vec![many])
        .await
        .expect_err("1000 ids");
    assert_eq!(
        error.code(),
        tonic::Code::InvalidArgument,
        "{}",
        error.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_plugin_dir_removed_and_recreated() {
    let node = Node::new();
    let (kubelet, _agent) = started(&node).await;
    kubelet.stop().await;
    drop(kubelet);
    fs::remove_dir_all(node.plugin_dir()).expect("remove dir");
    pause(Duration::from_millis(500)).await;
    fs::create_dir_all(node.plugin_dir()).expect("recreate dir");
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("new kubelet");
    let again = kubelet.wait_registration(BLUE, 0, WAIT).await;
    assert!(again.is_some(), "files {:?}", node.plugin_dir_files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_agent_does_not_steal_a_live_socket() {
    let node = Node::new();
    let (kubelet, _first) = started(&node).await;
    let _second = node.spawn_agent(&[]);
    pause(Duration::from_secs(20)).await;
    let registrations = kubelet.recorded().accepted(BLUE).len();
    assert!(registrations <= 3, "{registrations} Register calls in 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_serve_failure_backs_off() {
    let node = Node::new();
    fs::write(node.plugin_dir().join("cex-blue.sock"), "not ours").expect("plant");
    let _kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let agent = node.spawn_agent(&[]);
    pause(Duration::from_secs(20)).await;
    let attempts = agent.log_text().matches("cannot serve").count();
    assert!(attempts <= 10, "{attempts} attempts in 20 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_valid_set_name_is_served() {
    let node = Node::new();
    let name = "a".repeat(63);
    node.write_config(&format!(
        r#"{{"cryptoconfigsets":[{{"setname":"{name}","project":"p","apqns":[{{"adapter":1,"domain":5}}]}}]}}"#
    ));
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let agent = node.spawn_agent(&[]);
    let resource = format!("cex.s390.ibm.com/{name}");
    let registered = kubelet.wait_registration(&resource, 0, WAIT).await;
    assert!(registered.is_some(), "log:\n{}", agent.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_config_value_is_not_logged_whole() {
    let node = Node::new();
    let (_kubelet, agent) = started(&node).await;
    node.write_config(&format!(
        r#"{{"cryptoconfigsets":[{{"setname":"blue","project":"{}","apqns":[]}}]}}"#,
        "p".repeat(50 << 20)
    ));
    pause(Duration::from_secs(5)).await;
    let longest = agent.log_text().lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 64 << 10, "log line of {longest} bytes");
}
