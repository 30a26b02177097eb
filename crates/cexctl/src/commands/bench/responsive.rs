//! Reaction times of the agent: start to first registration, kubelet
//! restart to re-registration, config change and sysfs change to the
//! new device list at the kubelet.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use cex_ap::{Apqn, DeviceId};
use cex_sim::kubelet::Message;

use super::agent::{Agent, FAST_INTERVALS};
use super::node::{BenchNode, NodeTree};
use super::page::{Figure, Section, Verdict};
use super::sets::{self, SetPlan};
use super::stats::{format_duration, format_optional, Samples};
use super::Plan;

/// How long one registration or device list may take before the sample
/// counts as lost.
const WAIT: Duration = Duration::from_secs(10);

/// The sysfs target: one 1 s rescan interval plus 100 ms to scan and
/// send the new list.
const ONE_POLL: Duration = Duration::from_millis(1100);

/// Spacing of measured kubelet restarts. The agent re-registers at once
/// after a restart that follows 5 s without one, and slows a burst of
/// restarts from 100 ms up to 1 s on purpose.
const RESTART_SPACING: Duration = Duration::from_millis(5500);

/// Restarts and their spacing in the burst shown beside the figure.
const BURST_RESTARTS: usize = 5;
const BURST_SPACING: Duration = Duration::from_millis(1600);

/// Runs every reaction measurement on `node`, which serves `sets`.
pub async fn measure(
    node: &mut BenchNode,
    sets: &[SetPlan],
    plan: &Plan,
) -> anyhow::Result<(Vec<Figure>, Vec<Section>)> {
    let mut figures = Vec::new();
    let mut sections = Vec::new();
    let (figure, section) = start_to_registration(node, sets, plan).await?;
    figures.push(figure);
    sections.push(section);

    let seen = sets::registration_counts(&node.kubelet, sets);
    let agent = Agent::spawn(
        plan.agent_binary.as_deref(),
        &node.agent_paths(),
        FAST_INTERVALS,
    )?;
    if sets::wait_registered(&node.kubelet, sets, &seen, WAIT)
        .await
        .is_none()
    {
        let log = agent.last_lines();
        agent.stop().await?;
        anyhow::bail!(
            "the agent did not register every set within {WAIT:?}; its last log lines:\n{log}"
        );
    }
    let measured = async {
        let (figure, section) = restart_to_registration(node, sets, plan.restarts).await?;
        figures.push(figure);
        sections.push(section);
        let (figure, section) = config_change(node, sets, plan.changes).await?;
        figures.push(figure);
        sections.push(section);
        let (figure, section) = sysfs_change(node, sets, plan.changes).await?;
        figures.push(figure);
        sections.push(section);
        anyhow::Ok(())
    }
    .await;
    agent.stop().await?;
    measured?;
    Ok((figures, sections))
}

async fn start_to_registration(
    node: &BenchNode,
    sets: &[SetPlan],
    plan: &Plan,
) -> anyhow::Result<(Figure, Section)> {
    let runs = plan.start_runs;
    let mut from_spawn = Samples::default();
    let mut from_log = Samples::default();
    let mut all_sets = Samples::default();
    for _ in 0..runs {
        let seen = sets::registration_counts(&node.kubelet, sets);
        let agent = Agent::spawn(
            plan.agent_binary.as_deref(),
            &node.agent_paths(),
            FAST_INTERVALS,
        )?;
        let registered = sets::wait_registered(&node.kubelet, sets, &seen, WAIT).await;
        let Some((first, last)) = registered else {
            let log = agent.last_lines();
            agent.stop().await?;
            anyhow::bail!(
                "the agent did not register every set within {WAIT:?}; its last log lines:\n{log}"
            );
        };
        from_spawn.push(first - agent.spawned_at());
        all_sets.push(last - agent.spawned_at());
        if let Some(logged) = agent.first_line_at() {
            from_log.push(first.saturating_duration_since(logged));
        }
        agent.stop().await?;
    }
    let target = Duration::from_millis(20);

    let figure = Figure {
        name: "agent start to first registration".to_string(),
        measured: format!(
            "median {}, max {}",
            format_optional(from_spawn.median()),
            format_optional(from_spawn.max())
        ),
        target: "<= 20 ms".to_string(),
        reference: "80 ms".to_string(),
        verdict: Verdict::from_ok(from_spawn.max().is_some_and(|max| max <= target)),
    };

    let mut section = Section::new("Agent start to first registration");
    section.line(format!(
        "The agent process is spawned {runs} times on a node with {} sets; each sample \
         runs from just before the spawn to the first Register call recorded by the \
         simulated kubelet. The verdict uses the max.\n",
        sets.len()
    ));
    section.line(format!("- spawn to first Register: {}", list(&from_spawn)));
    section.line(format!(
        "- first log line to first Register (without process start-up): {}",
        list(&from_log)
    ));
    section.line(format!(
        "- spawn to the last of the {} sets registered: {}",
        sets.len(),
        list(&all_sets)
    ));
    Ok((figure, section))
}

