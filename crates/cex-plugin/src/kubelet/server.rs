//! One generation of a set's device-plug-in server: the socket bound in
//! the device-plugin directory and the tonic server on it. A restart
//! stops the generation (streams end, task joined, socket removed) and
//! starts a new one.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cex_kubelet_api::deviceplugin::v1beta1::device_plugin_server::DevicePluginServer;
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::identity::{
    remove_own_socket, remove_stale_socket, socket_identity, socket_in_use, FileIdentity,
};
use super::service::{DevicePluginService, StreamBook};
use super::PluginContext;

/// How long a stopping server may take before its task is aborted.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The socket of a generation cannot be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    /// Another process accepts connections on our socket path: most
    /// likely a second agent serving the same set on this node.
    #[error(
        "another process serves {}; is a second agent running on this node? \
         leaving it alone",
        path.display()
    )]
    InUse { path: PathBuf },
    /// A file that is not a socket sits where our socket belongs.
    #[error("cannot remove stale socket {}", path.display())]
    Stale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Binding the socket failed.
    #[error("cannot bind socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A running server generation.
pub(crate) struct ServerGeneration {
    pub(crate) path: PathBuf,
    /// Identity of the socket this generation bound.
    pub(crate) identity: Option<FileIdentity>,
    pub(crate) streams: Arc<StreamBook>,
    pub(crate) ended_streams: mpsc::UnboundedReceiver<u64>,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// The tonic server task; it ends only when stopped or on failure.
    pub(crate) server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// When the kubelet last accepted the registration of this generation.
    pub(crate) registered_at: Option<tokio::time::Instant>,
}

impl ServerGeneration {
    /// Binds `<dir>/<socket_name>` (removing a stale socket of exactly that
    /// name, never one that another process serves) and starts serving set
    /// `set` on it.
    pub(crate) async fn start(
        set: &str,
        socket_name: &str,
        context: &PluginContext,
    ) -> Result<Self, ServeError> {
        let path = context.dir.join(socket_name);
        if socket_in_use(&path).await {
            return Err(ServeError::InUse { path });
        }
        if remove_stale_socket(&path).map_err(|source| ServeError::Stale {
            path: path.clone(),
            source,
        })? {
            tracing::info!(set, socket = %path.display(), "Plugin['{set}']: removed stale socket");
        }
        let listener = UnixListener::bind(&path).map_err(|source| ServeError::Bind {
            path: path.clone(),
            source,
        })?;
        let identity = socket_identity(&path);
        let (streams, ended_streams) = StreamBook::new();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let service = DevicePluginService {
            set: set.to_string(),
            context: context.clone(),
            stop: stop.clone(),
            tasks: tasks.clone(),
            streams: Arc::clone(&streams),
        };
        let shutdown = stop.clone();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                    shutdown.cancelled().await
                }),
        );
        tracing::info!(set, socket = %path.display(), "Plugin['{set}']: serving on {}", path.display());
        Ok(Self {
            path,
            identity,
            streams,
            ended_streams,
            stop,
            tasks,
            server,
            registered_at: None,
        })
    }

    /// Reports whether our socket file is still the one we bound.
    pub(crate) fn socket_intact(&self) -> bool {
        self.identity.is_some() && socket_identity(&self.path) == self.identity
    }

    /// Stops the generation: ends its streams, joins the server and
    /// removes the socket if it is still ours.
    pub(crate) async fn stop(mut self, set: &str) {
        self.stop.cancel();
        self.tasks.close();
        let stopped = self.server.is_finished()
            || tokio::time::timeout(STOP_TIMEOUT, &mut self.server)
                .await
                .is_ok();
        if !stopped {
            tracing::warn!(
                set,
                "Plugin['{set}']: server did not stop in {STOP_TIMEOUT:?}, aborting it"
            );
            self.server.abort();
        }
        if tokio::time::timeout(STOP_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                set,
                "Plugin['{set}']: ListAndWatch streams did not end in {STOP_TIMEOUT:?}"
            );
        }
        if let Some(identity) = self.identity {
            match remove_own_socket(&self.path, identity) {
                Ok(true) => {
                    tracing::debug!(set, socket = %self.path.display(), "removed own socket")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(set, socket = %self.path.display(), %error, "cannot remove own socket")
                }
            }
        }
    }
}
