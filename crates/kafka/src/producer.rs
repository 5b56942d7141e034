//! The platform's producer: idempotent, `acks=all`, and honest about failure. A send resolves
//! only when the broker acknowledged the record; a full queue or an unreachable broker is
//! reported as `Unavailable` so callers can answer 503 instead of buffering without bound.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use substrate_runtime::failure::{Class, Classify};

use crate::KafkaConfig;

pub const PRODUCE_LATENCY: &str = "substrate_kafka_produce_seconds";
pub const PRODUCE_ERRORS: &str = "substrate_kafka_produce_errors_total";

#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// Transient: the queue is full or the broker did not acknowledge in time. Retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// Permanent for this record (too large, unknown topic, fatal producer state).
    #[error("produce rejected: {0}")]
    Rejected(String),
}

impl Classify for ProduceError {
    fn class(&self) -> Class {
        match self {
            Self::Unavailable(_) => Class::Transient,
            Self::Rejected(_) => Class::Permanent,
        }
    }
}

impl ProduceError {
    /// Outages, overload and a topic not (yet) known to the cluster are transient: no record
    /// causes them and retrying holds the input until they pass. What the broker refuses for
    /// this record (its size, its format) is permanent.
    fn classify(error: KafkaError) -> Self {
        let code = error.rdkafka_error_code();
        match code {
            Some(
                RDKafkaErrorCode::QueueFull
                | RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::BrokerNotAvailable
                | RDKafkaErrorCode::NotEnoughReplicas
                | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                | RDKafkaErrorCode::LeaderNotAvailable
                | RDKafkaErrorCode::NotLeaderForPartition
                | RDKafkaErrorCode::NetworkException
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownPartition,
            ) => Self::Unavailable(error.to_string()),
            _ => Self::Rejected(error.to_string()),
        }
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

impl Producer {
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let inner: FutureProducer = config.producer_config().create()?;
        Ok(Self { inner })
    }

    pub fn inner(&self) -> &FutureProducer {
        &self.inner
    }

    /// Sends one record and waits for the broker's acknowledgement. Never blocks on a full
    /// queue: that is reported as `Unavailable` at once.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Acked, ProduceError> {
        let started = Instant::now();
        let mut record = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(payload)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        let result = self
            .inner
            .send(record, Timeout::After(Duration::ZERO))
            .await;
        metrics::histogram!(PRODUCE_LATENCY, "topic" => topic.to_string())
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(delivery) => Ok(Acked {
                partition: delivery.partition,
                offset: delivery.offset,
            }),
            Err((error, _message)) => {
                let error = ProduceError::classify(error);
                metrics::counter!(PRODUCE_ERRORS, "topic" => topic.to_string(), "transient" => error.is_transient().to_string()).increment(1);
                Err(error)
            }
        }
    }

    /// Waits for every outstanding record to be acknowledged (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(Timeout::After(timeout))
    }

    /// The producer's part of a drain: waits, at most `grace`, off the async threads, for the
    /// records still in flight to be acknowledged.
    pub async fn close(&self, grace: Duration) {
        let producer = self.clone();
        match tokio::task::spawn_blocking(move || producer.flush(grace)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "records unacknowledged at shutdown"),
            Err(e) => tracing::warn!(error = %e, "flushing the producer failed"),
        }
    }

    /// A readiness check for `/readyz`: a metadata request with a 2 s timeout on every call.
    pub fn ready_check(
        &self,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
           + Send
           + Sync
           + 'static {
        let producer = self.clone();
        move || {
            let producer = producer.clone();
            Box::pin(async move { producer.ping(Duration::from_secs(2)).await })
        }
    }

    /// Asks the cluster for metadata: proves a broker answers.
    pub async fn ping(&self, timeout: Duration) -> Result<(), String> {
        let producer = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
                .map(|md| md.brokers().len())
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
        .and_then(|brokers| {
            if brokers == 0 {
                Err("no brokers in metadata".to_string())
            } else {
                Ok(())
            }
        })
    }
}
