//! The steps of the demo and the state they share: this file contains the
//! set-up (step 1), the agent's start (step 2), the stop (step 9) and the
//! waits the steps share.

mod changes;
mod pod;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use cex_ap::DeviceId;
use cex_sim::kubelet::Recorded;
use serde_json::json;

use super::agent::{plugin_sockets, AgentProcess};
use super::report::{Outcome, Reporter};
use super::scene::Scene;
use super::sets::{config_json, DemoSet, DemoSets};
use super::DemoArgs;

/// How long a step waits for its expected state.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between two checks of files that have no change notification.
const POLL: Duration = Duration::from_millis(50);

/// Pod and container that receive the device.
const POD: &str = "demo-pod";

/// The log line of a namespace mismatch, up to the variable parts.
const MISMATCH_LOG: &str = "PodLister: Container";
const PARSE_ERROR_LOG: &str = "CryptoConfig: Error parsing config file";
const UPDATED_LOG: &str = "CryptoConfig: updated configuration";

/// The running demo.
pub struct Demo {
    scene: Scene,
    sets: DemoSets,
    agent: Option<AgentProcess>,
    /// The device the pod received in step 3.
    allocation: Option<DeviceId>,
}

impl Demo {
    /// Runs step 1: builds the scene. Returns `None` when it failed.
    pub async fn set_up(args: &DemoArgs, reporter: &mut Reporter) -> Option<Self> {
        let mut built = None;
        let title = format!("simulated node {}", args.machine);
        reporter
            .step(1, &title, async {
                let (demo, outcome) = Self::build(args).await?;
                built = Some(demo);
                Ok(outcome)
            })
            .await;
        built
    }

    async fn build(args: &DemoArgs) -> anyhow::Result<(Self, Outcome)> {
        let machine = cex_sim::machines::by_name(&args.machine).ok_or_else(|| {
            anyhow!(
                "expected a built-in machine, found no machine named {:?}; known machines: {}",
                args.machine,
                cex_sim::machines::names().join(", ")
            )
        })?;
        let sets = DemoSets::for_machine(&machine)?;
        let config = config_json(&[sets.first.clone(), sets.second.clone()]);
        let (machine_id, apqns) = (machine.machine_id(), machine.apqn_count());
        let scene = Scene::build(machine, args.keep.as_deref(), &config, args.verbose).await?;

        let mut outcome = Outcome::new(json!({
            "machine_id": machine_id,
            "apqns": apqns,
            "root": scene.root(),
            "sets": [set_facts(&sets.first), set_facts(&sets.second)],
        }));
        outcome.line(format!("machine id {machine_id}, {apqns} APQNs"));
        outcome.line(format!("node root {}", scene.root().display()));
        outcome.line(format!(
            "config {} -> ..data/cex_resources.json, ..data -> {}",
            scene.config.config_file().display(),
            scene.config.current_version().unwrap_or("?")
        ));
        for set in [&sets.first, &sets.second] {
            outcome.line(format!("  {}", describe_set(set)));
        }
        let demo = Self {
            scene,
            sets,
            agent: None,
            allocation: None,
        };
        Ok((demo, outcome))
    }

    /// Returns the root of the node tree.
    pub fn root(&self) -> &Path {
        self.scene.root()
    }

