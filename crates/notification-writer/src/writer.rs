//! The consume → decode → map → batch insert loop. A batch is written in one statement when it
//! is full or old enough; offsets are stored only after it committed. Postgres failures are
//! retried with backoff without moving offsets; undecodable or unmappable records go to the
//! dead-letter topic and their partition moves on.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{BorrowedMessage, Message};
use substrate_avro::{avro_to_json, Registry};
use substrate_db::notifications::{insert_batch, NewNotification};
use substrate_db::Pool;
use substrate_kafka::consumer::OffsetBatch;
use substrate_kafka::headers::{header_str, CE_ID, CE_TIME};
use substrate_kafka::DeadLetter;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::mapping::{Mapping, Origin};
use crate::metrics::{BATCH_ROWS, DB_RETRIES, DEAD_LETTERED, ROWS_INSERTED};

pub struct Writer {
    pub consumer: StreamConsumer,
    pub registry: Registry,
    pub pool: Pool,
    pub dead_letter: DeadLetter,
    pub mappings: BTreeMap<String, Mapping>,
    pub batch_max_rows: usize,
    pub batch_max: Duration,
}

enum Outcome {
    Row(NewNotification),
    /// Permanently unprocessable: dead-letter it.
    Poison(String),
}

impl Writer {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut rows: Vec<NewNotification> = Vec::with_capacity(self.batch_max_rows);
        let mut offsets = OffsetBatch::new();
        let mut deadline: Option<Instant> = None;
        loop {
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = timer => {
                    self.flush(&mut rows, &mut offsets, &shutdown).await?;
                    deadline = None;
                }
                message = self.consumer.recv() => {
                    let message = match message {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "consumer error");
                            continue;
                        }
                    };
                    match self.process(&message, &shutdown).await {
                        Some(Outcome::Row(row)) => rows.push(row),
                        Some(Outcome::Poison(error)) => {
                            self.dead_letter(&message, &error, &shutdown).await?;
                        }
                        None => break, // shutting down while the registry was unreachable
                    }
                    offsets.processed(message.topic(), message.partition(), message.offset());
                    if deadline.is_none() {
                        deadline = Some(Instant::now() + self.batch_max);
                    }
                    if rows.len() >= self.batch_max_rows {
                        self.flush(&mut rows, &mut offsets, &shutdown).await?;
                        deadline = None;
                    }
                }
                // Nothing more is waiting: write what was read now rather than at the deadline
                // (under load records keep arriving and batches fill up to batch_max_rows).
                _ = std::future::ready(()), if !rows.is_empty() => {
                    self.flush(&mut rows, &mut offsets, &shutdown).await?;
                    deadline = None;
                }
            }
        }
        // Drain: what was read before shutdown is written (bounded), then its offsets stored.
        let drain = CancellationToken::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.flush(&mut rows, &mut offsets, &drain),
        )
        .await;
        if let Err(e) = rdkafka::consumer::Consumer::commit_consumer_state(
            &self.consumer,
            rdkafka::consumer::CommitMode::Sync,
        ) {
            tracing::debug!(error = %e, "final commit");
        }
        Ok(())
    }

    /// Decodes and maps one record. Registry outages are retried here (the record is fine);
    /// `None` means shutdown interrupted the retries.
    async fn process(
        &self,
        message: &BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) -> Option<Outcome> {
        let Some(mapping) = self.mappings.get(message.topic()) else {
            return Some(Outcome::Poison(format!(
                "no mapping for topic {}",
                message.topic()
            )));
        };
        let Some(payload) = message.payload() else {
            return Some(Outcome::Poison("the record has no value".into()));
        };
        let mut backoff = Backoff::new();
        let value = loop {
            match self.registry.decode(payload).await {
                Ok((value, _id)) => break value,
                Err(e) if e.retriable => {
                    tracing::warn!(error = %e, "schema registry unavailable; retrying");
                    if !backoff.wait(shutdown).await {
                        return None;
                    }
                }
                Err(e) => return Some(Outcome::Poison(format!("undecodable: {}", e.message))),
            }
        };
        let headers = message.headers();
        let origin = Origin {
            topic: message.topic(),
            partition: message.partition(),
            offset: message.offset(),
            ce_id: headers.as_ref().and_then(|h| header_str(*h, CE_ID)),
            ce_time: headers.as_ref().and_then(|h| header_str(*h, CE_TIME)),
        };
        Some(match mapping.to_row(avro_to_json(&value), &origin) {
            Ok(row) => Outcome::Row(row),
            Err(e) => Outcome::Poison(format!("schema mismatch: {e}")),
        })
    }

    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        error: &str,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        tracing::warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), %error, "dead-lettering a record");
        let mut backoff = Backoff::new();
        loop {
            match self.dead_letter.send(message, error, 1).await {
                Ok(_) => {
                    metrics::counter!(DEAD_LETTERED, "topic" => message.topic().to_string())
                        .increment(1);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dead-letter produce failed; retrying");
                    if !backoff.wait(shutdown).await {
                        anyhow::bail!("shutdown while dead-lettering");
                    }
                }
            }
        }
    }

    /// Inserts the batch (retrying until it commits or shutdown), then stores the offsets.
    async fn flush(
        &self,
        rows: &mut Vec<NewNotification>,
        offsets: &mut OffsetBatch,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut backoff = Backoff::new();
        loop {
            match self.insert(rows).await {
                Ok(inserted) => {
                    metrics::counter!(ROWS_INSERTED).increment(inserted);
                    metrics::histogram!(BATCH_ROWS).record(rows.len() as f64);
                    break;
                }
                Err(e) => {
                    metrics::counter!(DB_RETRIES).increment(1);
                    tracing::warn!(error = %e, rows = rows.len(), "writing the batch failed; offsets stay put, retrying");
                    if !backoff.wait(shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
        if let Err(e) = offsets.store(&self.consumer) {
            // A revoked partition cannot take the offset; its next owner re-reads and the
            // unique event id keeps the rows single.
            tracing::warn!(error = %e, "storing offsets failed");
        }
        rows.clear();
        *offsets = OffsetBatch::new();
        Ok(())
    }

    async fn insert(&self, rows: &[NewNotification]) -> Result<u64, substrate_db::DbError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let client = self.pool.get().await?;
        insert_batch(&**client, rows).await
    }
}

/// Exponential backoff from 100 ms to 5 s that gives up when shutdown starts.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: Duration::from_millis(100),
        }
    }

    async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
