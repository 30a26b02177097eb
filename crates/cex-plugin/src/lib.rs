//! The CEX device plug-in node agent: settings, the agent runtime that
//! follows the AP bus and the config, and the device-plug-in servers
//! that announce each config set to the kubelet.

#![forbid(unsafe_code)]

pub mod agent;
pub mod allocate;
pub mod devices;
pub mod kubelet;
pub mod metrics;
pub mod settings;
pub mod surveillance;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use agent::Agent;
use settings::{Args, LogFormat, Settings};

/// Runs the node agent as the `cex-plugin` binary does: parses the
/// settings from `args` (program name first) and the environment, logs
/// to stderr (filter from `RUST_LOG`, default `info`) and serves until
/// SIGTERM or SIGINT. Returns 2 for unusable settings and 1 when the
/// agent fails; prints help and exits for `--help` or a bad flag.
pub fn run_main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::parse_from(args);
    let parsed = match Settings::from_args(args) {
        Ok(parsed) => parsed,
        Err(error) => {
            eprintln!("cex-plugin: {error}");
            return ExitCode::from(2);
        }
    };
    init_tracing(parsed.settings.log_format);
    for warning in &parsed.warnings {
        tracing::warn!("{warning}");
    }
    match run_until_signal(parsed.settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "cex-plugin failed");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Two runtime workers serve gRPC, watches and timers, while file work
/// runs on the blocking pool. Tokio's default of one worker per CPU costs
/// about 19 KiB of resident memory per extra worker (1.2 MiB with 64
/// workers, measured with `cexctl bench`).
#[tokio::main(worker_threads = 2)]
async fn run_until_signal(settings: Settings) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let mut terminate =
        signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    let dir = settings.paths.device_plugin_dir.clone();
    let agent = Agent::start_up(settings);
    let stopper = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received, stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT received, stopping"),
        }
        stopper.cancel();
    });
    agent
        .run(cancel)
        .await
        .with_context(|| format!("device-plugin directory {}", dir.display()))
}

/// Formats an error with its sources: `outer: inner: root`.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
