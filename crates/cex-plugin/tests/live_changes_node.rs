//! End-to-end tests of AP bus changes while the agent runs, on a
//! simulated node: unplug and plug, online and config state of queues
//! and cards, a device unhealthy at start that recovers, and cards
//! vanishing while a scan runs. A simulated sysfs tree sends no kernel
//! uevents, so the 1 s rescan drives every change here.

mod agent_support;

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_support::{all_healthy, first_message_of_new_stream, health, pause, Agent, Node, BLUE};
use cex_sim::kubelet::{FakeKubelet, Message};

const WAIT: Duration = agent_support::WAIT;

async fn start(node: &Node) -> (FakeKubelet, Agent, Message) {
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let agent = node.spawn_agent(&[
        ("APQN_CHECK_INTERVAL", "1"),
        ("CRYPTOCONFIG_CHECK_INTERVAL", "60"),
    ]);
    let first = first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first blue list");
    (kubelet, agent, first)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(id, health)| (id.to_string(), health.to_string()))
        .collect()
}

/// Applies `change` and waits for blue's next list equal to `expected`;
/// returns the time from the change to that list.
async fn change_and_expect(
    kubelet: &FakeKubelet,
    change: impl FnOnce(),
    expected: &[(&str, &str)],
) -> Duration {
    let expected = pairs(expected);
    let seen = kubelet.recorded().messages(BLUE).len();
    let changed = Instant::now();
    change();
    let message = kubelet
        .wait_for(WAIT, |recorded| {
            recorded
                .messages(BLUE)
                .into_iter()
                .skip(seen)
                .find(|m| health(m) == expected)
                .cloned()
        })
        .await;
    let message = message.unwrap_or_else(|| {
        let last = kubelet.recorded().messages(BLUE).last().map(|m| health(m));
        panic!("no list {expected:?}; last {last:?}")
    });
    message.at.duration_since(changed)
}

fn write_attribute(dir: &Path, name: &str, value: &str) {
    fs::write(dir.join(name), format!("{value}\n")).expect("attribute");
}

