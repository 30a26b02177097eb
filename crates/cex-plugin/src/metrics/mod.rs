//! Prometheus metrics, liveness and readiness of the node agent.
//!
//! [`Metrics`] keeps the figures only an event can produce: Allocate
//! requests with their latency and errors, AP bus scans, config changes
//! and project mismatches as they appear. Everything else is read from the
//! agent's state at scrape time by [`collector`]: the devices each set
//! announces, the devices in use according to the pod lister, the
//! registration counters, the zcrypt nodes and shadow dirs on disk and the
//! health of each APQN.
//!
//! [`server`] serves `/metrics` in the Prometheus text format 0.0.4, or in
//! OpenMetrics 1.0 when the scrape's `Accept` header asks for
//! `application/openmetrics-text`, plus `/healthz` and `/readyz`, on
//! `METRICS_LISTEN`. Every series carries `node` (`NODENAME`); the per-set
//! ones also carry `setname`. The reference product's names are kept:
//! `cex_plugin_plugindevs_available`, `cex_plugin_plugindevs_used` and
//! `cex_plugin_request_counter`.

mod collector;
mod probes;
mod server;
mod tracking;

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tonic::Code;

pub use collector::Sources;
pub use probes::{Liveness, Probes, Readiness};
pub use server::{listen, MetricsServer, ServeError};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentHandles;

/// Labels of a per-set series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub(crate) struct SetLabels {
    pub(crate) setname: String,
}

impl SetLabels {
    pub(crate) fn new(set: &str) -> Self {
        SetLabels {
            setname: set.to_string(),
        }
    }
}

/// Labels of a failed Allocate request: the set and the gRPC status code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    setname: String,
    kind: String,
}

/// Allocate latency buckets: 1 ms doubling up to about 8 s, because
/// creating a zcrypt node waits for the kernel's udev event.
fn allocation_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// AP bus scan duration buckets: 0.5 ms doubling up to about 2 s.
fn scan_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 13))
}

/// A counter exposed under a name without the `_total` suffix.
///
/// OpenMetrics requires `_total` on counter samples, so a suffix-less
/// counter such as the reference product's `cex_plugin_request_counter`
/// can only be exposed untyped (`unknown` in OpenMetrics). The value only
/// ever goes up, so `rate()` and `increase()` work on it as on a counter.
#[derive(Debug, Clone, Default)]
struct SuffixlessCounter(Family<SetLabels, Gauge>);

impl EncodeMetric for SuffixlessCounter {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

/// The event-driven metrics of one agent. Clones share the same figures.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Families>,
}

#[derive(Debug)]
struct Families {
    node: String,
    requests: SuffixlessCounter,
    allocation_seconds: Family<SetLabels, Histogram>,
    allocation_errors: Family<ErrorLabels, Counter>,
    scans: ScanMetrics,
    config_changes: Counter,
    config_changed_at: Gauge<f64, AtomicU64>,
    mismatches: Family<SetLabels, Counter>,
    /// Sets with a request counter, so that a set without requests yet
    /// still shows 0.
    known_sets: Mutex<BTreeSet<String>>,
}

/// The AP bus scan figures, handed to the scanner.
#[derive(Debug, Clone)]
pub struct ScanMetrics {
    scans: Counter,
    seconds: Histogram,
    problems: Gauge,
    bus_present: Gauge,
}

impl ScanMetrics {
    fn new() -> Self {
        ScanMetrics {
            scans: Counter::default(),
            seconds: scan_histogram(),
            problems: Gauge::default(),
            bus_present: Gauge::default(),
        }
    }

    /// Records one finished scan: its duration, whether the AP devices
    /// directory existed and how many entries it skipped as unreadable.
    pub fn observe(&self, duration: Duration, bus_present: bool, problems: usize) {
        self.scans.inc();
        self.seconds.observe(duration.as_secs_f64());
        self.bus_present.set(i64::from(bus_present));
        self.problems
            .set(i64::try_from(problems).unwrap_or(i64::MAX));
    }
}

