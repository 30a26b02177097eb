//! `cexctl demo`: the product's main job in one command.
//!
//! The demo lays out a simulated IBM Z node, runs the simulated kubelet
//! in this process and the real agent as a child process (`cexctl
//! agent`), then walks through what an operator relies on: sets
//! registered, a device allocated with its zcrypt node and shadow sysfs,
//! a namespace mismatch reported, hot unplug and plug, config changes, a
//! broken config and its repair, cleanup after the pod ends, and a clean
//! stop. Every step is timed and checked against the state it must
//! reach; the first step that does not reach it within its timeout
//! fails the demo (exit code 1) after the cleanup.

mod agent;
mod configmap;
mod report;
mod scene;
mod sets;
mod steps;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;

use report::{Reporter, Sink};
use steps::Demo;

/// The number of steps the demo prints.
const STEP_COUNT: usize = 9;

/// Arguments of `cexctl demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Built-in machine to simulate (see `cexctl sim machines`); it needs
    /// online cards in three modes.
    #[arg(long, value_name = "NAME", default_value = "cex8-mixed-lpar")]
    pub machine: String,

    /// Build the node tree in DIR (empty or absent) and keep it at the
    /// end instead of using a temp dir that is removed.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,

    /// Print only the step lines, without details.
    #[arg(long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Also copy the agent's log lines to stderr as they arrive.
    #[arg(long)]
    pub verbose: bool,

    /// Print a JSON summary of the steps (name, ok, millis, facts) on
    /// stdout; the step lines then go to stderr.
    #[arg(long)]
    pub json: bool,
}

/// Runs `cexctl demo`.
pub fn run(args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the Tokio runtime")?;
    let sink = if args.json {
        Sink::Stderr
    } else {
        Sink::Stdout
    };
    let mut reporter = Reporter::new(STEP_COUNT, sink, !args.quiet);
    let summary = runtime.block_on(run_demo(args, &mut reporter));
    // The simulated kubelet's stream tasks end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(2));

    let ok = summary.ok && reporter.records().iter().all(|step| step.ok);
    if args.json {
        let document = json!({
            "ok": ok,
            "machine": args.machine,
            "root": summary.root,
            "kept": summary.kept,
            "agent_pid": summary.agent_pid,
            "steps": reporter.records(),
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    }
    if ok {
        reporter.note("demo finished: every step reached its expected state");
        Ok(ExitCode::SUCCESS)
    } else {
        reporter.note("demo FAILED: see the step marked FAILED above");
        Ok(ExitCode::FAILURE)
    }
}

/// Facts of the whole run for the JSON summary.
#[derive(Debug, Default)]
struct Summary {
    ok: bool,
    root: Option<PathBuf>,
    kept: Option<PathBuf>,
    agent_pid: Option<u32>,
}

async fn run_demo(args: &DemoArgs, reporter: &mut Reporter) -> Summary {
    let mut summary = Summary::default();
    let Some(mut demo) = Demo::set_up(args, reporter).await else {
        return summary;
    };
    summary.root = Some(demo.root().to_path_buf());

    let interrupted = tokio::select! {
        _ = demo.run_steps(reporter) => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    if interrupted {
        reporter.note("\ninterrupted: stopping the agent and cleaning up");
    }
    summary.agent_pid = demo.agent_pid();
    let kept = demo.tear_down(reporter, STEP_COUNT).await;
    summary.kept = kept;
    summary.ok = !interrupted;
    summary
}
