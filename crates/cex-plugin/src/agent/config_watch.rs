//! The config re-read: every `CRYPTOCONFIG_CHECK_INTERVAL`, or at once
//! when the reload trigger fires. Log lines keep the reference product's
//! wording, which operators grep for.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cex_config::CryptoConfig;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::error_chain;
use cex_config::{self as config_source, LoadError};

/// Reads the config at start-up; `None` when it cannot be used.
pub(crate) fn initial_config(path: &Path) -> Option<Arc<CryptoConfig>> {
    match config_source::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                tracing::warn!("CryptoConfig: {warning}");
            }
            tracing::info!(
                sets = loaded.config.sets.len(),
                "CryptoConfig: {}",
                config_source::summary(&loaded.config)
            );
            Some(Arc::new(loaded.config))
        }
        Err(error) => {
            log_load_error(&error);
            None
        }
    }
}

/// Logs a failed read with the line operators look for; the agent then
/// runs without any configuration.
fn log_load_error(error: &LoadError) {
    let detail = error_chain(error);
    match error {
        LoadError::Open { path, .. } => {
            tracing::error!(error = %detail, "CryptoConfig: Can't open config file {}", path.display());
        }
        LoadError::Parse { path, .. } => {
            tracing::error!(error = %detail, "CryptoConfig: Error parsing config file {}", path.display());
        }
        LoadError::Invalid { .. } => {
            tracing::error!(error = %detail, "Config Watcher: failed to verify new configuration!");
        }
    }
}

/// Re-reads the config until cancelled and publishes changes.
pub(crate) async fn run_reloads(
    path: PathBuf,
    config: watch::Sender<Option<Arc<CryptoConfig>>>,
    interval: Duration,
    trigger: Arc<Notify>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = trigger.notified() => tracing::debug!("config reload triggered"),
        }
        let reload_path = path.clone();
        let loaded =
            match tokio::task::spawn_blocking(move || config_source::load(&reload_path)).await {
                Ok(loaded) => loaded,
                Err(error) => {
                    tracing::error!(%error, "config read task failed, reloads stop");
                    return;
                }
            };
        apply(&config, loaded);
    }
}

fn apply(
    config: &watch::Sender<Option<Arc<CryptoConfig>>>,
    loaded: Result<config_source::Loaded, LoadError>,
) {
    match loaded {
        Ok(loaded) => {
            let changed = config.borrow().as_deref() != Some(&loaded.config);
            if !changed {
                return;
            }
            for warning in &loaded.warnings {
                tracing::warn!("CryptoConfig: {warning}");
            }
            tracing::info!(summary = %config_source::summary(&loaded.config), "CryptoConfig: updated configuration");
            config.send_replace(Some(Arc::new(loaded.config)));
        }
        Err(error) => {
            log_load_error(&error);
            config.send_if_modified(|current| current.take().is_some());
        }
    }
}
