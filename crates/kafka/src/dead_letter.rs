//! Dead-letter routing: a record that cannot be processed is copied, bytes untouched, to a
//! dead-letter topic with headers naming where it came from and why, so its partition moves on.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::producer::{Acked, ProduceError, Producer};

pub const DLQ_SOURCE_TOPIC: &str = "dlq_source_topic";
pub const DLQ_SOURCE_PARTITION: &str = "dlq_source_partition";
pub const DLQ_SOURCE_OFFSET: &str = "dlq_source_offset";
pub const DLQ_ERROR: &str = "dlq_error";
pub const DLQ_ATTEMPTS: &str = "dlq_attempts";
pub const DLQ_SERVICE: &str = "dlq_service";

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

#[derive(Clone)]
pub struct DeadLetter {
    producer: Producer,
    topic: String,
    service: String,
}

impl DeadLetter {
    pub fn new(producer: Producer, topic: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            producer,
            topic: topic.into(),
            service: service.into(),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Copies `message` to the dead-letter topic and waits for the acknowledgement.
    pub async fn send<M: Message>(
        &self,
        message: &M,
        error: &str,
        attempts: u32,
    ) -> Result<Acked, ProduceError> {
        self.send_from(message, &Origin::of(message), error, attempts)
            .await
    }

    /// Like `send`, naming `origin` as the source (a record that went through retry topics is
    /// reported where it first came from).
    pub async fn send_from<M: Message>(
        &self,
        message: &M,
        origin: &Origin,
        error: &str,
        attempts: u32,
    ) -> Result<Acked, ProduceError> {
        let mut headers = copy_headers(message, &["dlq_", crate::retry::HEADER_PREFIX]);
        let partition = origin.partition.to_string();
        let offset = origin.offset.to_string();
        let attempts = attempts.to_string();
        let error: String = error.chars().take(2000).collect();
        for (key, value) in [
            (DLQ_SOURCE_TOPIC, origin.topic.as_str()),
            (DLQ_SOURCE_PARTITION, partition.as_str()),
            (DLQ_SOURCE_OFFSET, offset.as_str()),
            (DLQ_ERROR, error.as_str()),
            (DLQ_ATTEMPTS, attempts.as_str()),
            (DLQ_SERVICE, self.service.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        self.producer
            .send(
                &self.topic,
                message.key(),
                message.payload().unwrap_or_default(),
                headers,
            )
            .await
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
