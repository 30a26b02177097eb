//! End-to-end tests of config changes while the agent runs: plain
//! writes, ConfigMap updates by `..data` symlink swap, a deleted and
//! re-created file, a replaced directory, and configs that cannot be
//! read, parsed or verified. The re-read interval is 60 s, so the file
//! watch alone must bring each change to the kubelet.

mod agent_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_support::{
    all_healthy, exists, first_message_of_new_stream, health, pause, wait_until, Agent, Node,
    BASE_CONFIG, BLUE, WAIT,
};
use cex_sim::kubelet::{FakeKubelet, Message};

const RED: &str = "cex.s390.ibm.com/red";
const GREEN: &str = "cex.s390.ibm.com/green";

/// A re-read interval far beyond every wait in these tests.
const SLOW_RELOAD: (&str, &str) = ("CRYPTOCONFIG_CHECK_INTERVAL", "60");

/// Time for the watch to settle and a re-read to finish, for checks that
/// nothing happened.
const SETTLE: Duration = Duration::from_millis(1500);

const UPDATED: &str = "CryptoConfig: updated configuration";
const CANNOT_OPEN: &str = "CryptoConfig: Can't open config file";
const CANNOT_PARSE: &str = "CryptoConfig: Error parsing config file";
const NOT_VERIFIED: &str = "Config Watcher: failed to verify new configuration!";

/// BASE-CONFIG with overcommit 3 on `blue`.
const BLUE_OVERCOMMIT_3: &str = r#"{"cryptoconfigsets":[{"setname":"blue","project":"blue",
  "overcommit":3,"apqns":[{"adapter":1,"domain":5},{"adapter":2,"domain":5}]}]}"#;

/// BASE-CONFIG plus set `red` with APQN 3/5.
const WITH_RED: &str = r#"{"cryptoconfigsets":[
  {"setname":"blue","project":"blue","apqns":[{"adapter":1,"domain":5},{"adapter":2,"domain":5}]},
  {"setname":"red","project":"red","apqns":[{"adapter":3,"domain":5}]}]}"#;

/// [`WITH_RED`] with overcommit 2 on `red`.
const WITH_RED_TWICE: &str = r#"{"cryptoconfigsets":[
  {"setname":"blue","project":"blue","apqns":[{"adapter":1,"domain":5},{"adapter":2,"domain":5}]},
  {"setname":"red","project":"red","overcommit":2,"apqns":[{"adapter":3,"domain":5}]}]}"#;

/// Valid JSON whose set name is no valid Kubernetes name part.
const UNVERIFIABLE: &str = r#"{"cryptoconfigsets":[{"setname":"-blue-","project":"blue",
  "apqns":[{"adapter":1,"domain":5}]}]}"#;

fn occurrences(agent: &Agent, text: &str) -> usize {
    agent.log_text().matches(text).count()
}

fn error_lines(agent: &Agent) -> Vec<String> {
    agent
        .log_text()
        .lines()
        .filter(|line| line.contains("ERROR"))
        .map(str::to_string)
        .collect()
}

async fn wait_for_log(agent: &Agent, text: &str, count: usize) -> bool {
    wait_until(|| occurrences(agent, text) >= count).await
}

fn blue_messages(kubelet: &FakeKubelet) -> usize {
    kubelet.recorded().messages(BLUE).len()
}

/// Waits for a message of `resource` beyond the first `seen` that
/// satisfies `matches`, so a message sent before the call still counts.
async fn message_after(
    kubelet: &FakeKubelet,
    resource: &str,
    seen: usize,
    mut matches: impl FnMut(&Message) -> bool,
) -> Option<Message> {
    kubelet
        .wait_for(WAIT, |recorded| {
            recorded
                .messages(resource)
                .into_iter()
                .skip(seen)
                .find(|m| matches(m))
                .cloned()
        })
        .await
}

/// Starts the kubelet and the agent with a 60 s re-read interval, and
/// waits for blue's first list.
async fn start(node: &Node, extra: &[(&str, &str)]) -> (FakeKubelet, Agent) {
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let mut env = vec![SLOW_RELOAD];
    env.extend_from_slice(extra);
    let agent = node.spawn_agent(&env);
    let first = first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first blue list");
    assert_eq!(health(&first), all_healthy(&["apqn-1-5-0", "apqn-2-5-0"]));
    (kubelet, agent)
}

