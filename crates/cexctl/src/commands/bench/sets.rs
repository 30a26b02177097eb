//! Config sets of the benchmark nodes and waits on what the simulated
//! kubelet records about them.

use std::time::{Duration, Instant};

use cex_ap::Apqn;
use cex_sim::kubelet::{FakeKubelet, Message};
use cex_sim::machines::Machine;
use serde_json::json;

/// The resource name prefix of every set.
const RESOURCE_PREFIX: &str = "cex.s390.ibm.com/";

/// One config set to write.
#[derive(Debug, Clone)]
pub struct SetPlan {
    pub name: String,
    pub apqns: Vec<Apqn>,
    pub overcommit: u32,
}

impl SetPlan {
    /// Returns the kubelet resource name of the set.
    pub fn resource(&self) -> String {
        format!("{RESOURCE_PREFIX}{}", self.name)
    }

    /// Returns the number of devices the set announces.
    pub fn device_count(&self) -> usize {
        self.apqns.len() * self.overcommit as usize
    }
}

/// Returns the APQNs of `machine` whose card and queue read online.
pub fn online_apqns(machine: &Machine) -> Vec<Apqn> {
    machine
        .apqns()
        .into_iter()
        .filter(|(_, (card, queue))| card.reads_online() && queue.reads_online())
        .map(|(apqn, _)| apqn)
        .collect()
}

/// Spreads `apqns` round robin over `count` sets named `bench-<i>`.
pub fn spread_sets(apqns: &[Apqn], count: usize, overcommit: u32) -> Vec<SetPlan> {
    let mut sets: Vec<SetPlan> = (0..count)
        .map(|index| SetPlan {
            name: format!("bench-{index}"),
            apqns: Vec::new(),
            overcommit,
        })
        .collect();
    for (index, apqn) in apqns.iter().enumerate() {
        sets[index % count].apqns.push(*apqn);
    }
    sets
}

/// Renders `sets` as `cex_resources.json`.
pub fn config_json(sets: &[SetPlan]) -> String {
    let sets: Vec<serde_json::Value> = sets
        .iter()
        .map(|set| {
            let apqns: Vec<serde_json::Value> = set
                .apqns
                .iter()
                .map(|apqn| json!({ "adapter": apqn.adapter, "domain": apqn.domain }))
                .collect();
            json!({
                "setname": set.name,
                "project": set.name,
                "overcommit": set.overcommit,
                "livesysfs": 0,
                "apqns": apqns,
            })
        })
        .collect();
    json!({ "cryptoconfigsets": sets }).to_string()
}

/// Returns the number of accepted Register calls of each resource.
pub fn registration_counts(kubelet: &FakeKubelet, sets: &[SetPlan]) -> Vec<usize> {
    let recorded = kubelet.recorded();
    sets.iter()
        .map(|set| recorded.accepted(&set.resource()).len())
        .collect()
}

/// Waits until every set has an accepted Register call beyond its count
/// in `seen`, and returns the time of the first and of the last of them.
pub async fn wait_registered(
    kubelet: &FakeKubelet,
    sets: &[SetPlan],
    seen: &[usize],
    timeout: Duration,
) -> Option<(Instant, Instant)> {
    kubelet
        .wait_for(timeout, |recorded| {
            let mut times = Vec::new();
            for (set, &count) in sets.iter().zip(seen) {
                let registration = recorded.accepted(&set.resource()).into_iter().nth(count)?;
                times.push(registration.at);
            }
            Some((*times.iter().min()?, *times.iter().max()?))
        })
        .await
}

/// Returns the number of ListAndWatch messages of `resource` so far.
pub fn message_count(kubelet: &FakeKubelet, resource: &str) -> usize {
    kubelet.recorded().messages(resource).len()
}

/// Waits for a message of `resource` after the first `seen` ones that
/// satisfies `matches`.
pub async fn wait_message(
    kubelet: &FakeKubelet,
    resource: &str,
    seen: usize,
    timeout: Duration,
    mut matches: impl FnMut(&Message) -> bool,
) -> Option<Message> {
    kubelet
        .wait_for(timeout, |recorded| {
            recorded
                .messages(resource)
                .into_iter()
                .skip(seen)
                .find(|message| matches(message))
                .cloned()
        })
        .await
}
