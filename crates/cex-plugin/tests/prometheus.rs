//! End-to-end test with a real Prometheus server: two agents on two
//! simulated nodes, scraped every second over loopback, with the
//! recording rules of docs/prometheus producing the cluster totals.
//! Skipped with a visible line when `prometheus` is not installed.

mod metrics_support;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use cex_sim::kubelet::FakeKubelet;
use metrics_support::{find_program, http_get, try_http_get, wait_for, SimRoot, BLUE_CONFIG, WAIT};

const BLUE: &str = "cex.s390.ibm.com/blue";

/// A Prometheus server process, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Returns a free loopback port. Prometheus cannot report the port it
/// bound, so one is picked here and released just before it starts.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address")
}

fn start_prometheus(program: &Path, dir: &Path, targets: &[SocketAddr]) -> Prometheus {
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/prometheus/recording.rules.yml");
    let targets: Vec<String> = targets.iter().map(|addr| format!("'{addr}'")).collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - '{}'\n\
         scrape_configs:\n  - job_name: cex-plugin\n    static_configs:\n      - targets: [{}]\n",
        rules.display(),
        targets.join(", ")
    );
    let config_file = dir.join("prometheus.yml");
    fs::write(&config_file, config).expect("prometheus config");
    let addr = free_port();
    let log = fs::File::create(dir.join("prometheus.log")).expect("log file");
    let child = Command::new(program)
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus starts");
    Prometheus { child, addr }
}

/// Runs an instant query and returns `(labels, value)` of each result.
fn query(prometheus: &Prometheus, expression: &str) -> Vec<(serde_json::Value, f64)> {
    let encoded: String = expression
        .bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect();
    let target = format!("/api/v1/query?query={encoded}");
    let Ok(response) = try_http_get(prometheus.addr, &target, None) else {
        return Vec::new();
    };
    if response.status != 200 {
        return Vec::new();
    }
    let body: serde_json::Value = serde_json::from_str(&response.body).expect("JSON answer");
    assert_eq!(body["status"], "success", "{body}");
    let results = body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    results
        .into_iter()
        .map(|result| {
            let value = result["value"][1]
                .as_str()
                .and_then(|text| text.parse().ok())
                .expect("sample value");
            (result["metric"].clone(), value)
        })
        .collect()
}

/// Waits until `expression` returns exactly one series of value `expected`.
fn wait_for_value(prometheus: &Prometheus, expression: &str, expected: f64) -> bool {
    wait_for(|| {
        let results = query(prometheus, expression);
        (results.len() == 1 && results[0].1 == expected).then_some(())
    })
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_records_cluster_totals() {
    let Some(program) = find_program("prometheus") else {
        println!("SKIPPED: prometheus not found");
        return;
    };
    let first = SimRoot::new(BLUE_CONFIG);
    let second = SimRoot::new(BLUE_CONFIG);
    let first_kubelet = FakeKubelet::start(first.plugin_dir())
        .await
        .expect("kubelet 1");
    let _second_kubelet = FakeKubelet::start(second.plugin_dir())
        .await
        .expect("kubelet 2");
    let agent_one = first.spawn_agent("node-1", &[]);
    let agent_two = second.spawn_agent("node-2", &[]);
    first_kubelet
        .wait_registration(BLUE, 0, WAIT)
        .await
        .expect("Register for blue");

    let dir = tempfile::tempdir().expect("temp dir");
    let prometheus = start_prometheus(&program, dir.path(), &[agent_one.addr(), agent_two.addr()]);

    let available = "cex_plugin_total_plugindevs_available{setname=\"blue\"}";
    assert!(
        wait_for_value(&prometheus, available, 4.0),
        "{available} never reached 4: {:?}\n{}",
        query(&prometheus, available),
        fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );
    let used = "cex_plugin_total_plugindevs_used{setname=\"blue\"}";
    assert!(
        wait_for_value(&prometheus, used, 0.0),
        "{:?}",
        query(&prometheus, used)
    );
    let requests = "cex_plugin_total_request_counter{setname=\"blue\"}";
    assert!(
        wait_for_value(&prometheus, requests, 0.0),
        "{:?}",
        query(&prometheus, requests)
    );

    first_kubelet
        .allocate(BLUE, vec![vec!["apqn-0-41-0".to_string()]])
        .await
        .expect("allocation");
    assert!(
        wait_for_value(&prometheus, requests, 1.0),
        "{requests} never reached 1: {:?}",
        query(&prometheus, requests)
    );
    let per_node = query(&prometheus, "cex_plugin_request_counter");
    let nodes: Vec<&str> = per_node
        .iter()
        .filter_map(|(labels, _)| labels["node"].as_str())
        .collect();
    assert!(nodes.contains(&"node-1"), "{per_node:?}");
    assert!(nodes.contains(&"node-2"), "{per_node:?}");
    let targets = http_get(prometheus.addr, "/api/v1/targets", None);
    assert_eq!(targets.status, 200);
    assert!(
        !targets.body.contains("\"health\":\"down\""),
        "{}",
        targets.body
    );
}