impl Metrics {
    /// Creates the metrics of the agent on node `node` (`NODENAME`).
    pub fn new(node: &str) -> Self {
        let families = Families {
            node: node.to_string(),
            requests: SuffixlessCounter::default(),
            allocation_seconds: Family::new_with_constructor(allocation_histogram),
            allocation_errors: Family::default(),
            scans: ScanMetrics::new(),
            config_changes: Counter::default(),
            config_changed_at: Gauge::default(),
            mismatches: Family::default(),
            known_sets: Mutex::new(BTreeSet::new()),
        };
        families
            .config_changed_at
            .set(unix_seconds(SystemTime::now()));
        Metrics {
            inner: Arc::new(families),
        }
    }

    /// Returns the scan figures, for the AP bus scanner.
    pub fn scans(&self) -> ScanMetrics {
        self.inner.scans.clone()
    }

    /// Records one Allocate request of `set`: its latency and, when it
    /// failed, the gRPC status code as the error kind.
    pub fn observe_allocation(&self, set: &str, duration: Duration, error: Option<Code>) {
        let labels = SetLabels::new(set);
        self.inner.requests.0.get_or_create(&labels).inc();
        self.inner
            .allocation_seconds
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
        if let Some(code) = error {
            let labels = ErrorLabels {
                setname: set.to_string(),
                kind: code_label(code).to_string(),
            };
            self.inner.allocation_errors.get_or_create(&labels).inc();
        }
    }

    /// Makes the per-set event series of `set` show 0 before its first
    /// event, so `rate()` and the alert rules see the series start at 0.
    pub(crate) fn touch_set(&self, set: &str) {
        let mut known = self
            .inner
            .known_sets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if known.insert(set.to_string()) {
            let labels = SetLabels::new(set);
            drop(self.inner.requests.0.get_or_create(&labels));
            drop(self.inner.mismatches.get_or_create(&labels));
        }
    }

    /// Records a config change seen at `at`.
    pub(crate) fn observe_config_change(&self, at: SystemTime) {
        self.inner.config_changes.inc();
        self.inner.config_changed_at.set(unix_seconds(at));
    }

    /// Counts a container newly found using a device of `set` from a
    /// namespace other than the set's project.
    pub(crate) fn count_mismatch(&self, set: &str) {
        self.inner
            .mismatches
            .get_or_create(&SetLabels::new(set))
            .inc();
    }

    /// Builds the registry served on `/metrics`: the event-driven figures
    /// plus a collector reading `sources` at each scrape. Every series
    /// carries `node`.
    pub fn registry(&self, sources: Sources) -> Registry {
        let node = (
            std::borrow::Cow::Borrowed("node"),
            std::borrow::Cow::Owned(self.inner.node.clone()),
        );
        let mut registry = Registry::with_labels(std::iter::once(node));
        self.register_events(&mut registry);
        registry.register(
            "cex_plugin_build",
            "Version of the running agent",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(collector::StateCollector::new(sources)));
        registry
    }

    fn register_events(&self, registry: &mut Registry) {
        let families = &self.inner;
        registry.register(
            "cex_plugin_request_counter",
            "Allocate requests received per set since the agent started",
            families.requests.clone(),
        );
        registry.register(
            "cex_plugin_allocation_duration_seconds",
            "Time to serve one Allocate request, failed ones included",
            families.allocation_seconds.clone(),
        );
        registry.register(
            "cex_plugin_allocation_errors",
            "Allocate requests the agent failed, by gRPC status code",
            families.allocation_errors.clone(),
        );
        registry.register(
            "cex_plugin_project_mismatches",
            "Containers found holding a device of the set from a namespace other than its project",
            families.mismatches.clone(),
        );
        registry.register(
            "cex_plugin_config_changes",
            "Changes of the configuration in use, to a new config or to none",
            families.config_changes.clone(),
        );
        registry.register(
            "cex_plugin_config_last_change_timestamp_seconds",
            "Unix time of the last change of the configuration in use, or of the start",
            families.config_changed_at.clone(),
        );
        self.register_scans(registry);
    }

