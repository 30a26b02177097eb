//! `cexctl bench`: measures the agent on simulated nodes and writes the
//! results page (`docs/benchmarks.md`).
//!
//! The real agent runs as a child process (`cexctl agent`) against the
//! simulated kubelet in this process, over real gRPC on Unix sockets.
//! Every figure is written beside its target and the reference product's
//! value, and a missed target is marked as missed.

mod agent;
mod allocate;
mod host;
mod idle;
mod node;
mod page;
mod responsive;
mod scale;
mod sets;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use host::HostInfo;
use node::{BenchNode, ShadowPlace};
use page::{Report, Verdict};

/// The machine of the responsiveness, allocation and idle figures: four
/// cards in three modes, as on a typical LPAR.
const MACHINE: &str = "cex8-mixed-lpar";

/// Sets of the responsiveness and idle figures.
const SET_COUNT: usize = 8;

/// Arguments of `cexctl bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Take a few samples of each figure (well under a minute) instead
    /// of the full run; the figures are then not for comparison.
    #[arg(long)]
    pub quick: bool,

    /// Write the results page to FILE.
    #[arg(long, value_name = "FILE", default_value = "docs/benchmarks.md")]
    pub output: PathBuf,

    /// Run this agent executable (a `cex-plugin` binary) instead of
    /// `cexctl agent`, e.g. to measure the memory of the shipped binary.
    #[arg(long, value_name = "PATH")]
    pub agent_binary: Option<PathBuf>,
}

/// How many samples each measurement takes.
#[derive(Debug, Clone)]
pub struct Plan {
    pub start_runs: usize,
    pub restarts: usize,
    pub changes: usize,
    pub sequential_allocations: usize,
    pub concurrent_rounds: usize,
    pub scans: usize,
    pub idle_window: Duration,
    /// The agent executable, `None` for `cexctl agent`.
    pub agent_binary: Option<PathBuf>,
}

impl Plan {
    fn new(quick: bool, agent_binary: Option<PathBuf>) -> Self {
        if quick {
            Self {
                start_runs: 2,
                restarts: 1,
                changes: 1,
                sequential_allocations: 10,
                concurrent_rounds: 1,
                scans: 2,
                idle_window: Duration::from_secs(3),
                agent_binary,
            }
        } else {
            Self {
                start_runs: 10,
                restarts: 20,
                changes: 5,
                sequential_allocations: 200,
                concurrent_rounds: 4,
                scans: 20,
                idle_window: Duration::from_secs(60),
                agent_binary,
            }
        }
    }
}

/// Runs `cexctl bench`: exit code 0 when the page was written, whether
/// or not every target was met.
pub fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
    let plan = Plan::new(args.quick, args.agent_binary.clone());
    let report = runtime.block_on(run_bench(args.quick, plan))?;
    runtime.shutdown_timeout(Duration::from_secs(2));

    if let Some(parent) = args
        .output
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&args.output, report.to_markdown())
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    for figure in &report.figures {
        let verdict = match &figure.verdict {
            Verdict::Met => "met".to_string(),
            Verdict::Missed => "MISSED".to_string(),
            Verdict::NotMeasured(reason) => format!("not measured ({reason})"),
        };
        println!(
            "{}: {} [target {}] {verdict}",
            figure.name, figure.measured, figure.target
        );
    }
    println!(
        "wrote {} in {:.0} s",
        args.output.display(),
        report.elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

async fn run_bench(quick: bool, plan: Plan) -> anyhow::Result<Report> {
    let started = Instant::now();
    let host = HostInfo::collect();
    let mut figures = Vec::new();
    let mut sections = Vec::new();

    let machine = cex_sim::machines::by_name(MACHINE)
        .with_context(|| format!("no built-in machine {MACHINE:?}"))?;
    let sets = sets::spread_sets(&sets::online_apqns(&machine), SET_COUNT, 1);
    let config = sets::config_json(&sets);
    let mut node = BenchNode::files(machine, &config, ShadowPlace::WithNode).await?;
    let measured = responsive::measure(&mut node, &sets, &plan).await;
    let idle = match &measured {
        Ok(_) => Some(idle::measure(&node, &sets, &plan).await),
        Err(_) => None,
    };
    node.shut_down().await?;
    let (responsive_figures, responsive_sections) = measured?;
    figures.extend(responsive_figures);
    sections.extend(responsive_sections);

    let (allocate_figures, allocate_section) = allocate::measure(MACHINE, &plan).await?;
    figures.extend(allocate_figures);
    sections.push(allocate_section);

    let (scale_figures, scale_sections) = scale::measure(&plan, host.is_release()).await?;
    figures.extend(scale_figures);
    sections.extend(scale_sections);

    if let Some(idle) = idle {
        let (idle_figures, idle_section) = idle?;
        figures.extend(idle_figures);
        sections.push(idle_section);
    }
    Ok(Report {
        host,
        quick,
        figures,
        sections,
        elapsed: started.elapsed(),
        load_at_end: host::load_average(),
    })
}