fn print_figures(label: &str, samples: &[Duration]) {
    let mut millis: Vec<u128> = samples.iter().map(Duration::as_millis).collect();
    millis.sort_unstable();
    let median = millis[millis.len() / 2];
    println!(
        "{label} at a 1 s rescan (ms): {millis:?}, min {}, median {median}, max {}",
        millis[0],
        millis[millis.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplug_and_plug_queue() {
    let node = Node::on_tmpfs();
    let (kubelet, _agent, _) = start(&node).await;
    let mut samples = Vec::new();

    for _ in 0..3 {
        let queue = node.queue_dir(2, 5);
        samples.push(
            change_and_expect(
                &kubelet,
                || fs::remove_dir_all(&queue).expect("unplug 02.0005"),
                &[("apqn-1-5-0", "Healthy")],
            )
            .await,
        );
        samples.push(
            change_and_expect(
                &kubelet,
                || node.add_queue(2, 5, true),
                &[("apqn-1-5-0", "Healthy"), ("apqn-2-5-0", "Healthy")],
            )
            .await,
        );
    }
    print_figures("sysfs unplug or plug to new device list", &samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_and_config_flip_health() {
    let node = Node::on_tmpfs();
    let (kubelet, _agent, _) = start(&node).await;
    let queue = node.queue_dir(2, 5);
    let card = node.card_dir(2);
    let one_down = [("apqn-1-5-0", "Healthy"), ("apqn-2-5-0", "Unhealthy")];
    let both_up = [("apqn-1-5-0", "Healthy"), ("apqn-2-5-0", "Healthy")];
    let mut samples = Vec::new();

    let steps: [(&Path, &str); 3] = [(&queue, "online"), (&queue, "config"), (&card, "config")];
    for (dir, name) in steps {
        let down = change_and_expect(&kubelet, || write_attribute(dir, name, "0"), &one_down);
        samples.push(down.await);
        let up = change_and_expect(&kubelet, || write_attribute(dir, name, "1"), &both_up);
        samples.push(up.await);
    }
    let card_off = change_and_expect(
        &kubelet,
        || write_attribute(&card, "online", "0"),
        &one_down,
    );
    samples.push(card_off.await);
    print_figures("sysfs state change to new device list", &samples);
}

/// A device unhealthy at start turns Healthy without a restart; a card
/// removed as a whole takes its devices off the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_at_start_recovers() {
    let node = Node::on_tmpfs();
    node.set_queue_online(2, 5, false);
    let (kubelet, agent, first) = start(&node).await;
    assert_eq!(
        health(&first),
        pairs(&[("apqn-1-5-0", "Healthy"), ("apqn-2-5-0", "Unhealthy")])
    );

    let both_up = [("apqn-1-5-0", "Healthy"), ("apqn-2-5-0", "Healthy")];
    change_and_expect(&kubelet, || node.set_queue_online(2, 5, true), &both_up).await;
    let card = node.card_dir(2);
    let remove_card = || fs::remove_dir_all(&card).expect("remove card02");
    change_and_expect(&kubelet, remove_card, &[("apqn-1-5-0", "Healthy")]).await;
    assert_eq!(kubelet.recorded().registrations_of(BLUE).len(), 1);
    drop(agent);
}

/// Rescans of an unchanged bus send no list and log nothing new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_rescans_send_nothing() {
    let node = Node::on_tmpfs();
    let (kubelet, agent, _) = start(&node).await;
    pause(Duration::from_secs(4)).await;

    assert_eq!(kubelet.recorded().messages(BLUE).len(), 1);
    let log = agent.log_text();
    assert_eq!(log.matches("AP bus scan:").count(), 1, "{log}");
    assert_eq!(
        log.matches("Plugin['blue']: 2 plug-in devices").count(),
        1,
        "{log}"
    );

    node.set_queue_online(2, 5, false);
    let one_down = [("apqn-1-5-0", "Healthy"), ("apqn-2-5-0", "Unhealthy")];
    change_and_expect(&kubelet, || {}, &one_down).await;
    pause(Duration::from_secs(3)).await;
    assert_eq!(kubelet.recorded().messages(BLUE).len(), 2);
    let log = agent.log_text();
    assert_eq!(log.matches("AP bus scan:").count(), 2, "{log}");
    assert_eq!(log.matches("re-announcing").count(), 1, "{log}");
}

/// Cards that come and go during the scans never cost the inventory of
/// the cards that stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cards_vanishing_mid_scan_keep_the_rest() {
    let node = Node::on_tmpfs();
    for adapter in 16..64 {
        node.add_card(adapter, "CEX8P");
        for domain in 0..8 {
            node.add_queue(adapter, domain, true);
        }
    }
    let (kubelet, agent, first) = start(&node).await;
    assert_eq!(health(&first), all_healthy(&["apqn-1-5-0", "apqn-2-5-0"]));

    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        let cards: Vec<_> = (16..64)
            .map(|adapter: u8| (node.card_dir(adapter), format!("{adapter:02x}.0001")))
            .collect();
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                // Errors are expected: the scanner may hold a directory.
                for (card, _) in &cards {
                    let _ = fs::remove_dir_all(card);
                }
                for (card, queue) in &cards {
                    let _ = fs::create_dir_all(card.join(queue));
                    let _ = fs::write(card.join("type"), "CEX8P\n");
                    let _ = fs::write(card.join("online"), "1\n");
                    let _ = fs::write(card.join(queue).join("online"), "1\n");
                }
                rounds += 1;
            }
            rounds
        })
    };
    pause(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = churn.join().expect("churn thread");

    let lists: Vec<Vec<(String, String)>> = kubelet
        .recorded()
        .messages(BLUE)
        .iter()
        .map(|m| health(m))
        .collect();
    assert_eq!(
        lists,
        [all_healthy(&["apqn-1-5-0", "apqn-2-5-0"])],
        "blue's list changed"
    );
    let log = agent.log_text();
    println!(
        "{rounds} unplug and plug rounds of 48 cards; scans skipped {} vanished entries",
        log.matches("vanished during the scan").count()
    );
    assert!(log.contains("AP bus scan:"), "{log}");
}
