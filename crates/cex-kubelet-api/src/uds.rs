//! tonic over Unix domain sockets: a client channel that dials a socket
//! path, since gRPC URIs cannot name one.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tower::service_fn;

/// Opens a gRPC channel to the server listening on the Unix socket `path`.
///
/// The URI is a placeholder that tonic requires; the connector ignores it
/// and dials `path`. The connection is made before this returns, so a
/// missing socket fails here rather than on the first call.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_path_buf();
    Endpoint::from_static("http://unix.socket")
        .connect_with_connector(service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}