async fn restart_to_registration(
    node: &BenchNode,
    sets: &[SetPlan],
    restarts: usize,
) -> anyhow::Result<(Figure, Section)> {
    let (samples, lost) = timed_restarts(node, sets, restarts, RESTART_SPACING).await?;
    let (burst, burst_lost) = timed_restarts(node, sets, BURST_RESTARTS, BURST_SPACING).await?;

    let figure = latency_figure(
        "kubelet restart to re-registration",
        &samples,
        lost,
        (Duration::from_millis(100), "<= 100 ms every time"),
        "up to 3 s",
    );

    let mut section = Section::new("Kubelet restart to re-registration");
    section.line(format!(
        "The simulated kubelet restarts {restarts} times, {} s apart: it deletes every \
         socket in the device-plugin dir and serves a new `kubelet.sock`. Each sample \
         runs from the start of the restart to the Register call of the last of the {} \
         sets. The spacing is above 5 s because the agent slows its re-registration \
         on purpose, from 100 ms up to 1 s, when the kubelet restarts again within 5 s; \
         the burst line shows that back-off.\n",
        RESTART_SPACING.as_secs_f64(),
        sets.len()
    ));
    section.line(format!("- each restart: {}", list(&samples)));
    section.line(format!(
        "- burst of {BURST_RESTARTS} restarts {} s apart (not part of the figure): {}{}",
        BURST_SPACING.as_secs_f64(),
        list(&burst),
        lost_text(burst_lost)
    ));
    if lost > 0 {
        section.line(format!(
            "- {lost} restarts saw no re-registration within {WAIT:?}"
        ));
    }
    Ok((figure, section))
}

async fn config_change(
    node: &mut BenchNode,
    sets: &[SetPlan],
    changes: usize,
) -> anyhow::Result<(Figure, Section)> {
    let mut current = sets.to_vec();
    let resource = current[0].resource();
    let mut samples = Samples::default();
    let mut lost = 0;
    for change in 0..changes {
        current[0].overcommit = if change % 2 == 0 { 2 } else { 1 };
        let expected = current[0].device_count();
        let text = sets::config_json(&current);
        let latency = change_to_list(
            node,
            &resource,
            |node| node.write_config(&text),
            |message| message.devices.len() == expected,
        )
        .await?;
        match latency {
            Some(latency) => samples.push(latency),
            None => lost += 1,
        }
    }
    if changes % 2 == 1 {
        node.write_config(&sets::config_json(sets))?;
    }

    let figure = latency_figure(
        "config file change to new device list",
        &samples,
        lost,
        (Duration::from_secs(1), "<= 1 s"),
        ">= 30 s, 120 s by default",
    );

    let mut section = Section::new("Config file change to new device list");
    section.line(format!(
        "The config is updated {changes} times the way the kubelet updates a mounted \
         ConfigMap (new `..<version>` dir, `..data` symlink renamed over the old one), \
         toggling the overcommit of set `{}` between 1 and 2. The agent runs with \
         `CRYPTOCONFIG_CHECK_INTERVAL` at its default of 120 s, so only a file watch \
         can be this fast. Each sample runs from just before the swap to the \
         ListAndWatch message with the new device count.\n",
        current[0].name
    ));
    section.line(format!("- each change: {}", list(&samples)));
    if lost > 0 {
        section.line(format!(
            "- {lost} changes reached no new list within {WAIT:?}"
        ));
    }
    Ok((figure, section))
}

