//! The largest node: one AP bus scan of 64 adapters x 85 domains and the
//! size of the ListAndWatch message for a set holding all of them.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use cex_ap::{Apqn, DeviceId};
use cex_kubelet_api::deviceplugin::v1beta1::{Device, ListAndWatchResponse, HEALTHY};
use cex_kubelet_api::prost::Message as _;
use cex_plugin::devices::{
    fitting_overcommit, KUBELET_MAX_MESSAGE_BYTES, LIST_MESSAGE_BUDGET_BYTES,
};
use cex_sim::machines::SCALE_MACHINE;

use super::agent::{Agent, FAST_INTERVALS};
use super::node::{BenchNode, ShadowPlace};
use super::page::{Figure, Section, Verdict};
use super::sets::{self, SetPlan};
use super::stats::{format_duration, format_optional, Samples};
use super::Plan;

/// The overcommit maximum a set may ask for.
const MAX_OVERCOMMIT: u32 = 100;

const LIST_WAIT: Duration = Duration::from_secs(60);

/// Lays out the scale machine once, times the scans on it, then runs the
/// agent with one set of every APQN at overcommit 100.
pub async fn measure(plan: &Plan, release: bool) -> anyhow::Result<(Vec<Figure>, Vec<Section>)> {
    let machine = cex_sim::machines::by_name(SCALE_MACHINE)
        .with_context(|| format!("no built-in machine {SCALE_MACHINE:?}"))?;
    let set = SetPlan {
        name: "all".to_string(),
        apqns: sets::online_apqns(&machine),
        overcommit: MAX_OVERCOMMIT,
    };
    let apqn_count = machine.apqn_count();
    let laid_out = Instant::now();
    let node = BenchNode::files(
        machine,
        &sets::config_json(std::slice::from_ref(&set)),
        ShadowPlace::WithNode,
    )
    .await?;
    let layout_time = laid_out.elapsed();

    let (scan_figure, mut scan_section) = scan(&node, apqn_count, plan.scans, release)?;
    scan_section.line(format!(
        "\nLaying the node out took {}.",
        format_duration(layout_time)
    ));
    let (size_figure, mut size_section) = message_size(&set.apqns);
    let agent_check = announced_list(&node, &set, plan).await;
    node.shut_down().await?;
    size_section.line(agent_check?);
    Ok((
        vec![scan_figure, size_figure],
        vec![scan_section, size_section],
    ))
}

fn scan(
    node: &BenchNode,
    apqn_count: usize,
    runs: usize,
    release: bool,
) -> anyhow::Result<(Figure, Section)> {
    let devices_dir = node.root().join("sys/devices/ap");
    let mut samples = Samples::default();
    let mut found = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let report = cex_ap::scan::scan(&devices_dir)
            .with_context(|| format!("cannot scan {}", devices_dir.display()))?;
        samples.push(started.elapsed());
        found = report.inventory.queues.len();
    }
    let median = samples.median();
    let met = median.is_some_and(|median| median <= Duration::from_millis(50));
    let verdict = if release {
        Verdict::from_ok(met)
    } else {
        Verdict::NotMeasured("debug build, run with --release".to_string())
    };

    let figure = Figure {
        name: format!("AP bus scan, 64 adapters x 85 domains ({apqn_count} APQNs)"),
        measured: format!(
            "median {}, max {}",
            format_optional(median),
            format_optional(samples.max())
        ),
        target: "<= 50 ms (median, release build)".to_string(),
        reference: "-".to_string(),
        verdict,
    };

    let mut section = Section::new("AP bus scan of the largest node");
    section.line(format!(
        "`cex_ap::scan::scan` reads the `{SCALE_MACHINE}` tree ({apqn_count} APQNs, plain \
         files on tmpfs) {runs} times in this process; each scan found {found} queues.\n"
    ));
    section.line(format!(
        "- each scan: {}",
        super::responsive::list(&samples)
    ));
    Ok((figure, section))
}

