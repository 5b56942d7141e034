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
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for h in original.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let attempts = attempts.to_string();
        let error: String = error.chars().take(2000).collect();
        for (key, value) in [
            (DLQ_SOURCE_TOPIC, message.topic()),
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