    fn register_scans(&self, registry: &mut Registry) {
        let scans = &self.inner.scans;
        registry.register(
            "cex_plugin_ap_bus_scans",
            "AP bus scans since the agent started",
            scans.scans.clone(),
        );
        registry.register(
            "cex_plugin_ap_bus_scan_duration_seconds",
            "Time to scan the AP bus once",
            scans.seconds.clone(),
        );
        registry.register(
            "cex_plugin_ap_bus_scan_problems",
            "Entries the last AP bus scan skipped as unreadable or malformed",
            scans.problems.clone(),
        );
        registry.register(
            "cex_plugin_ap_bus_present",
            "1 when the last scan found the AP devices directory, else 0",
            scans.bus_present.clone(),
        );
    }
}

/// The metrics listener and the trackers behind the event-driven figures,
/// run as one task of the agent.
pub struct MetricsTask {
    server: MetricsServer,
    metrics: Metrics,
    tracked: tracking::Tracked,
}

impl MetricsTask {
    /// Prepares the registry over `sources` and the probes over `handles`
    /// and `liveness`, to be served on `listener` (see [`listen`]).
    pub fn new(
        listener: TcpListener,
        handles: &AgentHandles,
        sources: Sources,
        liveness: Liveness,
    ) -> Self {
        let metrics = handles.metrics.clone();
        let tracked = tracking::Tracked {
            config: sources.config.clone(),
            snapshots: sources.snapshots.clone(),
            usage: sources.usage.clone(),
            machine_id: sources.machine_id.clone(),
        };
        let probes = Probes {
            liveness,
            readiness: Readiness::new(handles),
        };
        let server = MetricsServer::new(listener, metrics.registry(sources), probes);
        MetricsTask {
            server,
            metrics,
            tracked,
        }
    }

    /// Serves and tracks until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let trackers = tracking::run_trackers(self.metrics, self.tracked, cancel.clone());
        tokio::join!(self.server.run(cancel), trackers);
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs_f64())
        .unwrap_or(0.0)
}

/// Returns the gRPC status code in snake case, as in the gRPC docs.
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn render(metrics: &Metrics) -> String {
        let mut registry = Registry::default();
        metrics.register_events(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode");
        text
    }

    #[test]
    fn request_counter_has_no_total_suffix() {
        let metrics = Metrics::new("node-1");
        metrics.observe_allocation("blue", Duration::from_millis(3), None);
        metrics.observe_allocation(
            "blue",
            Duration::from_millis(5),
            Some(Code::InvalidArgument),
        );
        let text = render(&metrics);
        assert!(
            text.contains("cex_plugin_request_counter{setname=\"blue\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE cex_plugin_request_counter unknown\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "cex_plugin_allocation_errors_total{setname=\"blue\",kind=\"invalid_argument\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("cex_plugin_allocation_duration_seconds_count{setname=\"blue\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn touched_set_starts_at_zero() {
        let metrics = Metrics::new("node-1");
        metrics.touch_set("red");
        let text = render(&metrics);
        assert!(
            text.contains("cex_plugin_request_counter{setname=\"red\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("cex_plugin_project_mismatches_total{setname=\"red\"} 0\n"),
            "{text}"
        );
    }

    #[test]
    fn scan_observation_sets_gauges() {
        let metrics = Metrics::new("node-1");
        metrics.scans().observe(Duration::from_millis(2), true, 3);
        let text = render(&metrics);
        assert!(text.contains("cex_plugin_ap_bus_scans_total 1\n"), "{text}");
        assert!(
            text.contains("cex_plugin_ap_bus_scan_problems 3\n"),
            "{text}"
        );
        assert!(text.contains("cex_plugin_ap_bus_present 1\n"), "{text}");
    }

    #[test]
    fn code_labels_are_snake_case() {
        assert_eq!(code_label(Code::FailedPrecondition), "failed_precondition");
        assert_eq!(code_label(Code::NotFound), "not_found");
    }
}
