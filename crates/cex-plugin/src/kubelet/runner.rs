//! The life cycle of one set's device plug-in: wait for the kubelet,
//! serve, register, then watch for anything that needs a new
//! registration, until the set is removed or the agent stops.
//!
//! What triggers what:
//! * `kubelet.sock` re-created (kubelet restart) or our socket removed or
//!   replaced: stop the server generation and start a new one, which
//!   registers again.
//! * The kubelet ended the newest ListAndWatch stream without a restart:
//!   register again on the running server (the kubelet does not reconnect
//!   on its own).
//! * A failed Register call: retry with exponential back-off on the same
//!   socket, so retries never leave extra socket files behind.
//!
//! * A generation that cannot start (a file in the way, a path too long,
//!   another agent serving the socket): retry after 0.5 s doubling up to
//!   30 s, or sooner when the file in the way goes or `kubelet.sock` is
//!   re-created. The delays start over only after a generation stayed
//!   registered for [`STABLE_AFTER`].
//!
//! Restarts in a burst are slowed (100 ms doubling up to 1 s), so no
//! fault can turn into a tight restart loop.
//!
//! Directory events only prompt a check. The decision compares the files
//! on disk with the identities bound and registered with, so late events
//! caused by our own socket handling never restart a healthy server.

use std::path::PathBuf;
use std::time::Duration;

use cex_config::RESOURCE_PREFIX;
use cex_kubelet_api::deviceplugin::v1beta1::KUBELET_SOCKET;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::backoff::{restart_delay, Backoff};
use super::identity::{socket_identity, FileIdentity};
use super::registration::register;
use super::server::ServerGeneration;
use super::{socket_file_name, DirEvent, PluginContext};
use crate::error_chain;

/// Wait after a stream end before registering again.
const STREAM_END_SETTLE: Duration = Duration::from_millis(250);

/// How long a generation must stay registered before failures to start
/// a generation are forgotten.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Reason a server generation ended.
enum Stop {
    /// The set was removed or the agent stops.
    Cancelled,
    /// A new generation is needed, for the given reason.
    Restart(&'static str),
}

/// Outcome of the watch phase.
enum Watched {
    Stop(Stop),
    /// The kubelet ended the newest ListAndWatch stream.
    StreamEnded,
}

/// Runs one set until `cancel` fires.
pub(crate) struct SetRunner {
    pub(crate) set: String,
    pub(crate) context: PluginContext,
    pub(crate) events: broadcast::Receiver<DirEvent>,
    pub(crate) cancel: CancellationToken,
}

impl SetRunner {
    fn resource(&self) -> String {
        format!("{RESOURCE_PREFIX}{}", self.set)
    }

    fn kubelet_socket(&self) -> PathBuf {
        self.context.dir.join(KUBELET_SOCKET)
    }

    /// Serves and registers the set until it is cancelled.
    pub(crate) async fn run(mut self) {
        let socket_name = socket_file_name(&self.context.dir, &self.set);
        let mut restarts = Backoff::restart();
        let mut failures = Backoff::serve_failure();
        loop {
            if !self.wait_for_kubelet().await {
                break;
            }
            let generation = ServerGeneration::start(&self.set, &socket_name, &self.context).await;
            let mut generation = match generation {
                Ok(generation) => generation,
                Err(error) => {
                    let delay = failures.next_delay();
                    tracing::error!(set = %self.set, ?delay, error = %error_chain(&error), "Plugin['{}']: cannot serve, retrying in {delay:?}", self.set);
                    if !self.wait_after_failure(delay, &socket_name).await {
                        break;
                    }
                    continue;
                }
            };
            let stop = self.register_and_watch(&mut generation, &socket_name).await;
            if generation
                .registered_at
                .is_some_and(|at| at.elapsed() >= STABLE_AFTER)
            {
                failures.reset();
            }
            generation.stop(&self.set).await;
            self.context
                .stats
                .update(&self.set, |counters| counters.registered = false);
            let Stop::Restart(why) = stop else { break };
            self.context
                .stats
                .update(&self.set, |counters| counters.restarts += 1);
            let delay = restart_delay(&mut restarts);
            tracing::info!(set = %self.set, ?delay, "Plugin['{}']: {why}, restarting", self.set);
            if !self.sleep(delay).await {
                break;
            }
        }
        tracing::info!(set = %self.set, "Plugin['{}']: stopped", self.set);
    }

