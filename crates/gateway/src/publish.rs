//! Turning a validated JSON event into a stored Kafka record: Avro in Confluent wire format,
//! CloudEvents + `traceparent` headers, key from the route's key field. Resolves only after the
//! broker acknowledged; anything else becomes a 503 (retry) or 500.

use axum::http::StatusCode;
use serde_json::Value as Json;
use substrate_avro::{Registry, TopicSchema};
use substrate_kafka::{CloudEvent, ProduceError, Producer, TraceParent};
use uuid::Uuid;

use crate::error::ApiError;

/// What a record is written as.
pub struct Target<'a> {
    pub topic: &'a str,
    pub event_type: &'a str,
    pub schema: &'a TopicSchema,
    pub key_field: Option<&'a str>,
}

pub struct Publisher {
    pub registry: Registry,
    pub producer: Producer,
    pub ce_source: String,
    pub retry_after_secs: u64,
}

/// An event checked against its schema and encoded, ready to send.
pub struct Encoded {
    pub event_id: Uuid,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub cloud_event: CloudEvent,
}

impl Publisher {
    /// Validates `event` against the schema and encodes it; no I/O but the registry lookup
    /// (cached after the first use of a topic).
    pub async fn encode(
        &self,
        target: &Target<'_>,
        event_id: Uuid,
        event: &Json,
    ) -> Result<Encoded, ApiError> {
        let value = target
            .schema
            .to_avro(event)
            .map_err(|e| ApiError::invalid_field(e.field, e.message))?;
        let key = target
            .key_field
            .and_then(|field| event.get(field))
            .and_then(|v| match v {
                Json::Null => None,
                Json::String(s) => Some(s.as_bytes().to_vec()),
                other => Some(other.to_string().into_bytes()),
            });
        let payload = self
            .registry
            .encode(target.topic, value)
            .await
            .map_err(|e| {
                if e.retriable {
                    ApiError::unavailable(e.to_string(), self.retry_after_secs)
                } else {
                    tracing::error!(topic = target.topic, error = %e, "encoding failed");
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding_failed",
                        e.to_string(),
                    )
                }
            })?;
        Ok(Encoded {
            event_id,
            key,
            payload,
            cloud_event: CloudEvent::new(event_id, target.event_type, self.ce_source.clone()),
        })
    }

    /// Sends and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        topic: &str,
        encoded: &Encoded,
        trace: &TraceParent,
    ) -> Result<(), ApiError> {
        let headers = encoded.cloud_event.to_headers(trace);
        self.producer
            .send(topic, encoded.key.as_deref(), &encoded.payload, headers)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                ProduceError::Unavailable(msg) => ApiError::unavailable(
                    format!("the event was not stored: {msg}"),
                    self.retry_after_secs,
                ),
                ProduceError::Rejected(msg) => {
                    tracing::error!(topic, error = %msg, "broker rejected a record");
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "produce_failed",
                        format!("the event was not stored: {msg}"),
                    )
                }
            })
    }
}

/// The trace a request's records carry: the request's server span when spans are recorded
/// (sampled out or not, so the next hops follow its decision), else a child of the caller's
/// valid `traceparent`, else a new root.
pub fn trace_from(header: Option<&str>) -> TraceParent {
    TraceParent::outgoing(header.and_then(TraceParent::parse))
}
