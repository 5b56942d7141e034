//! Metric names of the gateway, with their meaning. Produce latency per topic is recorded by
//! `substrate_kafka` (`substrate_kafka_produce_seconds`).

/// Counter: HTTP requests by `route` and `status`.
pub const REQUESTS: &str = "gateway_requests_total";
/// Histogram: request duration in seconds by `route`.
pub const REQUEST_SECONDS: &str = "gateway_request_duration_seconds";
/// Counter: rejected requests or batch items by `reason` (the error code).
pub const REJECTED: &str = "gateway_rejected_total";
/// Counter: events acknowledged by the broker by `route`.
pub const EVENTS_ACCEPTED: &str = "gateway_events_accepted_total";
/// Counter: routes.yaml reloads by `result` (`applied`, `invalid`) and `file`.
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
    metrics::describe_histogram!(REQUEST_SECONDS, "HTTP request duration by route");
    metrics::describe_counter!(REJECTED, "Rejected requests or batch items by reason");
    metrics::describe_counter!(
        EVENTS_ACCEPTED,
        "Events acknowledged by the broker by route"
    );
    metrics::describe_counter!(ROUTES_RELOADS, "routes.yaml reloads by result");
}