    /// Waits `delay` after a generation could not start. Ends early when
    /// the file that was at our socket path is gone or `kubelet.sock` is
    /// re-created, as either may have removed the cause. False when
    /// cancelled.
    async fn wait_after_failure(&mut self, delay: Duration, socket_name: &str) -> bool {
        let own = self.context.dir.join(socket_name);
        let blocked = std::fs::symlink_metadata(&own).is_ok();
        let kubelet = socket_identity(&self.kubelet_socket());
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = &mut sleep => return true,
                () = next_event(&mut self.events) => {
                    let cleared = blocked && std::fs::symlink_metadata(&own).is_err();
                    let now = socket_identity(&self.kubelet_socket());
                    if cleared || (now.is_some() && now != kubelet) {
                        return true;
                    }
                }
            }
        }
    }

    /// Waits until `kubelet.sock` exists; false when cancelled first.
    async fn wait_for_kubelet(&mut self) -> bool {
        let path = self.kubelet_socket();
        let mut logged = false;
        loop {
            if socket_identity(&path).is_some() {
                return true;
            }
            if !logged {
                tracing::info!(set = %self.set, socket = %path.display(), "Plugin['{}']: waiting for the kubelet socket", self.set);
                logged = true;
            }
            tokio::select! {
                () = self.cancel.cancelled() => return false,
                () = next_event(&mut self.events) => {}
            }
        }
    }

    /// Registers (with retries) and watches until the generation must end.
    async fn register_and_watch(
        &mut self,
        generation: &mut ServerGeneration,
        socket_name: &str,
    ) -> Stop {
        let mut retries = Backoff::registration();
        let mut recoveries = Backoff::registration();
        let resource = self.resource();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let kubelet = socket_identity(&self.kubelet_socket());
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                () = self.cancel.cancelled() => return Stop::Cancelled,
                result = register(&self.context.dir, socket_name, &resource) => result,
            };
            if let Err(error) = result {
                self.context.stats.update(&self.set, |counters| {
                    counters.registration_failures += 1;
                    counters.registered = false;
                });
                let delay = retries.next_delay();
                tracing::warn!(set = %self.set, attempt, ?delay, error = %error_chain(&error), "Plugin['{}']: registration with the kubelet failed, retrying", self.set);
                match self.wait_before_retry(delay, generation).await {
                    Some(stop) => return stop,
                    None => continue,
                }
            }
            self.context.stats.update(&self.set, |counters| {
                counters.registrations += 1;
                counters.registered = true;
            });
            tracing::info!(set = %self.set, attempt, elapsed = ?started.elapsed(), "Plugin['{}']: registered with the kubelet", self.set);
            generation.registered_at = Some(tokio::time::Instant::now());
            attempt = 0;
            retries.reset();
            match self.watch(generation, kubelet).await {
                Watched::Stop(stop) => return stop,
                Watched::StreamEnded => {
                    self.context
                        .stats
                        .update(&self.set, |counters| counters.registered = false);
                    // A restarting kubelet also ends the stream; give its
                    // socket changes a moment to show, so a restart is
                    // handled as one and not as a stream end plus a restart.
                    let delay = restart_delay(&mut recoveries).max(STREAM_END_SETTLE);
                    if let Some(stop) = self.wait_before_retry(delay, generation).await {
                        return stop;
                    }
                    if let Some(stop) = self.check_files(generation, kubelet) {
                        return stop;
                    }
                    self.context
                        .stats
                        .update(&self.set, |counters| counters.stream_recoveries += 1);
                    tracing::warn!(set = %self.set, "Plugin['{}']: kubelet ended the ListAndWatch stream, registering again", self.set);
                }
            }
        }
    }

    /// Sleeps `delay` before another Register call. Returns early (None)
    /// when `kubelet.sock` changes, or with a stop when our socket is gone
    /// or the runner is cancelled.
    async fn wait_before_retry(
        &mut self,
        delay: Duration,
        generation: &ServerGeneration,
    ) -> Option<Stop> {
        let before = socket_identity(&self.kubelet_socket());
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return Some(Stop::Cancelled),
                () = &mut sleep => return None,
                () = next_event(&mut self.events) => {
                    if !generation.socket_intact() {
                        return Some(Stop::Restart("plug-in socket removed"));
                    }
                    let now = socket_identity(&self.kubelet_socket());
                    if now.is_some() && now != before {
                        return None;
                    }
                }
            }
        }
    }

    /// Watches a registered generation.
    async fn watch(
        &mut self,
        generation: &mut ServerGeneration,
        kubelet: Option<FileIdentity>,
    ) -> Watched {
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return Watched::Stop(Stop::Cancelled),
                result = &mut generation.server, if !generation.server.is_finished() => {
                    let reason = match result {
                        Ok(Ok(())) => "server ended".to_string(),
                        Ok(Err(error)) => error_chain(&error),
                        Err(error) => error.to_string(),
                    };
                    tracing::error!(set = %self.set, %reason, "Plugin['{}']: device plug-in server stopped", self.set);
                    return Watched::Stop(Stop::Restart("server stopped"));
                }
                Some(stream) = generation.ended_streams.recv() => {
                    if generation.streams.is_latest(stream) {
                        return Watched::StreamEnded;
                    }
                }
                () = next_event(&mut self.events) => {
                    if let Some(stop) = self.check_files(generation, kubelet) {
                        return Watched::Stop(stop);
                    }
                }
            }
        }
    }

    fn check_files(
        &self,
        generation: &ServerGeneration,
        kubelet: Option<FileIdentity>,
    ) -> Option<Stop> {
        if !generation.socket_intact() {
            return Some(Stop::Restart("plug-in socket removed"));
        }
        let now = socket_identity(&self.kubelet_socket());
        if now.is_some() && now != kubelet {
            return Some(Stop::Restart("kubelet socket re-created"));
        }
        None
    }

    /// Sleeps unless cancelled; false when cancelled.
    async fn sleep(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// Waits for the next directory event. A lagging receiver still gets a
/// wake-up (every file is rechecked); a closed channel never wakes again,
/// so a runner cannot spin on it.
async fn next_event(events: &mut broadcast::Receiver<DirEvent>) {
    match events.recv().await {
        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
        Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
    }
}
