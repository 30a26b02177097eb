//! `cexctl sim`: the simulated IBM Z node.
//!
//! `sim node` lays a built-in machine (or a description file) out as a
//! node root and runs the fake kernel that serves zcrypt node creation
//! until Ctrl-C or SIGTERM. With `--fuse` it serves the machine through
//! FUSE instead, so that every write reaches a kernel-like `store` and
//! its errno reaches the writer. `sim machines` lists the built-in
//! machines.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use cex_sim::fuse::FuseNode;
use cex_sim::kernel::FakeKernel;
use cex_sim::layout::lay_out;
use cex_sim::machines::{self, Machine};
use clap::builder::{PossibleValue, PossibleValuesParser};

/// Subcommands of `cexctl sim`.
#[derive(Debug, clap::Subcommand)]
pub enum SimCommand {
    /// Lay out a simulated node and run its fake kernel, or serve it
    /// through FUSE, until Ctrl-C.
    Node(NodeArgs),
    /// List the built-in machines with their summaries.
    Machines,
}

/// Arguments of `cexctl sim node`.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Built-in machine to lay out.
    #[arg(
        long,
        value_name = "NAME",
        value_parser = machine_names(),
        required_unless_present = "machine_file"
    )]
    pub machine: Option<String>,

    /// Machine description (JSON, the schema of the built-in machines) to
    /// lay out instead of a built-in machine.
    #[arg(long, value_name = "FILE", conflicts_with = "machine")]
    pub machine_file: Option<PathBuf>,

    /// Root directory of the node: receives sys/, dev/ and proc/.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,

    /// Lay the node out and exit without running the fake kernel.
    #[arg(long)]
    pub once: bool,

    /// Serve the node through FUSE at DIR until Ctrl-C, instead of laying
    /// out plain files and running the fake kernel.
    #[arg(long, conflicts_with = "once")]
    pub fuse: bool,

    /// Remove DIR/sys, DIR/dev and DIR/proc of an earlier node first.
    #[arg(long)]
    pub force: bool,
}

/// The built-in machine names with their summaries, for `--help`.
fn machine_names() -> PossibleValuesParser {
    let values: Vec<PossibleValue> = machines::all()
        .into_iter()
        .map(|machine| PossibleValue::new(leak(machine.name)).help(machine.summary))
        .collect();
    PossibleValuesParser::new(values)
}

/// Gives a machine name the `'static` lifetime clap's possible values
/// take; the handful of names lives as long as the process anyway.
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

/// Runs `cexctl sim`.
pub fn run(command: &SimCommand) -> anyhow::Result<ExitCode> {
    match command {
        SimCommand::Machines => {
            print!("{}", machine_table(&machines::all()));
            Ok(ExitCode::SUCCESS)
        }
        SimCommand::Node(args) => run_node(args),
    }
}

fn machine_table(machines: &[Machine]) -> String {
    let width = machines
        .iter()
        .map(|machine| machine.name.len())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for machine in machines {
        let apqns = machine.apqn_count();
        out.push_str(&format!(
            "{:<width$}  {:>4} APQNs  {}\n",
            machine.name, apqns, machine.summary
        ));
    }
    out
}

fn load_machine(args: &NodeArgs) -> anyhow::Result<Machine> {
    if let Some(path) = &args.machine_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read machine description {}", path.display()))?;
        return machines::parse(&text)
            .with_context(|| format!("invalid machine description {}", path.display()));
    }
    let Some(name) = &args.machine else {
        bail!("give --machine NAME or --machine-file FILE");
    };
    machines::by_name(name).with_context(|| format!("no built-in machine {name:?}"))
}

/// Removes the node tree of an earlier run, leaving other files in the
/// root alone.
fn clear_root(root: &Path) -> anyhow::Result<()> {
    for top in ["sys", "dev", "proc"] {
        let path = root.join(top);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?,
            Ok(_) => std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?,
            Err(_) => {}
        }
    }
    Ok(())
}

fn run_node(args: &NodeArgs) -> anyhow::Result<ExitCode> {
    let machine = load_machine(args)?;
    if args.force {
        clear_root(&args.root)?;
    }
    if args.fuse {
        return run_fuse_node(machine, &args.root);
    }
    let started = std::time::Instant::now();
    lay_out(&machine, &args.root)
        .with_context(|| format!("cannot lay out machine {:?}", machine.name))?;
    tracing::info!(
        machine = %machine.name,
        apqns = machine.apqn_count(),
        elapsed_ms = started.elapsed().as_millis(),
        "node laid out"
    );
    println!(
        "node {} (machine id {}, {} APQNs) laid out at {}",
        machine.name,
        machine.machine_id(),
        machine.apqn_count(),
        args.root.display()
    );
    if args.once {
        return Ok(ExitCode::SUCCESS);
    }
    if !machine.kernel.zcrypt_multinode {
        println!(
            "machine {} has no zcrypt multi-node support; no fake kernel runs",
            machine.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    let kernel = FakeKernel::new(&args.root).context("cannot start the fake kernel")?;
    let running = kernel.start().context("cannot start the fake kernel")?;
    println!("fake kernel running; press Ctrl-C to stop");
    wait_for_shutdown_signal()?;
    running.stop();
    println!("fake kernel stopped");
    Ok(ExitCode::SUCCESS)
}

/// Serves `machine` through FUSE at `root` until SIGINT or SIGTERM, then
/// unmounts.
fn run_fuse_node(machine: Machine, root: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create the mount point {}", root.display()))?;
    let summary = format!(
        "node {} (machine id {}, {} APQNs)",
        machine.name,
        machine.machine_id(),
        machine.apqn_count()
    );
    let node = FuseNode::mount(machine, root)
        .with_context(|| format!("cannot serve the node through FUSE at {}", root.display()))?;
    println!(
        "{summary} served through FUSE at {}; press Ctrl-C to stop",
        root.display()
    );
    let waited = wait_for_shutdown_signal();
    node.unmount()
        .with_context(|| format!("cannot unmount {}", root.display()))?;
    waited?;
    println!("FUSE node unmounted from {}", root.display());
    Ok(ExitCode::SUCCESS)
}

/// Blocks until SIGINT (Ctrl-C) or SIGTERM.
fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .context("cannot start the signal runtime")?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot watch SIGTERM")?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot watch SIGINT"),
            _ = terminate.recv() => Ok(()),
        }
    })
}
