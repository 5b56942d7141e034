//! The platform's producer: idempotent, `acks=all`, and honest about failure. A send resolves
//! only when the broker acknowledged the record; a full queue or an unreachable broker is
//! reported as `Unavailable` so callers can answer 503 instead of buffering without bound. Once
//! librdkafka reports a broker connection failed, a send first probes the cluster (one shared,
//! short metadata request); when no broker answers, sends fail at once instead of each waiting
//! out the message timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use substrate_runtime::failure::{Class, Classify};
use tracing::Instrument;

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

/// How long a probe of brokers reported down may take, and how long its answer is trusted.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether librdkafka reported the brokers out of reach, and the last probe's answer.
#[derive(Default)]
pub struct BrokerState {
    down: AtomicBool,
    probe: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

/// The producer's librdkafka context: records what librdkafka says about the brokers.
pub struct BrokerWatch(Arc<BrokerState>);

impl ClientContext for BrokerWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            // Every broker down, or a connection lost or refused: the brokers may be out of
            // reach. The next send probes before it waits out the message timeout.
            Some(
                RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve,
            ) => {
                if !self.0.down.swap(true, Ordering::SeqCst) {
                    tracing::warn!(error = %error, %reason, "a broker connection failed; sends probe the brokers first");
                }
            }
            _ => tracing::error!(error = %error, %reason, "librdkafka error"),
        }
    }
}

#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer<BrokerWatch>,
    state: Arc<BrokerState>,
}

/// `HELP` and units of this crate's metrics (every service produces, so it is done once, with
/// the first producer: after the service installed its recorder).
fn describe_metrics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
        describe_histogram!(
            PRODUCE_LATENCY,
            Unit::Seconds,
            "Produce to broker acknowledgement, by topic"
        );
        describe_counter!(PRODUCE_ERRORS, "Failed produces, by topic and transient");
        describe_histogram!(
            crate::spans::RECORD_AGE,
            Unit::Seconds,
            "A record's age when its consumer takes it up, by group and topic"
        );
        describe_counter!(
            crate::dead_letter::DEAD_LETTERS,
            "Records dead-lettered, by source topic and reason"
        );
        describe_gauge!(
            crate::consumer::CONSUMER_LAG,
            "Records between the group's position and the high watermark, per partition"
        );
        describe_gauge!(
            crate::consumer::HIGH_WATERMARK,
            "The partition's high watermark as the consumer last saw it"
        );
        describe_gauge!(
            crate::consumer::ASSIGNED_PARTITIONS,
            "Partitions assigned to this instance, by group"
        );
    });
}

impl Producer {
    pub fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        describe_metrics();
        let state = Arc::new(BrokerState::default());
        let inner = config
            .producer_config()
            .create_with_context(BrokerWatch(state.clone()))?;
        Ok(Self { inner, state })
    }

    pub fn inner(&self) -> &FutureProducer<BrokerWatch> {
        &self.inner
    }

    /// Whether a send may go to the broker: true unless every broker was reported down and a
    /// probe (one at a time, its answer shared for [`PROBE_TIMEOUT`]) confirms it.
    async fn brokers_reachable(&self) -> bool {
        let state = &self.state;
        if !state.down.load(Ordering::SeqCst) {
            return true;
        }
        let mut probe = state.probe.lock().await;
        if let Some((at, reachable)) = *probe {
            if at.elapsed() < PROBE_TIMEOUT {
                return reachable;
            }
        }
        let reachable = self.ping(PROBE_TIMEOUT).await.is_ok();
        *probe = Some((Instant::now(), reachable));
        if reachable {
            state.down.store(false, Ordering::SeqCst);
            tracing::info!("a broker answers again");
        }
        reachable
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
        let span = crate::spans::send(topic, &headers);
        let headers = crate::spans::carry(&span, headers);
        let result = self
            .send_carried(topic, key, payload, headers)
            .instrument(span.clone())
            .await;
        match &result {
            Ok(acked) => {
                span.record(
                    "messaging.destination.partition.id",
                    acked.partition.to_string(),
                );
                span.record("messaging.kafka.offset", acked.offset);
            }
            Err(e) => crate::spans::record_error(
                &span,
                if e.is_transient() {
                    "unavailable"
                } else {
                    "rejected"
                },
            ),
        }
        result
    }

    async fn send_carried(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Acked, ProduceError> {
        let started = Instant::now();
        if !self.brokers_reachable().await {
            metrics::counter!(PRODUCE_ERRORS, "topic" => topic.to_string(), "transient" => "true")
                .increment(1);
            return Err(ProduceError::Unavailable(
                "every broker is down (no broker answered a metadata request)".into(),
            ));
        }
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
                self.state.down.store(false, Ordering::SeqCst);
                Ok(())
            }
        })
    }
}
