//! `cex-plugin`: the node agent binary. Parses the settings, sets up
//! logging and runs the agent until SIGTERM or SIGINT.

#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use cex_plugin::agent::Agent;
use cex_plugin::settings::{Args, LogFormat, Settings};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Args::parse();
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
    match run(parsed.settings) {
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

#[tokio::main]
async fn run(settings: Settings) -> anyhow::Result<()> {
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
