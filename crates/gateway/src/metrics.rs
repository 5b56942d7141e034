//! Metric names of the gateway, with their meaning. Produce latency per topic is recorded by
//! `substrate_kafka` (`substrate_kafka_produce_seconds`).

use std::borrow::Cow;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::Response;

/// Counter: HTTP requests by `route` and `status`.
pub const REQUESTS: &str = "gateway_requests_total";
/// Histogram: request duration in seconds by `route` (for the stream: until its headers).
pub const REQUEST_SECONDS: &str = "gateway_request_duration_seconds";
/// Histogram: declared request body sizes (`Content-Length`) in bytes by `route`.
pub const REQUEST_BODY_BYTES: &str = "gateway_request_body_bytes";
/// Counter: refused requests and batch items by `route` and `reason` (the error code).
pub const REJECTED: &str = "gateway_rejected_total";
/// Histogram: events per batch request, by `route`.
pub const BATCH_EVENTS: &str = "gateway_batch_events";
/// Counter: events acknowledged by the broker by `route`.
pub const EVENTS_ACCEPTED: &str = "gateway_events_accepted_total";
/// Counter: routes.yaml reloads by `outcome` (`applied`, `invalid`) and `file` (the configured
/// path: one value per instance).
pub const ROUTES_RELOADS: &str = "gateway_routes_reloads_total";

/// Counter: failed reads of the API key table (the last good table stays in use).
pub const API_KEYS_REFRESH_FAILURES: &str = "gateway_api_keys_refresh_failures_total";
/// Counter: requests answered from an idempotency record, by `route`.
pub const IDEMPOTENT_REPLAYS: &str = "gateway_idempotent_replays_total";

/// Counter: batches and rows the notification feed broadcast to this instance's streams.
pub const FEED_BATCHES: &str = "gateway_notification_feed_batches_total";
pub const FEED_ROWS: &str = "gateway_notification_feed_rows_total";
/// Gauge: notification streams open on this instance.
pub const STREAMS_OPEN: &str = "gateway_notification_streams_open";
/// Counter: notification streams ended, by `reason` (`client_closed`, `slow_client`, `lagged`…).
pub const STREAM_ENDS: &str = "gateway_notification_stream_ends_total";

pub fn describe() {
    metrics::describe_counter!(FEED_BATCHES, "Batches the notification feed broadcast");
    metrics::describe_counter!(FEED_ROWS, "Rows the notification feed broadcast");
    metrics::describe_gauge!(STREAMS_OPEN, "Notification streams open");
    metrics::describe_counter!(STREAM_ENDS, "Notification streams ended, by reason");
    metrics::describe_counter!(
        API_KEYS_REFRESH_FAILURES,
        "Failed reads of the API key table"
    );
    metrics::describe_counter!(
        IDEMPOTENT_REPLAYS,
        "Requests answered from an idempotency record, by route"
    );
    metrics::describe_counter!(REQUESTS, "HTTP requests by route and status");
    metrics::describe_histogram!(BATCH_EVENTS, "Events per batch request, by route");
    metrics::describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "HTTP request duration by route"
    );
    metrics::describe_histogram!(
        REQUEST_BODY_BYTES,
        metrics::Unit::Bytes,
        "Declared request body sizes by route"
    );
    metrics::describe_counter!(
        REJECTED,
        "Refused requests and batch items by route and reason"
    );
    metrics::describe_counter!(
        EVENTS_ACCEPTED,
        "Events acknowledged by the broker by route"
    );
    metrics::describe_counter!(ROUTES_RELOADS, "routes.yaml reloads by outcome");
}

/// The `route` label of an answer, set by a handler that knows better than its path (an event
/// route's name), else by [`name_route`] from the endpoint's path.
#[derive(Debug, Clone)]
pub struct RouteName(pub Cow<'static, str>);

/// On an error answer: the refusal's code (`reason`), counted by [`observe`].
#[derive(Debug, Clone, Copy)]
pub struct Refused(pub &'static str);

/// The `route` label of an endpoint without a name of its own: its path below `/api/v1`, with
/// dots (`/api/v1/media/upload-intent` → `media.upload-intent`, `/webhooks/login` →
/// `webhooks.login`).
pub fn route_of_path(path: &str) -> String {
    let path = path.strip_prefix("/api/v1").unwrap_or(path);
    path.trim_matches('/')
        .split('/')
        .filter(|segment| !segment.starts_with('{'))
        .collect::<Vec<_>>()
        .join(".")
}

/// Route layer: names the answer after its endpoint unless the handler did.
pub async fn name_route(request: Request, next: Next) -> Response {
    let name = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| route_of_path(path.as_str()));
    let mut response = next.run(request).await;
    if let Some(name) = name {
        if response.extensions().get::<RouteName>().is_none() {
            response.extensions_mut().insert(RouteName(name.into()));
        }
    }
    response
}

/// Outer layer over every answer of the public router (endpoints, the web app's files, the
/// fallback): requests, duration and body size by `route` (`unmatched` when none named it),
/// refusals by `route` and `reason`.
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteName>()
        .map(|r| r.0.clone())
        .unwrap_or(Cow::Borrowed("unmatched"));
    let status = response.status().as_u16().to_string();
    metrics::histogram!(REQUEST_SECONDS, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    if let Some(bytes) = declared {
        metrics::histogram!(REQUEST_BODY_BYTES, "route" => route.clone()).record(bytes as f64);
    }
    if let Some(Refused(reason)) = response.extensions().get::<Refused>() {
        metrics::counter!(REJECTED, "route" => route.clone(), "reason" => *reason).increment(1);
    }
    metrics::counter!(REQUESTS, "route" => route, "status" => status).increment(1);
    response
}

#[cfg(test)]
mod tests {
    use super::route_of_path;

    #[test]
    fn endpoints_are_named_by_their_path() {
        assert_eq!(
            route_of_path("/api/v1/media/upload-intent"),
            "media.upload-intent"
        );
        assert_eq!(route_of_path("/api/v1/notifications"), "notifications");
        assert_eq!(
            route_of_path("/api/v1/notifications/stream"),
            "notifications.stream"
        );
        assert_eq!(route_of_path("/webhooks/login"), "webhooks.login");
        assert_eq!(
            route_of_path("/api/v1/events/{route}/batch"),
            "events.batch"
        );
        assert_eq!(route_of_path("/healthz"), "healthz");
    }
}
