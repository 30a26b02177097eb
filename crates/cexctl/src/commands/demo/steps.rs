//! The steps of the demo and the state they share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use cex_ap::DeviceId;
use cex_kubelet_api::deviceplugin::v1beta1::ContainerAllocateResponse;
use cex_sim::kubelet::{FakePod, Recorded};
use serde_json::json;

use super::agent::{plugin_sockets, AgentProcess};
use super::report::{Outcome, Reporter};
use super::scene::Scene;
use super::sets::{config_json, DemoSet, DemoSets};
use super::view::{format_rows, read_masks, ContainerView};
use super::DemoArgs;

/// How long a step waits for its expected state.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two looks at files that have no change notification.
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

    /// Step 3: allocates the first device of the first set and shows what
    /// the container gets.
    async fn allocate(&mut self) -> anyhow::Result<Outcome> {
        let resource = self.sets.first.resource();
        let recorded = self.scene.kubelet.recorded();
        let text_id = latest_ids(&recorded, &resource)
            .and_then(|ids| ids.into_iter().next())
            .with_context(|| format!("expected devices of {resource}, saw none"))?;
        let id: DeviceId = text_id.parse()?;
        let response = self
            .scene
            .kubelet
            .allocate(&resource, vec![vec![text_id.clone()]])
            .await
            .map_err(|status| anyhow!("Allocate of {text_id} failed: {}", status.message()))?;
        let container = response
            .container_responses
            .into_iter()
            .next()
            .context("expected one container response, saw none")?;

        let mut outcome = Outcome::new(json!({}));
        outcome.line(format!("pod {POD} receives {id} of {resource}"));
        let device_facts = show_device(&container, &mut outcome)?;
        let masks = self.check_masks(id, &mut outcome)?;
        let rows = show_view(id, &container, &mut outcome)?;
        show_real_lszcrypt(&container, &mut outcome);
        outcome.facts = json!({
            "device": id.to_string(),
            "adapter": id.apqn.adapter,
            "domain": id.apqn.domain,
            "device_spec": device_facts,
            "apmask_adapters": masks.adapters,
            "aqmask_domains": masks.usage_domains,
            "admask_domains": masks.control_domains,
            "ioctls": masks.ioctls,
            "view_rows": rows,
        });
        self.allocation = Some(id);
        Ok(outcome)
    }

    /// Reads the zcrypt node's masks and checks that they reach exactly
    /// the allocated APQN.
    fn check_masks(
        &self,
        id: DeviceId,
        outcome: &mut Outcome,
    ) -> anyhow::Result<super::view::NodeMasks> {
        let dir = self
            .root()
            .join("sys/devices/virtual/zcrypt")
            .join(id.zcrypt_node_name());
        let masks = read_masks(&dir)?;
        outcome.line(format!(
            "zcrypt node {}: apmask adapters {}, aqmask domains {}, admask {}, ioctlmask {} of 256",
            id.zcrypt_node_name(),
            hex_list(&masks.adapters, 2),
            hex_list(&masks.usage_domains, 4),
            if masks.control_domains.is_empty() {
                "none".to_string()
            } else {
                hex_list(&masks.control_domains, 4)
            },
            masks.ioctls
        ));
        ensure!(
            masks.adapters == [id.apqn.adapter] && masks.usage_domains == [id.apqn.domain],
            "expected the masks to allow only adapter {} and domain {}, saw adapters {:?} and domains {:?}",
            id.apqn.adapter,
            id.apqn.domain,
            masks.adapters,
            masks.usage_domains
        );
        ensure!(
            masks.control_domains.is_empty(),
            "expected no control domain, saw {:?}",
            masks.control_domains
        );
        Ok(masks)
    }

    /// Step 4: lists the pod in another set's namespace and waits for the
    /// agent's mismatch report.
    async fn mismatch(&mut self) -> anyhow::Result<Outcome> {
        let id = self.allocation.context("no device was allocated")?;
        let namespace = self.sets.second.project.clone();
        let project = self.sets.first.project.clone();
        let id = id.to_string();
        let mark = self.agent()?.log().mark();
        let pod = FakePod::with_devices(POD, &namespace, &self.sets.first.resource(), &[&id]);
        self.scene.pods()?.set_pods(vec![pod]);

        let line = self
            .agent()?
            .log()
            .wait_for(mark, MISMATCH_LOG, STEP_TIMEOUT)
            .await
            .with_context(|| {
                format!(
                    "expected the agent to log \"{MISMATCH_LOG} ... marked for project {project}!\" \
                     within {STEP_TIMEOUT:?}, saw no such line"
                )
            })?;
        ensure!(
            line.contains(&id) && line.contains(&format!("marked for project {project}!")),
            "expected the mismatch line to name {id} and project {project}, saw {line:?}"
        );
        let mut outcome = Outcome::new(json!({
            "namespace": namespace,
            "project": project,
            "log_line": line,
        }));
        outcome.line(format!(
            "pod {POD} listed in namespace {namespace}, set project {project}"
        ));
        outcome.line(format!("agent log: {line}"));
        Ok(outcome)
    }

    /// Step 5: unplugs the card behind the second set and plugs it back.
    async fn hot_unplug(&mut self, adapter: u8) -> anyhow::Result<Outcome> {
        let set = self.sets.second.clone();
        let before = set.expected_devices();
        let during = before - set.apqns_on_card(adapter);
        let resource = set.resource();

        self.scene.node.remove_card(adapter)?;
        let removed = self
            .wait_counts(
                &[(resource.clone(), during)],
                "the list without the unplugged card",
            )
            .await?;
        self.scene.node.add_card(adapter)?;
        let restored = self
            .wait_counts(
                &[(resource.clone(), before)],
                "the list with the card plugged back",
            )
            .await?;

        let mut outcome = Outcome::new(json!({
            "card": adapter,
            "before": before,
            "during": during,
            "after": before,
            "shrink_ms": removed.as_millis(),
            "recover_ms": restored.as_millis(),
        }));
        outcome.line(format!(
            "card {adapter:02x} unplugged: {resource} {before} -> {during} devices in {} ms",
            removed.as_millis()
        ));
        outcome.line(format!(
            "card {adapter:02x} plugged:   {resource} {during} -> {before} devices in {} ms",
            restored.as_millis()
        ));
        Ok(outcome)
    }

    /// Step 6: sets overcommit 3 on the first set and adds the third set.
    async fn grow(&mut self) -> anyhow::Result<Outcome> {
        let before = self.expect(&[self.sets.first.clone(), self.sets.second.clone()]);
        self.sets.first.overcommit = Some(3);
        let sets = self.all_sets();
        self.scene.config.update(&config_json(&sets))?;
        let after = self.expect(&sets);
        let waited = self.wait_counts(&after, "the new device counts").await?;

        let mut outcome = Outcome::new(json!({
            "before": before,
            "after": after,
            "new_resource": self.sets.added.resource(),
        }));
        outcome.line(format!(
            "config swapped (..data -> {}) after {} ms:",
            self.scene.config.current_version().unwrap_or("?"),
            waited.as_millis()
        ));
        let recorded = self.scene.kubelet.recorded();
        for set in &sets {
            outcome.line(format!("  {}", describe_list(&recorded, &set.resource())));
        }
        Ok(outcome)
    }

    /// Step 7: swaps in invalid JSON, waits for every set to offer no
    /// devices, then repairs the config.
    async fn break_config(&mut self) -> anyhow::Result<Outcome> {
        let sets = self.all_sets();
        let empty: Vec<(String, usize)> = sets.iter().map(|set| (set.resource(), 0)).collect();
        let mark = self.agent()?.log().mark();
        self.scene
            .config
            .update("{ \"cryptoconfigsets\": [ { \"setname\": ")?;
        let emptied = self
            .wait_counts(&empty, "no devices while the config is broken")
            .await?;
        let error_line = self.wait_log(mark, PARSE_ERROR_LOG).await?;

        let mark = self.agent()?.log().mark();
        self.scene.config.update(&config_json(&sets))?;
        let restored = self.expect(&sets);
        let repaired = self
            .wait_counts(&restored, "the devices back after the repair")
            .await?;
        let updated_line = self.wait_log(mark, UPDATED_LOG).await?;

        let mut outcome = Outcome::new(json!({
            "broken": empty,
            "error_line": error_line,
            "repaired": restored,
            "updated_line": updated_line,
            "empty_ms": emptied.as_millis(),
            "repair_ms": repaired.as_millis(),
        }));
        outcome.line(format!(
            "invalid JSON: every set 0 devices after {} ms",
            emptied.as_millis()
        ));
        outcome.line(format!("  agent log: {}", shorten(&error_line, 200)));
        outcome.line(format!(
            "repaired: devices back after {} ms",
            repaired.as_millis()
        ));
        outcome.line(format!("  agent log: {}", shorten(&updated_line, 100)));
        Ok(outcome)
    }

    /// Step 8: ends the pod and waits for the zcrypt node and the shadow
    /// dir to be removed.
    async fn cleanup(&mut self) -> anyhow::Result<Outcome> {
        let id = self.allocation.context("no device was allocated")?;
        let node_name = id.zcrypt_node_name();
        let paths = [
            self.root().join("dev").join(&node_name),
            self.root()
                .join("sys/devices/virtual/zcrypt")
                .join(&node_name),
            self.scene
                .agent_setup
                .shadow_base_dir
                .join(id.shadow_dir_name()),
        ];
        for path in &paths {
            ensure!(
                path.exists(),
                "expected {} to exist while the pod runs, it is gone",
                path.display()
            );
        }
        let mark = self.agent()?.log().mark();
        self.scene.pods()?.set_pods(Vec::new());

        let started = Instant::now();
        while let Some(left) = paths.iter().find(|path| path.exists()) {
            if started.elapsed() > STEP_TIMEOUT {
                bail!(
                    "expected {} to be removed within {STEP_TIMEOUT:?} of the pod's end, it is still there",
                    left.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
        let removed_after = started.elapsed();
        let log = self.agent()?.log();
        let mut lines = log.matching_since(mark, &node_name);
        lines.extend(log.matching_since(mark, &id.shadow_dir_name()));

        let mut outcome = Outcome::new(json!({
            "zcrypt_node_removed": true,
            "shadow_dir_removed": true,
            "removed_ms": removed_after.as_millis(),
            "log_lines": lines,
        }));
        outcome.line(format!("pod {POD} removed from pod-resources"));
        for path in &paths {
            outcome.line(format!("  removed {}", path.display()));
        }
        for line in &lines {
            outcome.line(format!(
                "  agent log: {}",
                shorten(strip_log_prefix(line), 110)
            ));
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

/// Prints the device spec of the container and returns it as facts.
fn show_device(
    container: &ContainerAllocateResponse,
    outcome: &mut Outcome,
) -> anyhow::Result<serde_json::Value> {
    let device = container
        .devices
        .first()
        .context("expected a device spec in the Allocate response, saw none")?;
    outcome.line(format!(
        "device {} -> {} ({})",
        device.host_path, device.container_path, device.permissions
    ));
    ensure!(
        device.container_path == "/dev/z90crypt",
        "expected the device at /dev/z90crypt in the container, saw {}",
        device.container_path
    );
    for mount in &container.mounts {
        let access = if mount.read_only { "ro" } else { "rw" };
        outcome.line(format!(
            "mount  {} -> {} ({access})",
            mount.host_path, mount.container_path
        ));
    }
    Ok(json!({
        "host_path": device.host_path,
        "container_path": device.container_path,
        "permissions": device.permissions,
    }))
}

/// Prints the container's AP bus as `lszcrypt` columns and checks that
/// it shows only the allocated card and queue.
fn show_view(
    id: DeviceId,
    container: &ContainerAllocateResponse,
    outcome: &mut Outcome,
) -> anyhow::Result<Vec<[String; 5]>> {
    let rows = ContainerView::new(container).lszcrypt_rows()?;
    outcome.line("container view of the shadow sysfs (lszcrypt columns):");
    outcome.block(&format_rows(&rows));
    let mut shown: Vec<&str> = rows.iter().map(|row| row[0].as_str()).collect();
    shown.sort_unstable();
    let card = format!("{:02x}", id.apqn.adapter);
    let queue = id.apqn.to_string();
    let mut wanted = vec![card.as_str(), queue.as_str()];
    wanted.sort_unstable();
    ensure!(
        shown == wanted,
        "expected the container to see only {card} and {queue}, saw {shown:?}"
    );
    Ok(rows)
}

/// Runs IBM's `lszcrypt` in the container view when the s390x tools are
/// here, else says how to fetch them.
fn show_real_lszcrypt(container: &ContainerAllocateResponse, outcome: &mut Outcome) {
    match cex_sim::lszcrypt::find_tools() {
        Ok(_) => match cex_sim::lszcrypt::describe_container_view(container) {
            Ok(text) => {
                outcome.line("real lszcrypt (s390x, under qemu) in the container view:");
                outcome.block(&drop_empty_domain_rows(&text));
            }
            Err(error) => outcome.line(format!("real lszcrypt did not run: {error}")),
        },
        Err(error) => outcome.line(format!(
            "real lszcrypt not run ({error}); fetch it with {}",
            cex_sim::lszcrypt::fetch_script().display()
        )),
    }
}

/// Drops the rows of the `lszcrypt -d` domain table that mark no domain
/// (`    20  .  .  . ...`), which would fill a screen.
fn drop_empty_domain_rows(text: &str) -> String {
    text.lines()
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let label = fields.next().unwrap_or("");
            let marks: Vec<&str> = fields.collect();
            let empty_row = label.chars().all(|c| c.is_ascii_hexdigit())
                && !marks.is_empty()
                && marks.iter().all(|mark| *mark == ".");
            !empty_row
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

fn hex_list(values: &[u8], width: usize) -> String {
    let items: Vec<String> = values
        .iter()
        .map(|value| format!("0x{value:0width$x}"))
        .collect();
    format!("[{}]", items.join(", "))
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
