//! The HTTP listener on `METRICS_LISTEN`: `/metrics`, `/healthz` and
//! `/readyz`, served with hyper over HTTP/1.1.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{prometheus_text, text};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Probes;

/// `Content-Type` of an OpenMetrics 1.0 text response.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the probe bodies.
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";
/// Bound on reading a request's headers, so an idle client cannot hold a
/// connection open.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on waiting for open connections when the agent stops.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The listener cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address cannot be bound (in use, or not an address of this host).
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the handlers read.
struct State {
    registry: Registry,
    probes: Probes,
}

/// A bound metrics listener, ready to serve.
pub struct MetricsServer {
    listener: TcpListener,
    state: Arc<State>,
}

/// Binds `addr`. The agent binds before it starts any task, so that a
/// taken port fails the start-up instead of leaving it without probes.
pub async fn listen(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

impl MetricsServer {
    /// Serves `registry` and `probes` on `listener`.
    pub fn new(listener: TcpListener, registry: Registry, probes: Probes) -> Self {
        MetricsServer {
            listener,
            state: Arc::new(State { registry, probes }),
        }
    }

    /// Returns the bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves connections until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        if let Some(addr) = self.local_addr() {
            tracing::info!(%addr, "metrics: serving /metrics, /healthz and /readyz on {addr}");
        }
        let connections = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                () = cancel.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    // Running out of file descriptors is the usual cause;
                    // pause instead of spinning on it.
                    tracing::warn!(%error, "metrics: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = Arc::clone(&self.state);
            connections.spawn(serve_connection(stream, state, cancel.clone()));
        }
        connections.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
            .await
            .is_err()
        {
            tracing::debug!("metrics: connections still open at shutdown");
        }
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    state: Arc<State>,
    cancel: CancellationToken,
) {
    let service = service_fn(move |request| {
        let state = Arc::clone(&state);
        async move { Ok::<_, Infallible>(route(&state, &request).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "metrics: connection ended with an error");
    }
}

async fn route(state: &Arc<State>, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n".to_string(),
        );
    }
    match request.uri().path() {
        "/metrics" => metrics(state, wants_openmetrics(request)).await,
        "/healthz" => probe(state.probes.health()),
        "/readyz" => probe(state.probes.ready()),
        path => plain(
            StatusCode::NOT_FOUND,
            format!("{path} not found; try /metrics, /healthz or /readyz\n"),
        ),
    }
}

/// Reports whether the `Accept` header lists OpenMetrics text.
fn wants_openmetrics(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let media = item.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("application/openmetrics-text")
        })
}

/// Encodes the registry on a blocking thread, because the collector lists
/// the zcrypt nodes and shadow dirs on disk.
async fn metrics(state: &Arc<State>, openmetrics: bool) -> Response<Full<Bytes>> {
    let state = Arc::clone(state);
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        let result = if openmetrics {
            text::encode(&mut body, &state.registry)
        } else {
            prometheus_text::encode(&mut body, &state.registry)
        };
        result.map(|()| body)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => {
            let content_type = if openmetrics {
                OPENMETRICS_CONTENT_TYPE
            } else {
                prometheus_text::CONTENT_TYPE
            };
            respond(StatusCode::OK, content_type, body)
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "metrics: encoding the metrics failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed\n".to_string(),
            )
        }
        Err(error) => {
            tracing::error!(%error, "metrics: the encoding task failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed\n".to_string(),
            )
        }
    }
}

fn probe((ok, body): (bool, String)) -> Response<Full<Bytes>> {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    plain(status, body)
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    respond(status, PLAIN_TEXT, body)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
