//! End-to-end tests of the agent's `/metrics`, `/healthz` and `/readyz`:
//! the real binary on a simulated node with the simulated kubelet,
//! scraped over loopback and parsed strictly.

mod metrics_support;

use cex_ap::Apqn;
use cex_sim::kubelet::{FakeKubelet, FakePod, PodResources};
use metrics_support::{
    http_get, parse, wait_for, Exposition, Format, MetricsAgent, SimRoot, BLUE_CONFIG, WAIT,
};

const BLUE: &str = "cex.s390.ibm.com/blue";

/// Scrapes until `check` holds for the exposition; panics with the last
/// exposition and `what` otherwise.
fn scrape_until(
    agent: &MetricsAgent,
    what: &str,
    check: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let found = wait_for(|| {
        let exposition = agent.scrape();
        check(&exposition).then_some(exposition)
    });
    found.unwrap_or_else(|| {
        panic!(
            "{what} never held; last scrape: {:#?}",
            agent.scrape().samples
        )
    })
}

fn blue(name: &str, agent: &Exposition) -> Option<f64> {
    agent.value(name, &[("setname", "blue")])
}

fn apqn_health(exposition: &Exposition, adapter: &str, domain: &str) -> Option<f64> {
    exposition.value(
        "cex_plugin_apqn_healthy",
        &[("adapter", adapter), ("domain", domain)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_follow_allocation_unplug_and_config() {
    let mut sim = SimRoot::new(BLUE_CONFIG);
    let pods = PodResources::start(sim.pod_resources_socket())
        .await
        .expect("pod-resources");
    let kubelet = FakeKubelet::start(sim.plugin_dir()).await.expect("kubelet");
    let agent = sim.spawn_agent("node-a", &[]);
    kubelet
        .wait_registration(BLUE, 0, WAIT)
        .await
        .expect("Register for blue");

    let first = scrape_until(&agent, "blue announced and registered", |e| {
        blue("cex_plugin_plugindevs_available", e) == Some(2.0)
            && blue("cex_plugin_registered", e) == Some(1.0)
    });
    assert_eq!(blue("cex_plugin_plugindevs_healthy", &first), Some(2.0));
    assert_eq!(blue("cex_plugin_plugindevs_used", &first), Some(0.0));
    assert_eq!(blue("cex_plugin_request_counter", &first), Some(0.0));
    assert_eq!(blue("cex_plugin_registrations_total", &first), Some(1.0));
    assert_eq!(first.value("cex_plugin_config_valid", &[]), Some(1.0));
    assert_eq!(apqn_health(&first, "0", "41"), Some(1.0));
    assert_eq!(apqn_health(&first, "4", "42"), Some(1.0));
    let series = first
        .samples
        .iter()
        .find(|sample| sample.name == "cex_plugin_request_counter")
        .expect("request counter");
    assert_eq!(
        series.labels.get("node").map(String::as_str),
        Some("node-a")
    );
    assert_eq!(
        first
            .types
            .get("cex_plugin_request_counter")
            .map(String::as_str),
        Some("untyped")
    );
    assert!(
        first.value("cex_plugin_build_info", &[]).is_some(),
        "{:?}",
        first.names()
    );

    // One allocation: the request counter and the latency count go up and
    // the zcrypt node and shadow dir show on disk.
    kubelet
        .allocate(BLUE, vec![vec!["apqn-0-41-0".to_string()]])
        .await
        .expect("allocation");
    let allocated = agent.scrape();
    assert_eq!(blue("cex_plugin_request_counter", &allocated), Some(1.0));
    assert_eq!(
        blue("cex_plugin_allocation_duration_seconds_count", &allocated),
        Some(1.0)
    );
    assert_eq!(allocated.value("cex_plugin_zcrypt_nodes", &[]), Some(1.0));
    assert_eq!(allocated.value("cex_plugin_shadow_dirs", &[]), Some(1.0));
    assert_eq!(
        allocated.value(
            "cex_plugin_apqn_allocated_devices",
            &[("adapter", "0"), ("domain", "41")]
        ),
        Some(1.0)
    );

    // A rejected request counts as a request and as an error of its kind.
    let rejected = kubelet
        .allocate(BLUE, vec![vec!["apqn-9-9-0".to_string()]])
        .await;
    assert!(rejected.is_err(), "{rejected:?}");
    let failed = agent.scrape();
    assert_eq!(blue("cex_plugin_request_counter", &failed), Some(2.0));
    assert_eq!(
        failed.value(
            "cex_plugin_allocation_errors_total",
            &[("setname", "blue"), ("kind", "invalid_argument")]
        ),
        Some(1.0)
    );

    // A pod of another namespace holds the device: used and a mismatch.
    pods.set_pods(vec![FakePod::with_devices(
        "p1",
        "red",
        BLUE,
        &["apqn-0-41-0"],
    )]);
    let held = scrape_until(&agent, "the device in use", |e| {
        blue("cex_plugin_plugindevs_used", e) == Some(1.0)
            && blue("cex_plugin_project_mismatches_total", e) == Some(1.0)
    });
    assert_eq!(
        blue("cex_plugin_project_mismatched_containers", &held),
        Some(1.0)
    );

    // Hot unplug of card 4: its device is no longer announced.
    sim.node.remove_card(4).expect("unplug card 4");
    let unplugged = scrape_until(&agent, "card 4 gone", |e| {
        blue("cex_plugin_plugindevs_available", e) == Some(1.0)
    });
    assert_eq!(apqn_health(&unplugged, "4", "41"), None);
    assert!(
        unplugged
            .value("cex_plugin_ap_bus_scans_total", &[])
            .unwrap_or(0.0)
            >= 2.0
    );

    // The held APQN goes offline: its health drops to 0 and the held
    // device counts as unusable.
    sim.node
        .set_queue_online(Apqn::new(0, 41), false)
        .expect("queue offline");
    let offline = scrape_until(&agent, "APQN 0/41 offline", |e| {
        apqn_health(e, "0", "41") == Some(0.0)
    });
    assert_eq!(blue("cex_plugin_plugindevs_healthy", &offline), Some(0.0));
    assert_eq!(
        blue("cex_plugin_plugindevs_used_unusable", &offline),
        Some(1.0)
    );
    sim.node
        .set_queue_online(Apqn::new(0, 41), true)
        .expect("queue online");
    scrape_until(&agent, "APQN 0/41 back online", |e| {
        apqn_health(e, "0", "41") == Some(1.0)
    });

    // A config change adds set red.
    sim.write_config(
        r#"{"cryptoconfigsets":[
          {"setname":"blue","project":"blue","apqns":[{"adapter":0,"domain":41},{"adapter":4,"domain":41}]},
          {"setname":"red","project":"red","apqns":[{"adapter":0,"domain":42}]}]}"#,
    );
    let changed = scrape_until(&agent, "set red announced", |e| {
        e.value("cex_plugin_plugindevs_available", &[("setname", "red")]) == Some(1.0)
    });
    assert!(
        changed
            .value("cex_plugin_config_changes_total", &[])
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(changed.value("cex_plugin_config_sets", &[]), Some(2.0));

    // A config that cannot be parsed leaves the agent without one.
    sim.write_config("{");
    scrape_until(&agent, "config invalid", |e| {
        e.value("cex_plugin_config_valid", &[]) == Some(0.0)
    });
    pods.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probes_follow_registration() {
    let sim = SimRoot::new(BLUE_CONFIG);
    let agent = sim.spawn_agent("node-b", &[]);

    let health = http_get(agent.addr(), "/healthz", None);
    assert_eq!(health.status, 200, "{}", health.body);
    let ready = http_get(agent.addr(), "/readyz", None);
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("blue"), "{}", ready.body);

    let _kubelet = FakeKubelet::start(sim.plugin_dir()).await.expect("kubelet");
    let became_ready = wait_for(|| {
        let ready = http_get(agent.addr(), "/readyz", None);
        (ready.status == 200).then_some(ready)
    });
    assert!(became_ready.is_some(), "never ready:\n{}", agent.log_text());
    let health = http_get(agent.addr(), "/healthz", None);
    assert_eq!(health.status, 200, "{}", health.body);

    let missing = http_get(agent.addr(), "/nothing", None);
    assert_eq!(missing.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn openmetrics_on_request() {
    let sim = SimRoot::new(BLUE_CONFIG);
    let agent = sim.spawn_agent("node-c", &[]);
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let response = http_get(agent.addr(), "/metrics", Some(accept));
    assert_eq!(response.status, 200);
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    let exposition = parse(&response.body, Format::OpenMetrics)
        .unwrap_or_else(|error| panic!("{error}\n{}", response.body));
    assert_eq!(
        exposition
            .types
            .get("cex_plugin_request_counter")
            .map(String::as_str),
        Some("unknown")
    );
    assert_eq!(
        exposition
            .types
            .get("cex_plugin_registrations")
            .map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        exposition.value("cex_plugin_plugindevs_available", &[("setname", "blue")]),
        Some(2.0)
    );
    assert!(exposition.value("cex_plugin_build_info", &[]).is_some());
}
