//! Allocate latency through the agent's gRPC server, as the kubelet
//! calls it: sequential and with 64 calls in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cex_sim::kubelet::FakeKubelet;
use tokio::task::JoinSet;

use super::agent::{Agent, FAST_INTERVALS};
use super::node::{BenchNode, ShadowPlace};
use super::page::{Figure, Section, Verdict};
use super::sets::{self, SetPlan};
use super::stats::{format_optional, Samples};
use super::Plan;

/// Calls in flight in the concurrent runs, as on a node starting many
/// pods at once.
pub const CONCURRENCY: usize = 64;

/// The zcrypt nodes a node can hold: the kernel's 256 minor numbers
/// (`ZCRYPT_MAX_MINOR_NODES`), a limit the fake kernel keeps too.
const MAX_ZCRYPT_NODES: usize = cex_sim::kernel::MAX_MINORS as usize;

/// A valid device id that no benchmark set announces.
const UNANNOUNCED_ID: &str = "apqn-255-255-0";

const REGISTER_WAIT: Duration = Duration::from_secs(20);

/// One node variant to measure Allocate on.
#[derive(Debug, Clone, Copy)]
pub enum Variant {
    /// Plain files and the fake kernel, shadow base on tmpfs.
    Files,
    /// Plain files and the fake kernel, shadow base under `/var/tmp`.
    FilesDiskShadow,
    /// The FUSE node, where `create` is synchronous as on the kernel.
    Fuse,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Self::Files => "plain files + fake kernel, shadow on tmpfs",
            Self::FilesDiskShadow => "plain files + fake kernel, shadow on disk (/var/tmp)",
            Self::Fuse => "FUSE node, shadow on tmpfs",
        }
    }
}

/// Latencies of one variant.
struct Latencies {
    sequential: Samples,
    concurrent: Samples,
    /// Calls the agent rejects at once (an id it does not announce): the
    /// cost of the connection and the gRPC round trip alone.
    rejected: Samples,
}

/// Measures every variant; a variant that cannot run (no FUSE) is
/// reported as not measured.
pub async fn measure(machine_name: &str, plan: &Plan) -> anyhow::Result<(Vec<Figure>, Section)> {
    let mut figures = Vec::new();

    let mut section = Section::new("Allocate latency");
    section.line(format!(
        "One set holds every online APQN of `{machine_name}` at overcommit 100. The \
         simulated kubelet calls Allocate on the agent's socket through \
         `FakeKubelet::allocate`, which dials the Unix socket for each call, so every \
         sample includes a connection set-up that a real kubelet reuses. Each request \
         names a device id not allocated before, so every sample creates a zcrypt \
         node and a shadow sysfs dir: {} sequential calls on one node, and {} rounds \
         of {CONCURRENCY} calls in flight on a second one, because a node holds at most \
         {MAX_ZCRYPT_NODES} zcrypt nodes. The last column is the floor of the method: {} calls \
         naming an id the set does not announce, which the agent rejects before any \
         file work. Percentiles are nearest-rank.\n",
        plan.sequential_allocations, plan.concurrent_rounds, plan.sequential_allocations
    ));
    section
        .line("| node | sequential p50 | sequential p99 | 64 concurrent p50 | 64 concurrent p99 |");
    section.line("|---|---|---|---|---|");
    for variant in [Variant::Files, Variant::FilesDiskShadow, Variant::Fuse] {
        let Some(latencies) = measure_variant(machine_name, variant, plan).await? else {
            figures.push(not_measured(variant));
            section.line(format!(
                "| {} | FUSE not available on this host | | | |",
                variant.label()
            ));
            continue;
        };
        section.line(format!(
            "| {} | {} | {} | {} | {} | {} |",
            variant.label(),
            format_optional(latencies.sequential.median()),
            format_optional(latencies.sequential.percentile(99.0)),
            format_optional(latencies.concurrent.median()),
            format_optional(latencies.concurrent.percentile(99.0)),
            format_optional(latencies.rejected.median()),
        ));
        figures.extend(variant_figures(variant, &latencies));
    }
    Ok((figures, section))
}

fn variant_figures(variant: Variant, latencies: &Latencies) -> [Figure; 2] {
    let reference = "4 to 29 ms per Allocate".to_string();
    let sequential_p99 = latencies.sequential.percentile(99.0);
    let concurrent_p99 = latencies.concurrent.percentile(99.0);
    [
        Figure {
            name: format!("Allocate, sequential ({})", variant.label()),
            measured: format!(
                "p50 {}, p99 {}",
                format_optional(latencies.sequential.median()),
                format_optional(sequential_p99)
            ),
            target: "p99 <= 2 ms".to_string(),
            reference: reference.clone(),
            verdict: Verdict::from_ok(
                sequential_p99.is_some_and(|p99| p99 <= Duration::from_millis(2)),
            ),
        },
        Figure {
            name: format!("Allocate, {CONCURRENCY} concurrent ({})", variant.label()),
            measured: format!(
                "p50 {}, p99 {}",
                format_optional(latencies.concurrent.median()),
                format_optional(concurrent_p99)
            ),
            target: "p99 <= 10 ms".to_string(),
            reference,
            verdict: Verdict::from_ok(
                concurrent_p99.is_some_and(|p99| p99 <= Duration::from_millis(10)),
            ),
        },
    ]
}

fn not_measured(variant: Variant) -> Figure {
    Figure {
        name: format!("Allocate ({})", variant.label()),
        measured: "-".to_string(),
        target: "p99 <= 2 ms alone, <= 10 ms with 64 concurrent".to_string(),
        reference: "4 to 29 ms per Allocate".to_string(),
        verdict: Verdict::NotMeasured("FUSE is not available".to_string()),
    }
}