async fn sysfs_change(
    node: &mut BenchNode,
    sets: &[SetPlan],
    changes: usize,
) -> anyhow::Result<(Figure, Section)> {
    let set = sets
        .iter()
        .find(|set| !set.apqns.is_empty())
        .context("no set has an APQN to switch offline")?;
    let apqn = set.apqns[0];
    let resource = set.resource();
    let id = DeviceId::new(apqn, 0).to_string();
    let mut samples = Samples::default();
    let mut lost = 0;
    for _ in 0..changes {
        for online in [false, true] {
            let health = if online { "Healthy" } else { "Unhealthy" };
            let latency = change_to_list(
                node,
                &resource,
                |node| set_queue_online(node, apqn, online),
                |message| message.health_of(&id) == Some(health),
            )
            .await?;
            match latency {
                Some(latency) => samples.push(latency),
                None => lost += 1,
            }
        }
    }

    let figure = latency_figure(
        "sysfs change to new device list (APQN_CHECK_INTERVAL 1 s)",
        &samples,
        lost,
        (ONE_POLL, "<= 1.1 s (one poll)"),
        "up to APQN_CHECK_INTERVAL (30 s by default)",
    );

    let mut section = Section::new("Sysfs change to new device list");
    section.line(format!(
        "Queue `{apqn}` of set `{}` is switched offline (queue `online` 1 -> 0) and back \
         {changes} times with `APQN_CHECK_INTERVAL` at its minimum of 1 s. A simulated \
         node sends no AP bus uevents, so the agent finds each change on its next \
         rescan. Each change follows right after the list of the previous one, which \
         comes just after a rescan, so each sample waits about one full interval: the \
         worst case. Each sample runs from the sysfs write to the ListAndWatch message \
         showing `{id}` with the new health. The target is one interval plus 100 ms for the rescan and the new list.\n",
        set.name
    ));
    section.line(format!("- each change: {}", list(&samples)));
    if lost > 0 {
        section.line(format!(
            "- {lost} changes reached no new list within {WAIT:?}"
        ));
    }
    Ok((figure, section))
}

/// Restarts the simulated kubelet `restarts` times, `spacing` apart, and
/// returns the time until every set re-registered and the restarts that
/// saw no re-registration within [`WAIT`].
async fn timed_restarts(
    node: &BenchNode,
    sets: &[SetPlan],
    restarts: usize,
    spacing: Duration,
) -> anyhow::Result<(Samples, usize)> {
    let mut samples = Samples::default();
    let mut lost = 0;
    for _ in 0..restarts {
        tokio::time::sleep(spacing).await;
        let seen = sets::registration_counts(&node.kubelet, sets);
        let restarted_at = Instant::now();
        node.kubelet
            .restart()
            .await
            .context("cannot restart the simulated kubelet")?;
        match sets::wait_registered(&node.kubelet, sets, &seen, WAIT).await {
            Some((_, last)) => samples.push(last - restarted_at),
            None => lost += 1,
        }
    }
    Ok((samples, lost))
}

/// Applies `change` to the node and returns the time until the kubelet
/// receives a message of `resource` that satisfies `matches`, or `None`
/// when none arrives within [`WAIT`].
async fn change_to_list(
    node: &mut BenchNode,
    resource: &str,
    change: impl FnOnce(&mut BenchNode) -> anyhow::Result<()>,
    matches: impl FnMut(&Message) -> bool,
) -> anyhow::Result<Option<Duration>> {
    let seen = sets::message_count(&node.kubelet, resource);
    let changed_at = Instant::now();
    change(node)?;
    let message = sets::wait_message(&node.kubelet, resource, seen, WAIT, matches).await;
    Ok(message.map(|message| message.at - changed_at))
}

fn set_queue_online(node: &mut BenchNode, apqn: Apqn, online: bool) -> anyhow::Result<()> {
    match node.tree.as_mut() {
        Some(NodeTree::Files { node, .. }) => node
            .set_queue_online(apqn, online)
            .with_context(|| format!("cannot set queue {apqn} online={online}")),
        Some(NodeTree::Fuse(fuse)) => fuse
            .control()
            .set_queue_online(apqn, online)
            .with_context(|| format!("cannot set queue {apqn} online={online}")),
        None => anyhow::bail!("the node tree is already shut down"),
    }
}

/// Builds the summary row of a latency that must stay within `limit`
/// in every sample; a lost sample misses the target too.
fn latency_figure(
    name: &str,
    samples: &Samples,
    lost: usize,
    (limit, target): (Duration, &str),
    reference: &str,
) -> Figure {
    let ok = lost == 0 && samples.max().is_some_and(|max| max <= limit);
    Figure {
        name: name.to_string(),
        measured: format!(
            "median {}, max {}{}",
            format_optional(samples.median()),
            format_optional(samples.max()),
            lost_text(lost)
        ),
        target: target.to_string(),
        reference: reference.to_string(),
        verdict: Verdict::from_ok(ok),
    }
}

/// Formats every sample in order, comma separated.
pub fn list(samples: &Samples) -> String {
    if samples.is_empty() {
        return "none".to_string();
    }
    let values: Vec<String> = samples
        .values()
        .iter()
        .map(|value| format_duration(*value))
        .collect();
    values.join(", ")
}

/// Returns `, N lost` when samples were lost.
pub fn lost_text(lost: usize) -> String {
    if lost == 0 {
        String::new()
    } else {
        format!(", {lost} lost")
    }
}
