//! The kubelet pod-resources client: `List` with a per-call timeout,
//! reconnecting after a failure, and an outage log that reports a kubelet
//! outage once instead of at every attempt.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cex_kubelet_api::podresources::v1::pod_resources_lister_client::PodResourcesListerClient;
use cex_kubelet_api::podresources::v1::{ListPodResourcesRequest, ListPodResourcesResponse};
use cex_kubelet_api::uds;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

/// A failed pod-resources `List`.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The socket could not be dialled.
    #[error("cannot connect to the pod-resources socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    /// The kubelet returned an error status.
    #[error("pod-resources List on {path} failed")]
    Call {
        path: PathBuf,
        #[source]
        source: tonic::Status,
    },
    /// Connecting and listing took longer than the per-call timeout.
    #[error("pod-resources List on {path} timed out after {timeout:?}")]
    Timeout { path: PathBuf, timeout: Duration },
}

/// A source of the pods' device assignments.
pub trait PodSource: Send {
    /// Lists the resources of every pod the kubelet tracks.
    fn list(&mut self) -> impl Future<Output = Result<ListPodResourcesResponse, ListError>> + Send;
}

/// The kubelet's `v1.PodResourcesLister` on its Unix socket.
///
/// The channel is kept between calls and dropped after any failure, so
/// the next call dials the socket again (the kubelet re-creates it when
/// it restarts).
#[derive(Debug)]
pub struct KubeletPodSource {
    socket: PathBuf,
    timeout: Duration,
    client: Option<PodResourcesListerClient<Channel>>,
}

impl KubeletPodSource {
    /// Creates a client of the socket `socket` whose calls, connection
    /// included, time out after `timeout`.
    pub fn new(socket: PathBuf, timeout: Duration) -> Self {
        KubeletPodSource {
            socket,
            timeout,
            client: None,
        }
    }

    async fn connect_and_list(&mut self) -> Result<ListPodResourcesResponse, ListError> {
        let mut client = match self.client.take() {
            Some(client) => client,
            None => {
                let channel =
                    uds::connect(&self.socket)
                        .await
                        .map_err(|source| ListError::Connect {
                            path: self.socket.clone(),
                            source,
                        })?;
                debug!(socket = %self.socket.display(), "PodLister: connected to pod-resources");
                PodResourcesListerClient::new(channel)
            }
        };
        let response = client
            .list(ListPodResourcesRequest {})
            .await
            .map_err(|source| ListError::Call {
                path: self.socket.clone(),
                source,
            })?;
        self.client = Some(client);
        Ok(response.into_inner())
    }
}

impl PodSource for KubeletPodSource {
    async fn list(&mut self) -> Result<ListPodResourcesResponse, ListError> {
        match tokio::time::timeout(self.timeout, self.connect_and_list()).await {
            Ok(result) => result,
            Err(_) => {
                self.client = None;
                Err(ListError::Timeout {
                    path: self.socket.clone(),
                    timeout: self.timeout,
                })
            }
        }
    }
}

/// The retry delay after the first failure; it doubles up to the poll
/// interval.
pub const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Outage bookkeeping: logs the first failure at warn level, repeats at
/// debug level, logs recovery at info level, and picks the next delay.
#[derive(Debug)]
pub struct OutageLog {
    poll_interval: Duration,
    outage: Option<Outage>,
}

#[derive(Debug, Clone, Copy)]
struct Outage {
    since: Instant,
    failures: u32,
    retry_delay: Duration,
}

impl OutageLog {
    pub fn new(poll_interval: Duration) -> Self {
        OutageLog {
            poll_interval,
            outage: None,
        }
    }

    /// Reports whether the last `List` failed.
    pub fn is_down(&self) -> bool {
        self.outage.is_some()
    }

    /// Records a successful `List`; returns the delay until the next one.
    pub fn succeeded(&mut self, now: Instant) -> Duration {
        if let Some(outage) = self.outage.take() {
            let secs = now.saturating_duration_since(outage.since).as_secs();
            info!(
                failures = outage.failures,
                down_secs = secs,
                "PodLister: pod-resources API reachable again after {secs} s and {} failed calls",
                outage.failures
            );
        }
        self.poll_interval
    }

    /// Records a failed `List`; returns the delay until the next attempt.
    pub fn failed(&mut self, error: &ListError, now: Instant) -> Duration {
        let error = error_chain(error);
        let outage = match self.outage.as_mut() {
            Some(outage) => {
                outage.failures += 1;
                outage.retry_delay = (outage.retry_delay * 2).min(self.poll_interval);
                debug!(error = %error, failures = outage.failures,
                    "PodLister: pod-resources List failed again");
                outage
            }
            None => {
                warn!(error = %error,
                    "PodLister: pod-resources List failed, no cleanup until it succeeds; \
                     retrying with backoff");
                self.outage.insert(Outage {
                    since: now,
                    failures: 1,
                    retry_delay: FIRST_RETRY_DELAY.min(self.poll_interval),
                })
            }
        };
        outage.retry_delay
    }
}

/// Joins an error and its sources with ": ", as operators read them.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_error() -> ListError {
        ListError::Timeout {
            path: PathBuf::from("/tmp/x.sock"),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_doubles_up_to_poll_interval() {
        let mut log = OutageLog::new(Duration::from_secs(5));
        let now = Instant::now();
        let delays: Vec<u64> = (0..5)
            .map(|_| log.failed(&timeout_error(), now).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert!(log.is_down());
        assert_eq!(log.succeeded(now), Duration::from_secs(5));
        assert!(!log.is_down());
        assert_eq!(log.failed(&timeout_error(), now), Duration::from_secs(1));
    }

    #[test]
    fn short_poll_interval_caps_first_delay() {
        let mut log = OutageLog::new(Duration::from_millis(500));
        assert_eq!(
            log.failed(&timeout_error(), Instant::now()),
            Duration::from_millis(500)
        );
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("kubelet.sock");
        let mut source = KubeletPodSource::new(socket.clone(), Duration::from_secs(5));
        let error = source.list().await.expect_err("no server listens");
        assert!(matches!(error, ListError::Connect { .. }), "{error:?}");
        assert!(error.to_string().contains(&socket.display().to_string()));
    }
}
