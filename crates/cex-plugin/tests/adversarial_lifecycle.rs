//! Hostile surroundings for the agent binary. The kubelet stops and
//! starts again, `kubelet.sock` flaps, a file sits where a plug-in socket
//! goes, a kubelet accepts but never responds, SIGTERM arrives while
//! registering, and the shadow base is unsafe. Descriptor, thread and
//! memory use are measured over many restarts and allocations.

mod adversarial_support;
mod agent_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use adversarial_support::{kernel, started};
use agent_support::{first_message_of_new_stream, pause, wait_until, Node, BLUE, WAIT};
use cex_sim::kubelet::FakeKubelet;

const RED: &str = "cex.s390.ibm.com/red";

const TWO_SETS: &str = r#"{"cryptoconfigsets":[
  {"setname":"blue","project":"blue","apqns":[{"adapter":1,"domain":5}]},
  {"setname":"red","project":"red","apqns":[{"adapter":2,"domain":5}]}]}"#;

fn count_entries(path: String) -> usize {
    fs::read_dir(path).map(|dir| dir.count()).unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_stopped_then_started() {
    let node = Node::new();

    let (kubelet, mut agent) = started(&node, &[]).await;
    kubelet.stop().await;
    drop(kubelet);

    pause(Duration::from_millis(500)).await;

    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("new kubelet");
    let again = kubelet.wait_registration(BLUE, 0, WAIT).await;
    assert!(agent.alive());
    assert!(again.is_some(), "log:\n{}", agent.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_socket_flapping() {
    let node = Node::new();
    let _kernel = kernel(&node);

    let (kubelet, mut agent) = started(&node, &[]).await;

    for _ in 0..50 {
        kubelet.restart().await.expect("restart");
    }
    let settled = kubelet
        .wait_for(WAIT, |recorded| {
            let last = *recorded.streams_of(BLUE).last()?;
            let first = last.messages.first()?;
            (last.ended.is_none() && first.healthy() == 2).then_some(())
        })
        .await;

    pause(Duration::from_secs(3)).await;
    let registrations = kubelet.recorded().accepted(BLUE).len();
    println!("registrations after 50 rapid restarts: {registrations}");
    assert!(agent.alive());
    assert!(settled.is_some(), "no stream after the flapping");
    kubelet
        .allocate(BLUE, vec![vec!["apqn-1-5-0".to_string()]])
        .await
        .expect("allocate after the flapping");
    assert_eq!(
        node.plugin_dir_files(),
        vec!["cex-blue.sock", "kubelet.sock"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_file_at_socket_path() {
    let node = Node::new();
    node.write_config(TWO_SETS);
    node.add_queue(2, 5, true);
    fs::write(node.plugin_dir().join("cex-blue.sock"), "not ours").expect("plant");

    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let mut agent = node.spawn_agent(&[]);
    first_message_of_new_stream(&kubelet, RED, 0)
        .await
        .expect("red unaffected");

    pause(Duration::from_secs(3)).await;
    assert!(agent.alive());
    let planted = fs::read_to_string(node.plugin_dir().join("cex-blue.sock")).expect("kept");
    assert_eq!(planted, "not ours", "the planted file must not be touched");

    let log = agent.log_text();
    assert!(
        log.contains("cex-blue.sock"),
        "error must name the path:\n{log}"
    );
    fs::remove_file(node.plugin_dir().join("cex-blue.sock")).expect("remove plant");
    let blue = kubelet
        .wait_registration(BLUE, 0, Duration::from_secs(60))
        .await;
    assert!(blue.is_some(), "blue never served after the file went away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_kubelet_then_real() {
    let node = Node::new();
    node.write_config(TWO_SETS);
    node.add_queue(2, 5, true);
    let hung = UnixListener::bind(node.plugin_dir().join("kubelet.sock")).expect("bind");
    let holder = std::thread::spawn(move || {
        let mut connections = Vec::new();
        for stream in hung.incoming().take(64) {
            match stream {
                Ok(stream) => connections.push(stream),
                Err(_) => break,
            }
        }
        connections.len()
    });
    let mut agent = node.spawn_agent(&[]);

    pause(Duration::from_secs(12)).await;
    assert!(agent.alive());
    // The plug-in servers respond while registration hangs.
    let blue_socket = node.plugin_dir().join("cex-blue.sock");

    let channel = cex_kubelet_api::uds::connect(&blue_socket)
        .await
        .expect("blue serves");
    let mut client =
        cex_kubelet_api::deviceplugin::v1beta1::device_plugin_client::DevicePluginClient::new(
            channel,
        );
    let options = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_device_plugin_options(cex_kubelet_api::deviceplugin::v1beta1::Empty {}),
    )
    .await;
    assert!(
        matches!(options, Ok(Ok(_))),
        "plug-in server blocked: {options:?}"
    );

    fs::remove_file(node.plugin_dir().join("kubelet.sock")).expect("remove hung socket");

    let start = Instant::now();

    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let blue = kubelet.wait_registration(BLUE, 0, WAIT).await;
    let red = kubelet.wait_registration(RED, 0, WAIT).await;
    println!(
        "both registered {} ms after the real kubelet came",
        start.elapsed().as_millis()
    );
    assert!(
        blue.is_some() && red.is_some(),
        "log:\n{}",
        agent.log_text()
    );
    drop(holder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_hung_registration() {
    let node = Node::new();
    let _hung = UnixListener::bind(node.plugin_dir().join("kubelet.sock")).expect("bind");
    let mut agent = node.spawn_agent(&[]);
    assert!(
        wait_until(|| node.plugin_dir().join("cex-blue.sock").exists()).await,
        "blue never served"
    );

    pause(Duration::from_millis(300)).await;

    let start = Instant::now();
    let code = agent.terminate();
    println!("exit {code:?} after {} ms", start.elapsed().as_millis());
    assert_eq!(code, Some(0));
    assert_eq!(node.plugin_dir_files(), vec!["kubelet.sock"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_shadow_base_rejected() {
    let node = Node::new();
    let _kernel = kernel(&node);
    let target = node.path("elsewhere");
    fs::create_dir_all(&target).expect("target");
    fs::create_dir_all(node.path("var/tmp")).expect("var/tmp");
    std::os::unix::fs::symlink(&target, node.path("var/tmp/shadowsysfs")).expect("plant");

    let (kubelet, mut agent) = started(&node, &[]).await;

    let error = kubelet
        .allocate(BLUE, vec![vec!["apqn-1-5-0".to_string()]])
        .await
        .expect_err("symlinked base");
    println!("symlinked base: {:?} {}", error.code(), error.message());
    assert!(error.message().contains("shadowsysfs"));
    assert_eq!(count_entries(target.display().to_string()), 0);
    assert_eq!(
        count_entries(
            node.path("sys/devices/virtual/zcrypt")
                .display()
                .to_string()
        ),
        0
    );

    fs::remove_file(node.path("var/tmp/shadowsysfs")).expect("unplant");
    fs::create_dir(node.path("var/tmp/shadowsysfs")).expect("base");
    fs::set_permissions(
        node.path("var/tmp/shadowsysfs"),
        fs::Permissions::from_mode(0o777),
    )
    .expect("chmod");

    let error = kubelet
        .allocate(BLUE, vec![vec!["apqn-1-5-0".to_string()]])
        .await
        .expect_err("world-writable base");
    println!(
        "world-writable base: {:?} {}",
        error.code(),
        error.message()
    );
    assert_eq!(
        count_entries(
            node.path("sys/devices/virtual/zcrypt")
                .display()
                .to_string()
        ),
        0
    );
    assert!(agent.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptors_after_kubelet_restarts() {
    let node = Node::new();

    let (kubelet, agent) = started(&node, &[]).await;
    first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first list");

    pause(Duration::from_secs(2)).await;
    let pid = agent.pid();
    let fds = || count_entries(format!("/proc/{pid}/fd"));
    let threads = || count_entries(format!("/proc/{pid}/task"));
    let (fds_before, threads_before) = (fds(), threads());

    for round in 0..100 {
        kubelet.restart().await.expect("restart");
        kubelet
            .wait_registration(BLUE, round + 1, WAIT)
            .await
            .unwrap_or_else(|| panic!("no Register after restart {round}"));
    }
    pause(Duration::from_secs(5)).await;

    let (fds_after, threads_after) = (fds(), threads());
    println!("fds {fds_before} -> {fds_after}, threads {threads_before} -> {threads_after}");
    assert!(
        fds_after <= fds_before + 4,
        "descriptor leak: {fds_before} -> {fds_after}"
    );
    assert!(threads_after <= threads_before + 4, "thread leak");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_after_many_allocates() {
    let node = Node::new();
    let _kernel = kernel(&node);

    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let agent = node.spawn_agent(&[("APQN_LIVE_SYSFS", "0")]);
    first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("list");
    let pid = agent.pid();

    for _ in 0..50 {
        kubelet
            .allocate(BLUE, vec![vec!["apqn-1-5-0".to_string()]])
            .await
            .expect("warm-up");
    }
    let before = rss_kib(pid);
    let fds_before = count_entries(format!("/proc/{pid}/fd"));

    for n in 0..1000 {
        let id = if n % 2 == 0 {
            "apqn-1-5-0"
        } else {
            "apqn-2-5-0"
        };
        kubelet
            .allocate(BLUE, vec![vec![id.to_string()]])
            .await
            .expect("allocate");
    }
    let after = rss_kib(pid);
    let fds_after = count_entries(format!("/proc/{pid}/fd"));
    println!("RSS {before} KiB -> {after} KiB, fds {fds_before} -> {fds_after}");
    assert!(
        after < before + 8 * 1024,
        "RSS grew by {} KiB",
        after - before
    );
    assert!(fds_after <= fds_before + 4);
}
