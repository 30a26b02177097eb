//! The log lines operators grep for keep their exact wording in the text
//! and the JSON format, and the JSON lines carry the set, device, pod and
//! namespace as fields. Runs the agent binary through a project mismatch
//! and every kind of config change.

mod metrics_support;

use cex_sim::kubelet::{FakeKubelet, FakePod, PodResources};
use metrics_support::{wait_for, MetricsAgent, SimRoot, BLUE_CONFIG, WAIT};
use serde_json::Value;

const BLUE: &str = "cex.s390.ibm.com/blue";

const MISMATCH: &str =
    "PodLister: Container main in namespace red uses a CEX resource apqn-0-41-0 marked for project blue!";
const UPDATED: &str = "CryptoConfig: updated configuration";
const PARSE_ERROR: &str = "CryptoConfig: Error parsing config file";
const VERIFY_ERROR: &str = "Config Watcher: failed to verify new configuration!";
const OPEN_ERROR: &str = "CryptoConfig: Can't open config file";

/// The blue set plus set red, a valid change.
const TWO_SETS: &str = r#"{"cryptoconfigsets":[
  {"setname":"blue","project":"blue","apqns":[{"adapter":0,"domain":41}]},
  {"setname":"red","project":"red","apqns":[{"adapter":4,"domain":41}]}]}"#;

/// Two sets sharing one APQN, which fails verification.
const SHARED_APQN: &str = r#"{"cryptoconfigsets":[
  {"setname":"blue","project":"blue","apqns":[{"adapter":0,"domain":41}]},
  {"setname":"red","project":"red","apqns":[{"adapter":0,"domain":41}]}]}"#;

/// Waits until a log line contains `text`.
fn wait_for_line(agent: &MetricsAgent, text: &str) -> String {
    wait_for(|| {
        agent
            .log_text()
            .lines()
            .find(|line| line.contains(text))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no log line with {text:?}:\n{}", agent.log_text()))
}

/// Drives the agent through a mismatch and the four config outcomes,
/// returning the agent so its log can be checked.
async fn run_scenario(sim: &SimRoot, extra: &[&str]) -> MetricsAgent {
    let pods = PodResources::start(sim.pod_resources_socket())
        .await
        .expect("pod-resources");
    let kubelet = FakeKubelet::start(sim.plugin_dir()).await.expect("kubelet");
    let agent = sim.spawn_agent("node-l", extra);
    kubelet
        .wait_registration(BLUE, 0, WAIT)
        .await
        .expect("Register for blue");
    kubelet
        .allocate(BLUE, vec![vec!["apqn-0-41-0".to_string()]])
        .await
        .expect("allocation");
    let mut pod = FakePod::with_devices("p1", "red", BLUE, &["apqn-0-41-0"]);
    pod.containers[0].name = "main".to_string();
    pods.set_pods(vec![pod]);
    wait_for_line(&agent, MISMATCH);

    sim.write_config(TWO_SETS);
    wait_for_line(&agent, UPDATED);
    sim.write_config("{\"cryptoconfigsets\": [");
    wait_for_line(&agent, PARSE_ERROR);
    sim.write_config(SHARED_APQN);
    wait_for_line(&agent, VERIFY_ERROR);
    std::fs::remove_file(sim.config_file()).expect("remove config");
    wait_for_line(&agent, OPEN_ERROR);
    pods.stop().await;
    agent
}

/// Returns the message of a JSON log event, at the top or in `fields`.
fn message(event: &Value) -> Option<&str> {
    event["fields"]["message"]
        .as_str()
        .or_else(|| event["message"].as_str())
}

/// Returns field `name` of a JSON log event, from the event or its spans.
fn field<'a>(event: &'a Value, name: &str) -> Option<&'a str> {
    event["fields"][name]
        .as_str()
        .or_else(|| event[name].as_str())
        .or_else(|| event["span"][name].as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_keep_spec_lines() {
    let sim = SimRoot::new(BLUE_CONFIG);
    let agent = run_scenario(&sim, &["--log-format", "json"]).await;
    let text = agent.log_text();
    let events: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line:?}")))
        .collect();
    let find = |wanted: &str| {
        events
            .iter()
            .find(|event| message(event).is_some_and(|text| text.starts_with(wanted)))
            .unwrap_or_else(|| panic!("no message starting with {wanted:?}:\n{text}"))
    };
    for line in [UPDATED, PARSE_ERROR, VERIFY_ERROR, OPEN_ERROR] {
        find(line);
    }

    let mismatch = find(MISMATCH);
    assert_eq!(message(mismatch), Some(MISMATCH));
    assert_eq!(field(mismatch, "pod"), Some("p1"));
    assert_eq!(field(mismatch, "namespace"), Some("red"));
    assert_eq!(field(mismatch, "set"), Some("blue"));
    assert_eq!(field(mismatch, "device"), Some("apqn-0-41-0"));

    let allocation = find("Plugin['blue']: Allocate: device apqn-0-41-0");
    assert_eq!(field(allocation, "set"), Some("blue"));
    assert_eq!(field(allocation, "device"), Some("apqn-0-41-0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn text_logs_keep_spec_lines() {
    let sim = SimRoot::new(BLUE_CONFIG);
    let agent = run_scenario(&sim, &[]).await;
    let text = agent.log_text();
    for line in [MISMATCH, UPDATED, PARSE_ERROR, VERIFY_ERROR, OPEN_ERROR] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    assert!(
        text.lines().all(|line| !line.trim_start().starts_with('{')),
        "JSON line in the text format:\n{text}"
    );
}