fn message_size(apqns: &[Apqn]) -> (Figure, Section) {
    let full_len = list_len(apqns, MAX_OVERCOMMIT);
    let announced = fitting_overcommit(apqns, MAX_OVERCOMMIT);
    let announced_len = list_len(apqns, announced);

    let figure = Figure {
        name: format!(
            "ListAndWatch message, {} APQNs x overcommit 100",
            apqns.len()
        ),
        measured: format!(
            "{} requested; {} announced ({announced} per APQN)",
            mebibytes(full_len),
            mebibytes(announced_len)
        ),
        target: "below the kubelet's 4 MiB gRPC receive limit".to_string(),
        reference: "-".to_string(),
        verdict: Verdict::from_ok(announced_len <= KUBELET_MAX_MESSAGE_BYTES),
    };

    let mut section = Section::new("ListAndWatch message size of the largest set");
    section.line(format!(
        "The protobuf-encoded size (prost `encoded_len`) of a ListAndWatchResponse \
         holding all {} APQNs x 100 devices, every one Healthy, is {full_len} bytes \
         ({}), {:.1} times the kubelet's receive limit of {KUBELET_MAX_MESSAGE_BYTES} \
         bytes (grpc-go's default). The kubelet would reject such a message and the \
         set would announce nothing. The agent therefore announces only as many devices \
         per APQN as fit in {LIST_MESSAGE_BUDGET_BYTES} bytes (the limit less 256 KiB), \
         keeping every APQN, and logs a warning naming the set with the requested and \
         announced counts: here {announced} per APQN, {announced_len} bytes.\n",
        apqns.len(),
        mebibytes(full_len),
        full_len as f64 / KUBELET_MAX_MESSAGE_BYTES as f64
    ));
    (figure, section)
}

/// Runs the agent on the node and checks what reaches the kubelet.
async fn announced_list(node: &BenchNode, set: &SetPlan, plan: &Plan) -> anyhow::Result<String> {
    let resource = set.resource();
    let agent = Agent::spawn(
        plan.agent_binary.as_deref(),
        &node.agent_paths(),
        FAST_INTERVALS,
    )?;
    let started = Instant::now();
    let message = sets::wait_message(&node.kubelet, &resource, 0, LIST_WAIT, |message| {
        !message.devices.is_empty()
    })
    .await;
    let log = agent.last_lines();
    agent.stop().await?;
    let Some(message) = message else {
        let streams = node.kubelet.recorded();
        let ends: Vec<String> = streams
            .streams_of(&resource)
            .iter()
            .map(|stream| format!("{:?}", stream.ended))
            .collect();
        return Ok(format!(
            "Checked with the agent: NO device list of `{resource}` reached the simulated \
             kubelet (whose client has the same 4 MiB limit) within {LIST_WAIT:?}; stream \
             ends: {}; last log lines:\n\n```text\n{log}\n```",
            ends.join(", ")
        ));
    };
    let size = ListAndWatchResponse {
        devices: message.devices.clone(),
    }
    .encoded_len();
    Ok(format!(
        "Checked with the agent on the laid-out node: the simulated kubelet, whose gRPC \
         client has the same 4 MiB receive limit, got a list of {} devices for {} APQNs \
         ({size} bytes) {} after the agent was spawned.",
        message.devices.len(),
        set.apqns.len(),
        format_duration(message.at.saturating_duration_since(started))
    ))
}

/// Returns the encoded size of a list of `overcommit` Healthy devices
/// per APQN.
fn list_len(apqns: &[Apqn], overcommit: u32) -> usize {
    let devices = apqns
        .iter()
        .flat_map(|&apqn| (0..overcommit).map(move |index| DeviceId::new(apqn, index)))
        .map(|id| Device {
            id: id.to_string(),
            health: HEALTHY.to_string(),
            topology: None,
        })
        .collect();
    ListAndWatchResponse { devices }.encoded_len()
}

fn mebibytes(bytes: usize) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}
