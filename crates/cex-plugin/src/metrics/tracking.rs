//! Follows the agent's state channels to count what a scrape alone cannot
//! see: config changes, the sets served (so their event series start at
//! 0), and project mismatches as they appear.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::SystemTime;

use cex_config::CryptoConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Metrics;
use crate::agent::Snapshots;
use crate::surveillance::{Holder, PodUsage, SetIndex};

/// The channels the trackers follow.
pub(crate) struct Tracked {
    pub(crate) config: watch::Receiver<Option<Arc<CryptoConfig>>>,
    pub(crate) snapshots: watch::Receiver<Arc<Snapshots>>,
    pub(crate) usage: watch::Receiver<Arc<PodUsage>>,
    pub(crate) machine_id: String,
}

/// Runs the trackers until `cancel` fires or the agent's channels close.
pub(crate) async fn run_trackers(metrics: Metrics, tracked: Tracked, cancel: CancellationToken) {
    let Tracked {
        mut config,
        mut snapshots,
        mut usage,
        machine_id,
    } = tracked;
    let mut mismatches = MismatchTracker::default();
    touch_sets(&metrics, &snapshots.borrow_and_update());
    config.borrow_and_update();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                config.borrow_and_update();
                metrics.observe_config_change(SystemTime::now());
            }
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                touch_sets(&metrics, &snapshots.borrow_and_update());
            }
            changed = usage.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = Arc::clone(&usage.borrow_and_update());
                let index = SetIndex::new(config.borrow().as_deref(), &machine_id);
                mismatches.update(&current, &index, &metrics);
            }
        }
    }
}

fn touch_sets(metrics: &Metrics, snapshots: &Snapshots) {
    for set in snapshots.keys() {
        metrics.touch_set(set);
    }
}

/// The mismatches of the previous pod-resources `List`, so that each is
/// counted once when it appears, as the pod lister logs it.
#[derive(Debug, Default)]
struct MismatchTracker {
    previous: BTreeSet<Holder>,
}

impl MismatchTracker {
    fn update(&mut self, usage: &PodUsage, index: &SetIndex, metrics: &Metrics) {
        let mut current = BTreeSet::new();
        for holder in &usage.holders {
            let Some((set, project)) = index.set_of(holder) else {
                continue;
            };
            if holder.namespace == project {
                continue;
            }
            if !self.previous.contains(holder) {
                metrics.count_mismatch(set);
            }
            current.insert(holder.clone());
        }
        self.previous = current;
    }
}
