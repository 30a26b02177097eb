//! `cexctl`: the administration CLI of the CEX device plug-in.
//!
//! Each subcommand lives in its own file under `commands/` and returns
//! the process exit code.

#![forbid(unsafe_code)]

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Administration CLI for the CEX device plug-in on IBM Z.
#[derive(Debug, Parser)]
#[command(name = "cexctl", version, propagate_version = true)]
struct Cli {
    /// Log filter for messages on stderr (tracing EnvFilter syntax, e.g.
    /// `info` or `cex_sim=debug`).
    #[arg(long, global = true, env = "CEXCTL_LOG", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent (`cex-plugin`) in this process; every argument
    /// goes to the agent. Used by `demo` and `bench`.
    #[command(hide = true)]
    Agent(commands::agent::AgentArgs),
    /// Measure the agent on simulated nodes and write the results page
    /// (docs/benchmarks.md).
    Bench(commands::bench::BenchArgs),
    /// Run the whole product on a simulated node: sets, allocation, hot
    /// plug, config changes, cleanup, each step timed and checked.
    Demo(commands::demo::DemoArgs),
    /// Show the node's APQNs with their state and config sets.
    Inventory(commands::inventory::InventoryArgs),
    /// Print or apply ResourceQuotas that keep namespaces off other
    /// projects' config sets.
    Quotas(commands::quotas::QuotasArgs),
    /// Run a simulated IBM Z node.
    #[command(subcommand)]
    Sim(commands::sim::SimCommand),
    /// Check a config file (cex_resources.json) and summarize its sets.
    Validate(commands::validate::ValidateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The agent sets up its own logging.
    if let Command::Agent(args) = &cli.command {
        return commands::agent::run(args);
    }
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|error| {
        eprintln!(
            "cexctl: invalid --log filter {:?} ({error}), using \"warn\"",
            cli.log
        );
        EnvFilter::new("warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let result = match &cli.command {
        // Run above, before this process's logging is set up.
        Command::Agent(args) => Ok(commands::agent::run(args)),
        Command::Bench(args) => commands::bench::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Inventory(args) => commands::inventory::run(args),
        Command::Quotas(args) => run_async(commands::quotas::run(args)),
        Command::Sim(command) => commands::sim::run(command),
        Command::Validate(args) => commands::validate::run(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("cexctl: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an async subcommand on a fresh Tokio runtime.
fn run_async(
    command: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(command)?;
    Ok(ExitCode::SUCCESS)
}
