//! End-to-end tests of the agent binary against the simulated kubelet:
//! registration, device lists, kubelet restarts, stream ends, rejected
//! registrations, socket deletions and shutdown.

mod agent_support;

use std::time::{Duration, Instant};

use agent_support::{
    all_healthy, exists, first_message_of_new_stream, health, millis_since, pause, wait_until,
    Node, BLUE, MACHINE_ID, WAIT,
};
use cex_sim::kernel::FakeKernel;
use cex_sim::kubelet::FakeKubelet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_sends_real_list() {
    let node = Node::new();
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let start = Instant::now();
    let mut agent = node.spawn_agent(&[]);

    let registration = kubelet
        .wait_registration(BLUE, 0, WAIT)
        .await
        .expect("Register for blue");
    println!(
        "registration took {} ms after spawn",
        registration.at.duration_since(start).as_millis()
    );
    assert_eq!(registration.version, "v1beta1");
    assert_eq!(registration.endpoint, "cex-blue.sock");
    let options = registration.options.expect("options");
    assert!(options.get_preferred_allocation_available);
    assert!(!options.pre_start_required);

    let first = first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first message");
    println!(
        "first ListAndWatch message {} ms after spawn",
        first.at.duration_since(start).as_millis()
    );
    assert_eq!(health(&first), all_healthy(&["apqn-1-5-0", "apqn-2-5-0"]));
    assert!(exists(&node.plugin_dir().join("cex-blue.sock")));
    assert!(agent.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overcommit_default_and_set_value() {
    let node = Node::new();
    node.add_queue(1, 6, true);
    node.write_config(
        r#"{"cryptoconfigsets":[
          {"setname":"blue","project":"blue","apqns":[{"adapter":1,"domain":5}]},
          {"setname":"red","project":"red","overcommit":3,"apqns":[{"adapter":2,"domain":5}]},
          {"setname":"one","project":"one","overcommit":0,"apqns":[{"adapter":1,"domain":6}]}]}"#,
    );
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let _agent = node.spawn_agent(&[("APQN_OVERCOMMIT_LIMIT", "2")]);

    let blue = first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("blue list");
    assert_eq!(health(&blue), all_healthy(&["apqn-1-5-0", "apqn-1-5-1"]));
    let red = first_message_of_new_stream(&kubelet, "cex.s390.ibm.com/red", 0)
        .await
        .expect("red");
    assert_eq!(
        health(&red),
        all_healthy(&["apqn-2-5-0", "apqn-2-5-1", "apqn-2-5-2"])
    );
    let one = first_message_of_new_stream(&kubelet, "cex.s390.ibm.com/one", 0)
        .await
        .expect("one");
    assert_eq!(health(&one), all_healthy(&["apqn-1-6-0"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_offline_queue() {
    let node = Node::new();
    node.add_card(3, "CEX8P");
    node.add_queue(3, 5, false);
    let config = format!(
        r#"{{"cryptoconfigsets":[
          {{"setname":"ep","project":"p","cexmode":"ep11","apqns":[{{"adapter":1,"domain":5}},{{"adapter":2,"domain":5}}]}},
          {{"setname":"gen","project":"p","mincexgen":"cex8","apqns":[{{"adapter":1,"domain":6}},{{"adapter":2,"domain":6}}]}},
          {{"setname":"mach","project":"p","apqns":[{{"adapter":1,"domain":7,"machineid":"IBM-8561-0000000000000001"}},{{"adapter":2,"domain":7,"machineid":"{MACHINE_ID}"}}]}},
          {{"setname":"off","project":"p","apqns":[{{"adapter":3,"domain":5}}]}}]}}"#
    );
    node.write_config(&config);
    for (adapter, domain) in [(1, 6), (2, 6), (1, 7), (2, 7)] {
        node.add_queue(adapter, domain, true);
    }
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let _agent = node.spawn_agent(&[]);

    let ep = first_message_of_new_stream(&kubelet, "cex.s390.ibm.com/ep", 0)
        .await
        .expect("ep");
    assert_eq!(health(&ep), all_healthy(&["apqn-1-5-0"]));
    let generation = first_message_of_new_stream(&kubelet, "cex.s390.ibm.com/gen", 0)
        .await
        .expect("gen");
    assert_eq!(health(&generation), all_healthy(&["apqn-1-6-0"]));
    let machine = first_message_of_new_stream(&kubelet, "cex.s390.ibm.com/mach", 0)
        .await
        .expect("mach");
    assert_eq!(health(&machine), all_healthy(&["apqn-2-7-0"]));
    let offline = first_message_of_new_stream(&kubelet, "cex.s390.ibm.com/off", 0)
        .await
        .expect("off");
    assert_eq!(
        health(&offline),
        [("apqn-3-5-0".to_string(), "Unhealthy".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_hot_plug_follow_sysfs() {
    let node = Node::new();
    node.set_queue_online(2, 5, false);
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let _agent = node.spawn_agent(&[]);

    let first = first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first");
    assert_eq!(first.health_of("apqn-1-5-0"), Some("Healthy"));
    assert_eq!(first.health_of("apqn-2-5-0"), Some("Unhealthy"));

    node.set_queue_online(2, 5, true);
    let recovered = kubelet.next_message(BLUE, WAIT, |m| m.healthy() == 2).await;
    assert!(recovered.is_some(), "apqn-2-5-0 never turned Healthy");

    std::fs::remove_dir_all(node.card_dir(2)).expect("unplug card02");
    let unplugged = kubelet
        .next_message(BLUE, WAIT, |m| m.health_of("apqn-2-5-0").is_none())
        .await;
    let unplugged = unplugged.expect("vanished APQN is no longer announced");
    assert_eq!(health(&unplugged), all_healthy(&["apqn-1-5-0"]));

    node.add_card(2, "CEX7C");
    node.add_queue(2, 5, true);
    let replugged = kubelet.next_message(BLUE, WAIT, |m| m.healthy() == 2).await;
    assert!(
        replugged.is_some(),
        "re-plugged APQN was not announced again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_offers_no_devices() {
    let node = Node::new();
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let agent = node.spawn_agent(&[]);
    first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first");

    node.write_config("{ not json");
    let empty = kubelet
        .next_message(BLUE, WAIT, |m| m.devices.is_empty())
        .await;
    assert!(
        empty.is_some(),
        "set kept offering devices without a valid config"
    );
    assert!(agent
        .log_text()
        .contains("CryptoConfig: Error parsing config file"));
    assert!(
        exists(&node.plugin_dir().join("cex-blue.sock")),
        "registration must stay"
    );

    std::fs::remove_file(node.config_file()).expect("remove config");
    pause(Duration::from_secs(2)).await;
    assert!(agent
        .log_text()
        .contains("CryptoConfig: Can't open config file"));

    node.write_config(agent_support::BASE_CONFIG);
    let restored = kubelet.next_message(BLUE, WAIT, |m| m.healthy() == 2).await;
    assert!(
        restored.is_some(),
        "valid config did not bring the devices back"
    );
    assert!(agent
        .log_text()
        .contains("CryptoConfig: updated configuration"));
}

/// Kubelet restarts: each one gets exactly one new registration whose
/// first message lists the real devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_restarts_reregister_once() {
    let node = Node::new();
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let mut agent = node.spawn_agent(&[]);
    first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first");

    let mut times = Vec::new();
    for restart in 1..=20 {
        let before = Instant::now();
        kubelet.restart().await.expect("restart");
        let registration = kubelet.wait_registration(BLUE, restart, WAIT).await;
        let registration =
            registration.unwrap_or_else(|| panic!("no Register after restart {restart}"));
        times.push(registration.at.duration_since(before));
        let first = first_message_of_new_stream(&kubelet, BLUE, restart).await;
        let first = first.unwrap_or_else(|| {
            let streams: Vec<String> = kubelet
                .recorded()
                .streams_of(BLUE)
                .iter()
                .map(|s| format!("{} msgs={} end={:?}", s.id, s.messages.len(), s.ended))
                .collect();
            panic!(
                "no stream after restart {restart}: {streams:#?}\n{}",
                agent.log_text()
            )
        });
        assert_eq!(
            health(&first),
            all_healthy(&["apqn-1-5-0", "apqn-2-5-0"]),
            "restart {restart}"
        );
        assert!(agent.alive(), "agent exited after restart {restart}");
        assert_eq!(
            kubelet.recorded().accepted(BLUE).len(),
            restart + 1,
            "restart {restart}"
        );
    }
    pause(Duration::from_secs(2)).await;
    assert_eq!(kubelet.recorded().registrations_of(BLUE).len(), 21);
    assert!(agent.alive());
    let errors = agent
        .log_text()
        .lines()
        .filter(|line| line.contains("ERROR"))
        .count();
    assert!(errors <= 20, "{errors} error lines for 20 restarts");

    let millis: Vec<u128> = times.iter().map(Duration::as_millis).collect();
    println!("re-registration after kubelet restart (ms): {millis:?}");
    println!("max {} ms", millis.iter().max().copied().unwrap_or(0));
}

/// The kubelet ends the stream without restarting: the agent registers
/// again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_end_reregisters() {
    let node = Node::new();
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let agent = node.spawn_agent(&[]);
    first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first");

    let closed = Instant::now();
    kubelet.close_stream(BLUE).await;
    let registration = kubelet
        .wait_registration(BLUE, 1, WAIT)
        .await
        .expect("new Register");
    println!(
        "re-registration after stream end took {} ms",
        registration.at.duration_since(closed).as_millis()
    );
    let first = first_message_of_new_stream(&kubelet, BLUE, 1)
        .await
        .expect("new stream");
    assert_eq!(health(&first), all_healthy(&["apqn-1-5-0", "apqn-2-5-0"]));
    assert!(agent
        .log_text()
        .contains("kubelet ended the ListAndWatch stream, registering again"));
    pause(Duration::from_secs(2)).await;
    assert_eq!(kubelet.recorded().registrations_of(BLUE).len(), 2);
}

/// The kubelet is absent at start: the agent waits and registers as
/// soon as `kubelet.sock` appears, with the real list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_kubelet_gets_real_list() {
    let node = Node::new();
    let mut agent = node.spawn_agent(&[]);
    pause(Duration::from_secs(3)).await;
    assert!(agent.alive(), "agent exited without a kubelet");

    let appeared = Instant::now();
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let registration = kubelet
        .wait_registration(BLUE, 0, WAIT)
        .await
        .expect("Register");
    println!(
        "registration {} ms after kubelet.sock appeared",
        registration.at.duration_since(appeared).as_millis()
    );
    let first = first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first");
    assert_eq!(health(&first), all_healthy(&["apqn-1-5-0", "apqn-2-5-0"]));
    assert_eq!(kubelet.recorded().registrations_of(BLUE).len(), 1);
}

/// Rejected registrations are retried with back-off on one socket; a
/// removed set takes its socket with it and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_registrations_leave_one_socket() {
    let node = Node::new();
    std::fs::write(node.plugin_dir().join("other.sock"), "").expect("foreign file");
    std::fs::write(node.plugin_dir().join("cex-blue.sock.bak"), "").expect("foreign file");
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    kubelet.reject_next_registrations(2);
    let _agent = node.spawn_agent(&[]);

    let accepted = kubelet
        .wait_registration(BLUE, 0, WAIT)
        .await
        .expect("third Register");
    let calls = kubelet
        .recorded()
        .registrations_of(BLUE)
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(calls.len(), 3);
    assert!(!calls[0].accepted);
    assert!(!calls[1].accepted);
    assert!(calls[2].accepted);
    for pair in calls.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(gap >= Duration::from_millis(450), "retry after {gap:?}");
    }
    println!(
        "registration accepted {} ms after the first attempt",
        accepted.at.duration_since(calls[0].at).as_millis()
    );
    let sockets: Vec<String> = node
        .plugin_dir_files()
        .into_iter()
        .filter(|name| name.starts_with("cex-blue"))
        .collect();
    assert_eq!(sockets, ["cex-blue.sock", "cex-blue.sock.bak"]);

    node.write_config(r#"{"cryptoconfigsets":[]}"#);
    let socket = node.plugin_dir().join("cex-blue.sock");
    let gone = wait_until(|| {
        let recorded = kubelet.recorded();
        let ended = recorded
            .streams_of(BLUE)
            .iter()
            .all(|stream| stream.ended.is_some());
        ended && !exists(&socket)
    })
    .await;
    assert!(gone, "removed set kept its socket or stream");
    assert_eq!(
        node.plugin_dir_files(),
        ["cex-blue.sock.bak", "kubelet.sock", "other.sock"]
    );
}

/// Deleting our socket three times gives one registration each, no busy
/// loop, and Allocate still reaches the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_deletions_cause_no_busy_loop() {
    let node = Node::new();
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let mut agent = node.spawn_agent(&[]);
    first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first");

    let window = Instant::now();
    let cpu_before = agent.cpu_time();
    let socket = node.plugin_dir().join("cex-blue.sock");
    for deletion in 1..=3 {
        let deleted = Instant::now();
        std::fs::remove_file(&socket).expect("delete plug-in socket");
        let registration = kubelet.wait_registration(BLUE, deletion, WAIT).await;
        let registration =
            registration.unwrap_or_else(|| panic!("no Register after deletion {deletion}"));
        println!(
            "re-registration after socket deletion {deletion}: {} ms",
            registration.at.duration_since(deleted).as_millis()
        );
        pause(Duration::from_secs(5)).await;
    }
    let remaining = Duration::from_secs(30).saturating_sub(window.elapsed());
    pause(remaining).await;
    let cpu = agent.cpu_time().saturating_sub(cpu_before);
    let elapsed = window.elapsed();
    let registrations = kubelet.recorded().registrations_of(BLUE).len() - 1;
    println!(
        "{registrations} registrations in {} ms, agent CPU {} ms",
        millis_since(window),
        cpu.as_millis()
    );
    assert!(
        (3..=5).contains(&registrations),
        "{registrations} registrations"
    );
    assert!(cpu < elapsed / 20, "agent used {cpu:?} CPU in {elapsed:?}");
    assert!(agent.alive());

    let kernel = FakeKernel::new(node.root.path()).expect("fake kernel");
    let _running = kernel.start().expect("fake kernel runs");
    let ids = vec![vec!["apqn-1-5-0".to_string()]];
    let response = kubelet
        .allocate(BLUE, ids)
        .await
        .expect("Allocate succeeds");
    assert_eq!(response.container_responses.len(), 1);
    let devices = &response.container_responses[0].devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].container_path, "/dev/z90crypt");
    assert!(
        devices[0].host_path.ends_with("/dev/zcrypt-apqn-1-5-0"),
        "{}",
        devices[0].host_path
    );
}

/// SIGTERM stops the servers, removes our sockets and exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_removes_own_sockets() {
    let node = Node::new();
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let mut agent = node.spawn_agent(&[]);
    first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first");
    assert!(exists(&node.plugin_dir().join("cex-blue.sock")));

    let code = tokio::task::spawn_blocking(move || {
        let code = agent.terminate();
        (agent, code)
    })
    .await
    .expect("terminate task");
    assert_eq!(code.1, Some(0));
    assert_eq!(node.plugin_dir_files(), ["kubelet.sock"]);
    let ended = kubelet
        .wait_for(WAIT, |recorded| {
            recorded
                .streams_of(BLUE)
                .iter()
                .all(|s| s.ended.is_some())
                .then_some(())
        })
        .await;
    assert!(ended.is_some(), "stream still open after the agent stopped");
}
