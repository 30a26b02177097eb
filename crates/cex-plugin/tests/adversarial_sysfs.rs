//! Hostile AP bus sysfs content against the agent binary: junk and empty
//! attributes, missing files, very long lines, foreign names, and a card
//! unplugged and plugged in a tight loop while the simulated kubelet
//! watches.

mod adversarial_support;
mod agent_support;

use std::fs;
use std::time::{Duration, Instant};

use adversarial_support::{blue_healthy, started};
use agent_support::{health, pause, Node, BLUE};
use cex_sim::kubelet::FakeKubelet;

/// Returns the last list of blue as (id, health) pairs.
fn last_list(kubelet: &FakeKubelet) -> Vec<(String, String)> {
    kubelet
        .recorded()
        .messages(BLUE)
        .last()
        .map(|message| health(message))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_attributes_never_healthy() {
    let node = Node::new();
    let (kubelet, mut agent) = started(&node, &[]).await;
    let queue_online = node.queue_dir(2, 5).join("online");
    let card_type = node.card_dir(2).join("type");
    let long = "1".repeat(1 << 20);
    let cases: Vec<(&str, &std::path::Path, String)> = vec![
        ("online 2", &queue_online, "2\n".into()),
        ("online yes", &queue_online, "yes\n".into()),
        ("online empty", &queue_online, String::new()),
        ("online 1 MB", &queue_online, long.clone()),
        ("online NUL", &queue_online, "1\0\n".into()),
        ("type junk", &card_type, "CEXQQ\n".into()),
        ("type empty", &card_type, String::new()),
        ("type 1 MB", &card_type, long),
    ];

    let mut failures = Vec::new();

    for (what, path, value) in cases {
        let original = fs::read(path).expect("original");
        fs::write(path, &value).expect("junk");
        pause(Duration::from_millis(2500)).await;
        let list = last_list(&kubelet);
        println!("{what}: {list:?}");
        if list.contains(&("apqn-2-5-0".to_string(), "Healthy".to_string())) {
            failures.push(format!("{what}: apqn-2-5-0 still Healthy"));
        }
        assert!(agent.alive(), "{what}: agent exited:\n{}", agent.log_text());
        fs::write(path, original).expect("restore");
        let back = blue_healthy(&kubelet, 2).await;
        if !back {
            failures.push(format!("{what}: not Healthy again after repair"));
        }
    }
    let log = agent.log_text();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    println!("longest log line: {longest} bytes");
    assert!(longest < 4096, "a 1 MB attribute went into the log");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_files_and_foreign_names() {
    let node = Node::new();
    let (kubelet, mut agent) = started(&node, &[]).await;

    fs::remove_file(node.queue_dir(2, 5).join("online")).expect("rm online");

    pause(Duration::from_millis(2500)).await;
    println!("queue online missing: {:?}", last_list(&kubelet));
    assert!(!last_list(&kubelet).contains(&("apqn-2-5-0".into(), "Healthy".into())));
    node.set_queue_online(2, 5, true);
    // A dir named like a card inside a card, a file named like a card,
    // a queue dir of another adapter and a queue name with junk.
    fs::create_dir_all(node.card_dir(1).join("card03")).expect("card in card");
    fs::write(node.path("sys/devices/ap/card04"), "file").expect("file card");
    fs::create_dir_all(node.card_dir(1).join("02.0005")).expect("wrong card queue");
    fs::create_dir_all(node.card_dir(1).join("01.0005x")).expect("junk queue");
    fs::create_dir_all(node.path("sys/devices/ap/card1")).expect("short card name");

    let healthy = blue_healthy(&kubelet, 2).await;

    pause(Duration::from_millis(2500)).await;
    println!("with foreign entries: {:?}", last_list(&kubelet));
    assert!(healthy);
    assert_eq!(
        last_list(&kubelet),
        vec![
            ("apqn-1-5-0".to_string(), "Healthy".to_string()),
            ("apqn-2-5-0".to_string(), "Healthy".to_string())
        ]
    );
    assert!(agent.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_plug_tight_loop() {
    let node = Node::new();
    let (kubelet, mut agent) = started(&node, &[("APQN_CHECK_INTERVAL", "100ms")]).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut cycles = 0;
    while Instant::now() < deadline {
        let _ = fs::remove_dir_all(node.card_dir(2));
        node.add_card(2, "CEX7C");
        node.add_queue(2, 5, true);
        cycles += 1;
        if cycles % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let settled = blue_healthy(&kubelet, 2).await;
    let messages = kubelet.recorded().messages(BLUE).len();
    println!("{cycles} unplug/plug cycles, {messages} ListAndWatch messages");
    assert!(agent.alive(), "agent exited:\n{}", agent.log_text());

    for message in kubelet.recorded().messages(BLUE) {
        for device in &message.devices {
            assert!(
                device.id == "apqn-1-5-0" || device.id == "apqn-2-5-0",
                "announced {}",
                device.id
            );
        }
        assert!(
            message.health_of("apqn-1-5-0") == Some("Healthy"),
            "the untouched card01 flickered: {:?}",
            health(message)
        );
    }
    assert!(settled, "did not converge: {:?}", last_list(&kubelet));
}
