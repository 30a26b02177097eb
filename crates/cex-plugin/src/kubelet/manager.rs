//! Starts a runner for every set in the snapshots and stops the runners
//! of sets that disappear, joining their tasks.

use std::collections::{BTreeMap, BTreeSet};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::runner::SetRunner;
use super::{DirWatcher, PluginContext};

struct RunningSet {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Serves every set of the snapshots until `cancel` fires, then stops
/// every server and removes its socket.
pub async fn run_plugin_manager(
    context: PluginContext,
    watcher: DirWatcher,
    cancel: CancellationToken,
) {
    let mut snapshots = context.snapshots.clone();
    let mut running: BTreeMap<String, RunningSet> = BTreeMap::new();
    loop {
        let wanted: BTreeSet<String> = snapshots.borrow_and_update().keys().cloned().collect();
        let removed: Vec<String> = running
            .keys()
            .filter(|name| !wanted.contains(*name))
            .cloned()
            .collect();
        for name in removed {
            tracing::info!(set = %name, "Plugin['{name}']: set removed from the configuration, stopping");
            if let Some(set) = running.remove(&name) {
                stop_set(&name, set).await;
            }
        }
        for name in wanted {
            if running.contains_key(&name) {
                continue;
            }
            let set_cancel = cancel.child_token();
            let runner = SetRunner {
                set: name.clone(),
                context: context.clone(),
                events: watcher.subscribe(),
                cancel: set_cancel.clone(),
            };
            let task = tokio::spawn(runner.run());
            running.insert(
                name,
                RunningSet {
                    cancel: set_cancel,
                    task,
                },
            );
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = snapshots.changed() => if changed.is_err() { break },
        }
    }
    for (name, set) in std::mem::take(&mut running) {
        stop_set(&name, set).await;
    }
}

async fn stop_set(name: &str, set: RunningSet) {
    set.cancel.cancel();
    if let Err(error) = set.task.await {
        tracing::error!(set = %name, %error, "Plugin['{name}']: runner task failed");
    }
}