/// A config directory laid out as the kubelet's atomic writer lays out a
/// mounted ConfigMap: `..<timestamp>/cex_resources.json`, `..data`
/// pointing to it, and `cex_resources.json -> ..data/cex_resources.json`.
struct ConfigMapDir {
    dir: PathBuf,
    version: u32,
}

impl ConfigMapDir {
    fn create(dir: &Path, json: &str) -> Self {
        fs::create_dir_all(dir).expect("config dir");
        let mut config_map = ConfigMapDir {
            dir: dir.to_path_buf(),
            version: 0,
        };
        let data = config_map.write_data_dir(json);
        std::os::unix::fs::symlink(&data, dir.join("..data")).expect("..data");
        std::os::unix::fs::symlink("..data/cex_resources.json", dir.join("cex_resources.json"))
            .expect("file symlink");
        config_map
    }

    fn write_data_dir(&mut self, json: &str) -> String {
        self.version += 1;
        let name = format!("..2026_01_01_00_00_00.{}", self.version);
        fs::create_dir(self.dir.join(&name)).expect("data dir");
        fs::write(self.dir.join(&name).join("cex_resources.json"), json).expect("data file");
        name
    }

    /// Updates as the kubelet does: new data dir, `..data_tmp` symlink,
    /// rename over `..data`, delete the old data dir.
    fn update(&mut self, json: &str) {
        let old = fs::read_link(self.dir.join("..data")).expect("..data target");
        let new = self.write_data_dir(json);
        let temp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &temp).expect("..data_tmp");
        fs::rename(&temp, self.dir.join("..data")).expect("swap ..data");
        fs::remove_dir_all(self.dir.join(old)).expect("remove old data dir");
    }

    fn data_dirs(&self) -> usize {
        fs::read_dir(&self.dir)
            .expect("config dir")
            .filter(|entry| {
                let name = entry.as_ref().expect("entry").file_name();
                name.to_string_lossy().starts_with("..2026")
            })
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_write_changes_overcommit() {
    let node = Node::on_tmpfs();
    let (kubelet, agent) = start(&node, &[]).await;

    let written = Instant::now();
    fs::write(node.config_file(), BLUE_OVERCOMMIT_3).expect("in-place write");
    let six = kubelet
        .next_message(BLUE, WAIT, |m| m.devices.len() == 6)
        .await
        .expect("overcommit 3 gives six devices");
    println!(
        "config plain write to new device list: {} ms",
        six.at.duration_since(written).as_millis()
    );
    assert_eq!(six.healthy(), 6);
    assert_eq!(occurrences(&agent, UPDATED), 1);

    // The same bytes again: nothing to apply, nothing to re-send.
    let messages = blue_messages(&kubelet);
    fs::write(node.config_file(), BLUE_OVERCOMMIT_3).expect("same content");
    pause(SETTLE).await;
    assert_eq!(occurrences(&agent, UPDATED), 1, "unchanged config reloaded");
    assert_eq!(blue_messages(&kubelet), messages, "unchanged list re-sent");

    node.write_config(BASE_CONFIG);
    let two = kubelet
        .next_message(BLUE, WAIT, |m| m.devices.len() == 2)
        .await;
    assert!(two.is_some(), "write by rename not applied");
    assert_eq!(occurrences(&agent, UPDATED), 2);
    assert!(error_lines(&agent).is_empty(), "{:?}", error_lines(&agent));
}

/// A ConfigMap update that adds set `red`, done twice within 100 ms: red
/// registers, ends at the second update, and the swaps log no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_swaps_add_set() {
    let node = Node::on_tmpfs();
    node.add_card(3, "CEX8P");
    node.add_queue(3, 5, true);
    fs::remove_file(node.config_file()).expect("plain config file");
    let mut config_map = ConfigMapDir::create(&node.path("config"), BASE_CONFIG);
    let (kubelet, agent) = start(&node, &[]).await;

    let swapped = Instant::now();
    config_map.update(WITH_RED);
    pause(Duration::from_millis(30)).await;
    config_map.update(WITH_RED_TWICE);
    let registration = kubelet
        .wait_registration(RED, 0, WAIT)
        .await
        .expect("Register for red");
    let red_list = kubelet
        .wait_for(WAIT, |recorded| {
            let messages = recorded.messages(RED);
            let last = messages.last()?;
            (last.devices.len() == 2).then(|| (*last).clone())
        })
        .await
        .expect("red announces the second update's two devices");
    println!(
        "ConfigMap swap to Register of red: {} ms, to red's list: {} ms",
        registration.at.duration_since(swapped).as_millis(),
        red_list.at.duration_since(swapped).as_millis()
    );
    assert_eq!(
        health(&red_list),
        all_healthy(&["apqn-3-5-0", "apqn-3-5-1"])
    );
    assert_eq!(config_map.data_dirs(), 1);

    pause(SETTLE).await;
    let last_red = kubelet.recorded().messages(RED).last().cloned().cloned();
    assert_eq!(last_red.map(|m| m.ids()), Some(red_list.ids()));
    assert_eq!(
        blue_messages(&kubelet),
        1,
        "blue's unchanged list was re-sent"
    );
    assert!(error_lines(&agent).is_empty(), "{:?}", error_lines(&agent));
    assert_eq!(occurrences(&agent, CANNOT_OPEN), 0);
    let updates = occurrences(&agent, UPDATED);
    println!("two swaps within 100 ms gave {updates} configuration update(s)");
    assert!((1..=2).contains(&updates), "{updates} updates");

    // A swap to identical content: no reload, no message.
    let red_messages = kubelet.recorded().messages(RED).len();
    config_map.update(WITH_RED_TWICE);
    pause(SETTLE).await;
    assert_eq!(
        occurrences(&agent, UPDATED),
        updates,
        "identical swap reloaded"
    );
    assert_eq!(kubelet.recorded().messages(RED).len(), red_messages);
    assert_eq!(blue_messages(&kubelet), 1);
    assert!(error_lines(&agent).is_empty(), "{:?}", error_lines(&agent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_config_recreated() {
    let node = Node::on_tmpfs();
    let (kubelet, agent) = start(&node, &[]).await;

    fs::remove_file(node.config_file()).expect("delete config");
    assert!(wait_for_log(&agent, CANNOT_OPEN, 1).await, "no open error");
    let empty = message_after(&kubelet, BLUE, 1, |m| m.devices.is_empty()).await;
    assert!(empty.is_some(), "blue kept its devices without a config");
    assert!(exists(&node.plugin_dir().join("cex-blue.sock")));
    assert_eq!(kubelet.recorded().registrations_of(BLUE).len(), 1);

    let recreated = Instant::now();
    fs::write(node.config_file(), BASE_CONFIG).expect("recreate config");
    let back = kubelet
        .next_message(BLUE, WAIT, |m| m.healthy() == 2)
        .await
        .expect("devices back after re-creation");
    println!(
        "re-created config to device list: {} ms",
        back.at.duration_since(recreated).as_millis()
    );
    assert!(wait_for_log(&agent, UPDATED, 1).await);
    let ended = kubelet.recorded().streams_of(BLUE)[0].ended.clone();
    assert!(ended.is_none(), "stream ended while the config was missing");
}

/// Unparsable, then unverifiable, then valid: each logs its line, the set
/// offers nothing until the valid config arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configs_then_valid() {
    let node = Node::on_tmpfs();
    let (kubelet, agent) = start(&node, &[]).await;

    fs::write(node.config_file(), "{ not json").expect("invalid JSON");
    assert!(
        wait_for_log(&agent, CANNOT_PARSE, 1).await,
        "no parse error"
    );
    let empty = message_after(&kubelet, BLUE, 1, |m| m.devices.is_empty()).await;
    assert!(empty.is_some(), "blue kept its devices after a parse error");

    fs::write(node.config_file(), UNVERIFIABLE).expect("unverifiable config");
    assert!(
        wait_for_log(&agent, NOT_VERIFIED, 1).await,
        "no verify error"
    );
    assert_eq!(occurrences(&agent, UPDATED), 0);

    fs::write(node.config_file(), BASE_CONFIG).expect("valid config");
    let back = kubelet.next_message(BLUE, WAIT, |m| m.healthy() == 2).await;
    assert!(
        back.is_some(),
        "valid config did not bring the devices back"
    );
    assert_eq!(occurrences(&agent, UPDATED), 1);
    let lists: Vec<usize> = kubelet
        .recorded()
        .messages(BLUE)
        .iter()
        .map(|m| m.devices.len())
        .collect();
    assert_eq!(lists, [2, 0, 2]);
    assert_eq!(kubelet.recorded().registrations_of(BLUE).len(), 1);
}

/// With a 1 s re-read the error is logged again at every check until a
/// valid config arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_config_error_repeats() {
    let node = Node::on_tmpfs();
    let (kubelet, agent) = start(&node, &[("CRYPTOCONFIG_CHECK_INTERVAL", "1")]).await;

    fs::write(node.config_file(), UNVERIFIABLE).expect("unverifiable config");
    assert!(
        wait_for_log(&agent, NOT_VERIFIED, 3).await,
        "error not repeated"
    );
    let lists: Vec<usize> = kubelet
        .recorded()
        .messages(BLUE)
        .iter()
        .map(|m| m.devices.len())
        .collect();
    assert_eq!(lists, [2, 0], "the empty list is sent once");

    node.write_config(BASE_CONFIG);
    let back = kubelet.next_message(BLUE, WAIT, |m| m.healthy() == 2).await;
    assert!(back.is_some());
    assert!(wait_for_log(&agent, UPDATED, 1).await);
    let errors = occurrences(&agent, NOT_VERIFIED);
    pause(Duration::from_secs(2)).await;
    assert_eq!(
        occurrences(&agent, NOT_VERIFIED),
        errors,
        "error after recovery"
    );
}

/// Sets added, changed and removed at run time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_added_changed_removed() {
    let node = Node::on_tmpfs();
    let (kubelet, agent) = start(&node, &[]).await;

    node.write_config(
        r#"{"cryptoconfigsets":[
          {"setname":"blue","project":"blue","apqns":[{"adapter":1,"domain":5}]},
          {"setname":"green","project":"green","apqns":[{"adapter":2,"domain":5}]}]}"#,
    );
    let green = first_message_of_new_stream(&kubelet, GREEN, 0)
        .await
        .expect("green registered and served");
    assert_eq!(health(&green), all_healthy(&["apqn-2-5-0"]));
    let blue = message_after(&kubelet, BLUE, 1, |m| m.devices.len() == 1)
        .await
        .expect("blue re-announces its smaller list");
    assert_eq!(health(&blue), all_healthy(&["apqn-1-5-0"]));

    node.write_config(
        r#"{"cryptoconfigsets":[
          {"setname":"green","project":"green","apqns":[{"adapter":2,"domain":5},{"adapter":1,"domain":5}]}]}"#,
    );
    let green_seen = kubelet.recorded().messages(GREEN).len();
    let socket = node.plugin_dir().join("cex-blue.sock");
    let blue_gone = wait_until(|| {
        let recorded = kubelet.recorded();
        let ended = recorded.streams_of(BLUE).iter().all(|s| s.ended.is_some());
        ended && !exists(&socket)
    })
    .await;
    assert!(blue_gone, "removed set kept its socket or stream");
    let grown = message_after(&kubelet, GREEN, green_seen, |m| m.devices.len() == 2).await;
    assert!(grown.is_some(), "green did not take over APQN 1/5");
    assert!(exists(&node.plugin_dir().join("cex-green.sock")));
    assert_eq!(kubelet.recorded().registrations_of(GREEN).len(), 1);
    assert!(error_lines(&agent).is_empty(), "{:?}", error_lines(&agent));
}

