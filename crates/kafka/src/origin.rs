//! Where a record came from, and the header names that carry it across retry topics and into
//! the dead letter. Both the delay-topic retries and the dead-letter routing read these names;
//! nothing here produces or consumes.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

/// Every dead-letter header starts with this.
pub const DLQ_HEADER_PREFIX: &str = "dlq_";
pub const DLQ_SOURCE_TOPIC: &str = "dlq_source_topic";
pub const DLQ_SOURCE_PARTITION: &str = "dlq_source_partition";
pub const DLQ_SOURCE_OFFSET: &str = "dlq_source_offset";
pub const DLQ_ERROR: &str = "dlq_error";
pub const DLQ_ATTEMPTS: &str = "dlq_attempts";
pub const DLQ_SERVICE: &str = "dlq_service";

/// Every retry header starts with this (so a replay can drop them all).
pub const RETRY_HEADER_PREFIX: &str = "retry_";
/// Attempts already made when the record was re-produced.
pub const RETRY_ATTEMPTS: &str = "retry_attempts";
/// Epoch milliseconds from which the record may be processed again.
pub const RETRY_DUE_MS: &str = "retry_due_ms";
/// Why the last attempt failed.
pub const RETRY_ERROR: &str = "retry_error";
pub const RETRY_ORIGIN_TOPIC: &str = "retry_origin_topic";
pub const RETRY_ORIGIN_PARTITION: &str = "retry_origin_partition";
pub const RETRY_ORIGIN_OFFSET: &str = "retry_origin_offset";
/// The `traceparent` of the record's first attempt; each retry's span links to it.
pub const RETRY_ORIGIN_TRACEPARENT: &str = "retry_origin_traceparent";

/// Where a record first entered the platform's processing (before any retry topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl Origin {
    pub fn of<M: Message>(message: &M) -> Self {
        Self {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
        }
    }
}

/// The headers of `message` except those whose key starts with one of `drop_prefixes`.
pub fn copy_headers<M: Message>(message: &M, drop_prefixes: &[&str]) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for h in original.iter() {
            if drop_prefixes.iter().any(|p| h.key.starts_with(p)) {
                continue;
            }
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    headers
}
