//! The AP bus rescan: every `APQN_CHECK_INTERVAL`, or at once when the
//! rescan trigger fires. Changes are logged once, not at every scan.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cex_ap::scan::{format_apqns, ScanProblem};
use cex_ap::Inventory;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::error_chain;
use crate::metrics::ScanMetrics;

/// Scans the AP devices directory and remembers what it logged last.
pub(crate) struct Scanner {
    devices_dir: PathBuf,
    /// Whether the last scan found the AP devices directory.
    bus_present: Option<bool>,
    problems: Vec<ScanProblem>,
    last: Option<Inventory>,
    metrics: Option<ScanMetrics>,
}

impl Scanner {
    pub(crate) fn new(devices_dir: PathBuf) -> Self {
        Self {
            devices_dir,
            bus_present: None,
            problems: Vec::new(),
            last: None,
            metrics: None,
        }
    }

    /// Also records each scan's duration and outcome in `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: ScanMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Scans once and logs what changed since the previous scan. A node
    /// without an AP bus yields an empty inventory.
    pub(crate) fn scan_and_log(&mut self) -> Inventory {
        let started = std::time::Instant::now();
        let inventory = match cex_ap::scan::scan(&self.devices_dir) {
            Ok(report) => {
                if self.bus_present != Some(true) && self.bus_present.is_some() {
                    tracing::info!(dir = %self.devices_dir.display(), "AP bus appeared");
                }
                self.bus_present = Some(true);
                self.log_problems(report.problems);
                report.inventory
            }
            Err(error) => {
                if self.bus_present != Some(false) {
                    tracing::warn!(
                        error = %error_chain(&error),
                        "no AP bus found, serving zero devices until it appears"
                    );
                }
                self.bus_present = Some(false);
                self.log_problems(Vec::new());
                Inventory::default()
            }
        };
        if self.last.as_ref() != Some(&inventory) {
            let apqns = format_apqns(&inventory);
            tracing::info!(
                count = inventory.queues.len(),
                "AP bus scan: {} APQNs found: {apqns}",
                inventory.queues.len()
            );
            self.last = Some(inventory.clone());
        }
        if let Some(metrics) = &self.metrics {
            let present = self.bus_present == Some(true);
            metrics.observe(started.elapsed(), present, self.problems.len());
        }
        inventory
    }

    fn log_problems(&mut self, problems: Vec<ScanProblem>) {
        if problems == self.problems {
            return;
        }
        for problem in &problems {
            tracing::warn!(path = %problem.path.display(), problem = %problem.kind, "AP bus scan skipped {problem}");
        }
        self.problems = problems;
    }
}

/// Rescans until cancelled and publishes changed inventories.
pub(crate) async fn run_rescans(
    mut scanner: Scanner,
    inventory: watch::Sender<Arc<Inventory>>,
    interval: Duration,
    trigger: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = trigger.notified() => tracing::debug!("AP bus rescan triggered"),
        }
        let task = tokio::task::spawn_blocking(move || {
            let scanned = scanner.scan_and_log();
            (scanner, scanned)
        });
        let (returned, scanned) = match task.await {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(%error, "AP bus scan task failed, rescans stop");
                return;
            }
        };
        scanner = returned;
        inventory.send_if_modified(|current| {
            if **current == scanned {
                return false;
            }
            *current = Arc::new(scanned);
            true
        });
    }
}
