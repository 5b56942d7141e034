//! Serving an axum router with the bounds a listener needs: a timeout for the request head (a
//! client that connects and dribbles bytes cannot hold a connection), a timeout per request, and
//! a cap on requests in progress beyond which new ones are shed at once with 503 + `Retry-After`
//! instead of queueing without bound. At shutdown the listener closes and requests in progress
//! finish; the service's drain bounds how long that may take. HTTP/1.1 only.

use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::ServiceBuilder;
use tracing::Instrument;

/// Requests shed or timed out, by `reason` (`overloaded`, `timeout`).
pub const HTTP_SHED: &str = "substrate_http_requests_shed_total";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpLimits {
    /// Longest a client may take to send a request line and headers.
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Longest a request may take in all, its body included; then 503 + `Retry-After`.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Longest reading a request body may take; then 408.
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// Requests in progress at once; more are answered 503 + `Retry-After` immediately.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// The `Retry-After` of shed requests, in seconds.
    #[serde(default = "default_retry_after_secs")]
    pub retry_after_secs: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: default_header_read_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
            body_read_timeout_ms: default_body_read_timeout_ms(),
            max_concurrent_requests: default_max_concurrent_requests(),
            retry_after_secs: default_retry_after_secs(),
        }
    }
}

fn default_header_read_timeout_ms() -> u64 {
    10_000
}

fn default_request_timeout_ms() -> u64 {
    30_000
}

fn default_body_read_timeout_ms() -> u64 {
    10_000
}

fn default_max_concurrent_requests() -> usize {
    2048
}

fn default_retry_after_secs() -> u64 {
    1
}

impl HttpLimits {
    /// The first key that cannot work, named under `prefix`.
    pub fn check(&self, prefix: &str) -> Result<(), crate::ConfigError> {
        for (key, value) in [
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests as u64,
            ),
        ] {
            if value == 0 {
                return Err(crate::ConfigError::invalid(
                    format!("{prefix}.{key}"),
                    "must be > 0",
                ));
            }
        }
        Ok(())
    }

    pub fn body_read_timeout(&self) -> Duration {
        Duration::from_millis(self.body_read_timeout_ms)
    }
}

/// `router` behind the request timeout and the concurrency cap with load shedding; every answer
/// that leaves the request's body unread (a refusal, a shed request) closes the connection.
pub fn bounded(router: Router, limits: &HttpLimits) -> Router {
    let retry_after = limits.retry_after_secs;
    router
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(move |error: BoxError| async move {
                    shed(&error, retry_after)
                }))
                .load_shed()
                // One limit for the whole router (the plain layer would give each route its own).
                .layer(GlobalConcurrencyLimitLayer::new(
                    limits.max_concurrent_requests,
                ))
                .timeout(Duration::from_millis(limits.request_timeout_ms)),
        )
        .layer(axum::middleware::from_fn(close_if_body_unread))
}

/// `router`'s routes, each request in a server span (OpenTelemetry HTTP conventions) that
/// continues the caller's `traceparent`. Call after the routes are added: requests that match no
/// route (the fallback) are not traced. Without tracing the layer passes requests straight on.
pub fn traced<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.route_layer(axum::middleware::from_fn(trace_request))
}

async fn trace_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !crate::trace::enabled() {
        return next.run(request).await;
    }
    let parent = request
        .headers()
        .get(crate::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::trace::TraceParent::parse);
    let span = crate::trace::continuing(parent, || {
        let method = request.method().as_str();
        let route = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map(|p| p.as_str())
            .unwrap_or_default();
        tracing::debug_span!(
            "http request",
            otel.name = format!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = method,
            http.route = route,
            url.path = request.uri().path(),
            url.scheme = "http",
            network.protocol.version = "1.1",
            user_agent.original = request
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
            http.response.status_code = tracing::field::Empty,
        )
    });
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

/// Adds `Connection: close` to an answer that left the request's body unread.
///
/// hyper ends a connection whose request body was not read to its end (what is left cannot be
/// told from the next request), but the answer does not say so: a client that sends its next
/// request on that connection gets no answer at all. Refusals before or while reading the body
/// (401, 404, 405, 408, 413, 415, 429, 503) therefore say that the connection closes.
pub async fn close_if_body_unread(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !headers.contains_key(header::TRANSFER_ENCODING) && declared.unwrap_or(0) == 0 {
        return next.run(request).await;
    }
    let read_to_end = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    // Polled only once the body's last bytes were read.
    let end = futures::stream::poll_fn({
        let read_to_end = read_to_end.clone();
        move |_| -> std::task::Poll<Option<Result<axum::body::Bytes, axum::Error>>> {
            read_to_end.store(true, std::sync::atomic::Ordering::Relaxed);
            std::task::Poll::Ready(None)
        }
    });
    let body =
        axum::body::Body::from_stream(futures::StreamExt::chain(body.into_data_stream(), end));
    let mut response = next
        .run(axum::extract::Request::from_parts(parts, body))
        .await;
    if !read_to_end.load(std::sync::atomic::Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn shed(error: &BoxError, retry_after: u64) -> Response {
    let (reason, message) = if error.is::<tower::load_shed::error::Overloaded>() {
        ("overloaded", "too many requests in progress; retry later")
    } else if error.is::<tower::timeout::error::Elapsed>() {
        ("timeout", "the request took too long; retry later")
    } else {
        ("unavailable", "the request could not be served")
    };
    metrics::counter!(HTTP_SHED, "reason" => reason).increment(1);
    let body = serde_json::json!({"error": {"code": reason, "message": message}});
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
    response
}

/// Serves `router` (already [`bounded`] or not) on `listener` until `shutdown`, then lets the
/// requests in progress finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: keep serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        // Handlers may read the client's address with `ConnectInfo<SocketAddr>`.
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: axum::extract::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                request
            },
        ));
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::{header, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    /// An answer that left a declared body unread closes the connection; one that read it, or
    /// a request without a body, keeps it.
    #[tokio::test]
    async fn answers_that_leave_the_body_unread_close_the_connection() {
        let router = Router::new()
            .route(
                "/read",
                post(|body: Body| async move {
                    axum::body::to_bytes(body, 1024).await.unwrap();
                    StatusCode::BAD_REQUEST
                }),
            )
            .route(
                "/refuse",
                post(|| async { StatusCode::UNAUTHORIZED }).get(|| async { "ok" }),
            )
            .layer(axum::middleware::from_fn(close_if_body_unread));
        for (method, path, body, closes) in [
            ("POST", "/read", "{}", false),
            ("POST", "/refuse", "{}", true),
            ("POST", "/refuse", "", false),
            ("GET", "/refuse", "", false),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(header::CONTENT_LENGTH, body.len())
                .body(Body::from(body))
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            assert_eq!(
                response
                    .headers()
                    .get(header::CONNECTION)
                    .is_some_and(|v| v == "close"),
                closes,
                "{method} {path} {body:?}"
            );
        }
    }
}