/// The calls made on one fresh node and agent. Sequential and concurrent
/// calls get a node each, because a node has at most
/// [`MAX_ZCRYPT_NODES`] zcrypt nodes.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Sequential calls, then the rejected calls.
    Sequential,
    Concurrent,
}

async fn measure_variant(
    machine_name: &str,
    variant: Variant,
    plan: &Plan,
) -> anyhow::Result<Option<Latencies>> {
    let Some(mut latencies) = on_fresh_node(machine_name, variant, plan, Phase::Sequential).await?
    else {
        return Ok(None);
    };
    let concurrent = on_fresh_node(machine_name, variant, plan, Phase::Concurrent)
        .await?
        .context("the node became unavailable between the two phases")?;
    latencies.concurrent = concurrent.concurrent;
    Ok(Some(latencies))
}

/// Lays out a node for `variant`, runs the agent and makes the calls of
/// `phase`; `Ok(None)` when the variant cannot run on this host.
async fn on_fresh_node(
    machine_name: &str,
    variant: Variant,
    plan: &Plan,
    phase: Phase,
) -> anyhow::Result<Option<Latencies>> {
    let machine = cex_sim::machines::by_name(machine_name)
        .with_context(|| format!("no built-in machine {machine_name:?}"))?;
    let set = SetPlan {
        name: "alloc".to_string(),
        apqns: sets::online_apqns(&machine),
        overcommit: 100,
    };
    let config = sets::config_json(std::slice::from_ref(&set));
    let node = match variant {
        Variant::Files => BenchNode::files(machine, &config, ShadowPlace::WithNode).await?,
        Variant::FilesDiskShadow => BenchNode::files(machine, &config, ShadowPlace::Disk).await?,
        Variant::Fuse => match BenchNode::fuse(machine, &config).await? {
            Some(node) => node,
            None => return Ok(None),
        },
    };
    let agent = Agent::spawn(
        plan.agent_binary.as_deref(),
        &node.agent_paths(),
        FAST_INTERVALS,
    )?;
    let result = run_calls(&node.kubelet, &set, plan, phase).await;
    let log = agent.last_lines();
    agent.stop().await?;
    node.shut_down().await?;
    result.map(Some).with_context(|| {
        format!(
            "Allocate on the {} node failed; the agent's last log lines:\n{log}",
            variant.label()
        )
    })
}

async fn run_calls(
    kubelet: &Arc<FakeKubelet>,
    set: &SetPlan,
    plan: &Plan,
    phase: Phase,
) -> anyhow::Result<Latencies> {
    let resource = set.resource();
    let message = sets::wait_message(kubelet, &resource, 0, REGISTER_WAIT, |message| {
        message.healthy() == set.device_count()
    })
    .await
    .with_context(|| {
        format!(
            "{resource} did not announce {} healthy devices",
            set.device_count()
        )
    })?;
    let calls = match phase {
        Phase::Sequential => plan.sequential_allocations,
        Phase::Concurrent => plan.concurrent_rounds * CONCURRENCY,
    };
    let ids = message.ids();
    if calls > ids.len() || calls > MAX_ZCRYPT_NODES {
        anyhow::bail!(
            "{calls} Allocate calls need as many new zcrypt nodes, but {resource} announces {} \
             ids and a node holds at most {MAX_ZCRYPT_NODES} zcrypt nodes",
            ids.len()
        );
    }
    let mut latencies = Latencies {
        sequential: Samples::default(),
        concurrent: Samples::default(),
        rejected: Samples::default(),
    };
    match phase {
        Phase::Sequential => {
            latencies.sequential = sequential_calls(kubelet, &resource, &ids[..calls]).await?;
            latencies.rejected = rejected_calls(kubelet, &resource, calls).await?;
        }
        Phase::Concurrent => {
            latencies.concurrent = concurrent_calls(kubelet, &resource, &ids[..calls]).await?;
        }
    }
    Ok(latencies)
}

async fn sequential_calls(
    kubelet: &FakeKubelet,
    resource: &str,
    ids: &[String],
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for id in ids {
        let started = Instant::now();
        kubelet
            .allocate(resource, vec![vec![id.clone()]])
            .await
            .with_context(|| format!("Allocate of {id} failed"))?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

async fn rejected_calls(
    kubelet: &FakeKubelet,
    resource: &str,
    count: usize,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for _ in 0..count {
        let started = Instant::now();
        let result = kubelet
            .allocate(resource, vec![vec![UNANNOUNCED_ID.to_string()]])
            .await;
        samples.push(started.elapsed());
        if result.is_ok() {
            anyhow::bail!(
                "Allocate of {UNANNOUNCED_ID}, which the set does not announce, succeeded"
            );
        }
    }
    Ok(samples)
}

/// Makes the calls in rounds of [`CONCURRENCY`] calls in flight.
async fn concurrent_calls(
    kubelet: &Arc<FakeKubelet>,
    resource: &str,
    ids: &[String],
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    for round in ids.chunks(CONCURRENCY) {
        let mut calls = JoinSet::new();
        for id in round {
            let kubelet = Arc::clone(kubelet);
            let resource = resource.to_string();
            let id = id.clone();
            calls.spawn(async move {
                let started = Instant::now();
                let result = kubelet.allocate(&resource, vec![vec![id.clone()]]).await;
                result
                    .map(|_| started.elapsed())
                    .with_context(|| format!("Allocate of {id} failed"))
            });
        }
        while let Some(joined) = calls.join_next().await {
            samples.push(joined.context("an Allocate task panicked")??);
        }
    }
    Ok(samples)
}
