//! Dead-letter routing: a record that cannot be processed is copied, bytes untouched, to a
//! dead-letter topic with headers naming where it came from and why, so its partition moves on.

use rdkafka::message::{Header, Message};
use substrate_runtime::failure::{Backoff, Classify};
use tokio_util::sync::CancellationToken;

use crate::origin::{
    copy_headers, Origin, DLQ_ATTEMPTS, DLQ_ERROR, DLQ_HEADER_PREFIX, DLQ_SERVICE,
    DLQ_SOURCE_OFFSET, DLQ_SOURCE_PARTITION, DLQ_SOURCE_TOPIC, RETRY_HEADER_PREFIX,
};
use crate::producer::{Acked, ProduceError, Producer};

/// Counter: records dead-lettered, by source `topic` and `reason` (`permanent`: refused for
/// good; `retries_exhausted`: the retry topics' schedule ran out).
pub const DEAD_LETTERS: &str = "substrate_dead_letters_total";

/// Counts one letter stored on the dead-letter topic.
pub fn count(source_topic: &str, reason: &'static str) {
    metrics::counter!(DEAD_LETTERS, "topic" => source_topic.to_string(), "reason" => reason)
        .increment(1);
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
        self.produce(
            message,
            message.payload().unwrap_or_default(),
            origin,
            error,
            attempts,
        )
        .await
    }

    /// Dead-letters `message` for good: transient produce failures are retried (backing off)
    /// until the letter is stored; a letter the broker refuses (a value over its size limit) is
    /// stored without the value, its error saying so, so the partition still moves on. Counts
    /// and logs the letter; false only when shutdown interrupted it.
    pub async fn park<M: Message>(
        &self,
        message: &M,
        origin: &Origin,
        error: &str,
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> bool {
        tracing::warn!(
            service = %self.service,
            topic = %origin.topic,
            partition = origin.partition,
            offset = origin.offset,
            %error,
            "dead-lettering a record"
        );
        let mut backoff = Backoff::new("dead_letter");
        let mut error = error.to_string();
        let mut payload = message.payload().unwrap_or_default();
        loop {
            match self
                .produce(message, payload, origin, &error, attempts)
                .await
            {
                Ok(_) => {
                    backoff.succeeded();
                    count(&origin.topic, "permanent");
                    return true;
                }
                Err(e) if e.is_transient() => {
                    if !backoff.wait(shutdown, &e).await {
                        return false;
                    }
                }
                Err(e) if !payload.is_empty() => {
                    tracing::error!(error = %e, "the dead-letter topic refused the record; storing the letter without its value");
                    error =
                        format!("{error}; value dropped: the dead-letter topic refused it: {e}");
                    payload = &[];
                }
                Err(e) => {
                    // Even an empty letter is refused: that is the deployment (a missing topic,
                    // an ACL), not the record. Hold it and say so until an operator fixes it.
                    if !backoff.wait(shutdown, &e).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn produce<M: Message>(
        &self,
        message: &M,
        payload: &[u8],
        origin: &Origin,
        error: &str,
        attempts: u32,
    ) -> Result<Acked, ProduceError> {
        let mut headers = copy_headers(message, &[DLQ_HEADER_PREFIX, RETRY_HEADER_PREFIX]);
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
            .send(&self.topic, message.key(), payload, headers)
            .await
    }
}
