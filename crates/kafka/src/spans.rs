//! Spans of Kafka records, named and attributed by the OpenTelemetry messaging conventions: one
//! `process <topic>` consumer span per record, a child of the context its `traceparent` header
//! carries (linked to the first attempt's context when it came through a retry topic), and a
//! `send <topic>` producer span per record sent, whose context the record carries on. Without
//! tracing (`substrate_runtime::trace::enabled` false) every span here is disabled and free.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use substrate_runtime::trace::{self, TraceParent, TRACEPARENT};
use tracing::field::Empty;
use tracing::Span;

use crate::headers::{header_str, CE_ID};
use crate::origin::RETRY_ORIGIN_TRACEPARENT;

/// The context a record carries in its `traceparent` header.
pub fn record_context<M: Message>(message: &M) -> Option<TraceParent> {
    message
        .headers()
        .and_then(|h| header_str(h, TRACEPARENT))
        .and_then(TraceParent::parse)
}

/// Histogram: a record's age when its consumer takes it up (now − the record's timestamp), by
/// `group` and `topic`: the latency an event has gathered before this hop works on it.
pub const RECORD_AGE: &str = "substrate_kafka_record_age_seconds";

/// The consumer span for processing `message` in consumer group `group` (every consumer calls
/// this once per record it takes up, which also records the record's age).
pub fn process<M: Message>(message: &M, group: &str) -> Span {
    let topic = message.topic();
    if let Some(ms) = message.timestamp().to_millis() {
        let age_ms = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(ms)
            .max(0);
        metrics::histogram!(RECORD_AGE, "group" => group.to_string(), "topic" => topic.to_string())
            .record(age_ms as f64 / 1000.0);
    }
    let headers = message.headers();
    let span = trace::continuing(record_context(message), || {
        tracing::debug_span!(
            "process",
            otel.name = format!("process {topic}"),
            otel.kind = "consumer",
            otel.status_code = Empty,
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = topic,
            messaging.destination.partition.id = message.partition().to_string(),
            messaging.kafka.offset = message.offset(),
            messaging.consumer.group.name = group,
            messaging.message.id = headers.and_then(|h| header_str(h, CE_ID)),
            error.type = Empty,
        )
    });
    if let Some(first) = headers
        .filter(|_| !span.is_disabled())
        .and_then(|h| header_str(h, RETRY_ORIGIN_TRACEPARENT))
        .and_then(TraceParent::parse)
    {
        trace::add_link(&span, first);
    }
    span
}

/// Marks `span` failed with `error` (a short, non-secret description).
pub fn record_error(span: &Span, error_type: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error_type);
}

/// The producer span for sending one record with `headers` to `topic`: a child of the current
/// span, or, outside any span (a timer firing), of the context the headers carry. Disabled
/// under a sampled-out parent: the record then carries its headers' context unchanged.
pub(crate) fn send(topic: &str, headers: &OwnedHeaders) -> Span {
    if !trace::enabled() {
        return Span::none();
    }
    // Under a current span the span is its child (or, sampled out, not created at all).
    let remote = match TraceParent::current() {
        Some(_) => None,
        None => header_str(headers, TRACEPARENT).and_then(TraceParent::parse),
    };
    trace::continuing(remote, || {
        tracing::debug_span!(
            "send",
            otel.name = format!("send {topic}"),
            otel.kind = "producer",
            otel.status_code = Empty,
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = topic,
            messaging.destination.partition.id = Empty,
            messaging.kafka.offset = Empty,
            error.type = Empty,
        )
    })
}

/// `headers` with `traceparent` replaced by `span`'s context (unchanged when `span` has none).
pub(crate) fn carry(span: &Span, headers: OwnedHeaders) -> OwnedHeaders {
    let Some(context) = TraceParent::of(span) else {
        return headers;
    };
    let value = context.to_string();
    let mut carried = OwnedHeaders::new_with_capacity(headers.count() + 1);
    for h in headers.iter().filter(|h| h.key != TRACEPARENT) {
        carried = carried.insert(Header {
            key: h.key,
            value: h.value,
        });
    }
    carried.insert(Header {
        key: TRACEPARENT,
        value: Some(value.as_str()),
    })
}