    /// Returns the agent's process id once it was started.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().and_then(AgentProcess::pid)
    }

    /// Runs steps 2 to 8 and stops at the first failure. Returns true when
    /// all passed.
    pub async fn run_steps(&mut self, reporter: &mut Reporter) -> bool {
        let unplug = self
            .sets
            .second
            .apqns
            .first()
            .map_or(0, |apqn| apqn.adapter);
        reporter
            .step(2, "agent started, sets registered", self.start_agent())
            .await
            && reporter
                .step(3, "pod allocates a device", self.allocate())
                .await
            && reporter
                .step(4, "pod in the wrong namespace", self.mismatch())
                .await
            && reporter
                .step(
                    5,
                    &format!("hot unplug and plug of card {unplug:02x}"),
                    self.hot_unplug(unplug),
                )
                .await
            && reporter
                .step(6, "overcommit 3 and a new set", self.grow())
                .await
            && reporter
                .step(7, "broken config, then repaired", self.break_config())
                .await
            && reporter
                .step(8, "pod ends, node and shadow removed", self.cleanup())
                .await
    }

    fn agent(&self) -> anyhow::Result<&AgentProcess> {
        self.agent.as_ref().context("the agent is not running")
    }

    /// Step 2: starts the agent and waits for both sets' device lists.
    async fn start_agent(&mut self) -> anyhow::Result<Outcome> {
        let agent = AgentProcess::spawn(&self.scene.agent_setup)?;
        let pid = agent.pid();
        self.agent = Some(agent);
        let expected = self.expect(&[self.sets.first.clone(), self.sets.second.clone()]);
        let waited = self.wait_counts(&expected, "both sets registered").await?;

        let recorded = self.scene.kubelet.recorded();
        let mut outcome = Outcome::new(json!({ "agent_pid": pid, "devices": expected }));
        outcome.line(format!(
            "agent pid {} registered after {} ms",
            pid.unwrap_or(0),
            waited.as_millis()
        ));
        for set in [&self.sets.first, &self.sets.second] {
            outcome.line(format!("  {}", describe_list(&recorded, &set.resource())));
        }
        Ok(outcome)
    }

    /// Step 9: stops the agent, checks that its sockets are gone and
    /// removes the tree unless kept. Runs after a failure too. Returns
    /// the kept directory, if any.
    pub async fn tear_down(mut self, reporter: &mut Reporter, number: usize) -> Option<PathBuf> {
        let mut kept = None;
        let agent = self.agent.take();
        let plugin_dir = self.scene.agent_setup.device_plugin_dir.clone();
        reporter
            .step(number, "agent stopped, nothing left behind", async {
                let exit = match agent {
                    Some(agent) => Some(agent.terminate(STOP_TIMEOUT).await?),
                    None => None,
                };
                let sockets = plugin_sockets(&plugin_dir);
                let shut = self.scene.shut_down().await?;
                let mut outcome = Outcome::new(json!({
                    "exit_code": exit.and_then(|status| status.code()),
                    "sockets_left": sockets,
                    "root": shut.root,
                    "root_removed": shut.removed,
                }));
                if let Some(status) = exit {
                    outcome.line(format!("agent exited on SIGTERM ({status})"));
                    ensure!(
                        status.success(),
                        "expected the agent to exit with 0, saw {status}"
                    );
                }
                ensure!(
                    sockets.is_empty(),
                    "expected the agent to remove its sockets, saw {sockets:?}"
                );
                outcome.line("plug-in sockets removed");
                if shut.removed {
                    outcome.line(format!("removed {}", shut.root.display()));
                } else {
                    outcome.line(format!("kept the node tree in {}", shut.root.display()));
                    kept = Some(shut.root);
                }
                Ok(outcome)
            })
            .await;
        kept
    }

    fn all_sets(&self) -> Vec<DemoSet> {
        vec![
            self.sets.first.clone(),
            self.sets.second.clone(),
            self.sets.added.clone(),
        ]
    }

    fn expect(&self, sets: &[DemoSet]) -> Vec<(String, usize)> {
        sets.iter()
            .map(|set| (set.resource(), set.expected_devices()))
            .collect()
    }

    /// Waits until the latest ListAndWatch message of each resource lists
    /// the expected number of devices. Returns the time it took.
    async fn wait_counts(
        &self,
        expected: &[(String, usize)],
        what: &str,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let reached = self
            .scene
            .kubelet
            .wait_for(STEP_TIMEOUT, |recorded| {
                expected
                    .iter()
                    .all(|(resource, count)| {
                        latest_ids(recorded, resource).is_some_and(|ids| ids.len() == *count)
                    })
                    .then_some(())
            })
            .await;
        if reached.is_some() {
            return Ok(started.elapsed());
        }
        let recorded = self.scene.kubelet.recorded();
        let seen: BTreeMap<&str, String> = expected
            .iter()
            .map(|(resource, _)| {
                let count = latest_ids(&recorded, resource)
                    .map_or("no list".to_string(), |ids| ids.len().to_string());
                (resource.as_str(), count)
            })
            .collect();
        bail!(
            "expected {what} within {STEP_TIMEOUT:?}: {}; saw {}",
            format_counts(expected.iter().map(|(r, c)| (r.as_str(), c.to_string()))),
            format_counts(seen.into_iter())
        )
    }

    async fn wait_log(&self, mark: usize, needle: &str) -> anyhow::Result<String> {
        self.agent()?
            .log()
            .wait_for(mark, needle, STEP_TIMEOUT)
            .await
            .with_context(|| {
                format!("expected the agent to log \"{needle} ...\" within {STEP_TIMEOUT:?}, saw no such line")
            })
    }
}

/// Returns the ids of the latest ListAndWatch message of `resource`.
fn latest_ids(recorded: &Recorded, resource: &str) -> Option<Vec<String>> {
    recorded
        .messages(resource)
        .last()
        .map(|message| message.ids())
}

fn format_counts<'a>(counts: impl Iterator<Item = (&'a str, String)>) -> String {
    counts
        .map(|(resource, count)| format!("{resource} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn set_facts(set: &DemoSet) -> serde_json::Value {
    json!({
        "name": set.name,
        "project": set.project,
        "mode": set.mode.as_str(),
        "apqns": set.apqns.iter().map(ToString::to_string).collect::<Vec<_>>(),
    })
}

fn describe_set(set: &DemoSet) -> String {
    let apqns: Vec<String> = set.apqns.iter().map(ToString::to_string).collect();
    format!(
        "set {} (project {}, {}): {}",
        set.name,
        set.project,
        set.mode.as_str(),
        shorten(&apqns.join(" "), 80)
    )
}

fn describe_list(recorded: &Recorded, resource: &str) -> String {
    let ids = latest_ids(recorded, resource).unwrap_or_default();
    format!(
        "{resource}: {} devices {}",
        ids.len(),
        shorten(&ids.join(" "), 70)
    )
}

/// Drops the timestamp, level and target of a log line.
fn strip_log_prefix(line: &str) -> &str {
    line.split_once(": ").map_or(line, |(_, message)| message)
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max.saturating_sub(3)).collect();
    format!("{kept}...")
}