/// The config directory itself is replaced by a rename; the watch
/// follows the new directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_directory_is_followed() {
    let node = Node::on_tmpfs();
    let (kubelet, agent) = start(&node, &[]).await;

    let fresh = node.path("config.new");
    fs::create_dir(&fresh).expect("new dir");
    fs::write(fresh.join("cex_resources.json"), BLUE_OVERCOMMIT_3).expect("new config");
    let replaced = Instant::now();
    fs::rename(node.path("config"), node.path("config.old")).expect("move old dir");
    fs::rename(&fresh, node.path("config")).expect("move new dir in");
    fs::remove_dir_all(node.path("config.old")).expect("remove old dir");
    let six = kubelet
        .next_message(BLUE, WAIT, |m| m.devices.len() == 6)
        .await
        .expect("replaced directory applied");
    println!(
        "replaced config directory to device list: {} ms",
        six.at.duration_since(replaced).as_millis()
    );

    // A later write inside the new directory is seen as well.
    fs::write(node.config_file(), BASE_CONFIG).expect("write in new dir");
    let two = kubelet
        .next_message(BLUE, WAIT, |m| m.devices.len() == 2)
        .await;
    assert!(two.is_some(), "write in the replaced directory not applied");
    assert_eq!(occurrences(&agent, UPDATED), 2);
    assert!(error_lines(&agent).is_empty(), "{:?}", error_lines(&agent));
}
