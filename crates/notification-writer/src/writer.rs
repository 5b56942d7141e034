//! The consume → decode → map → batch insert loop. A batch is written in one statement when
//! no further record is waiting or it is full; while it is written the next one is read and
//! decoded (one write at a time, in order). Offsets are stored only after every record of a
//! batch and of the batches before it is written or dead-lettered. Failures follow the platform's model: transient ones (Postgres
//! or the registry unavailable) back off with offsets held; a batch refused for a permanent
//! reason is split in halves until the refused record is alone, which goes to the dead letter
//! while the rest are written; undecodable or unmappable records are dead-lettered at once.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{BorrowedMessage, Message};
use substrate_avro::{avro_to_json, Registry};
use substrate_db::notifications::{insert_batch, NewNotification};
use substrate_db::Pool;
use substrate_kafka::consumer::OffsetBatch;
use substrate_kafka::headers::{header_str, CE_ID, CE_TIME};
use substrate_kafka::{DeadLetter, Origin as RecordOrigin};
use substrate_runtime::failure::{write_splitting, Backoff, Classify, Failure};
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
    /// How long the rows read before shutdown may take to be written.
    pub drain: Duration,
}

/// Shutdown interrupted a retry; what was not written is redelivered after a restart.
struct Interrupted;

/// A batch being written; yields it back (cleared when written) for reuse.
type Writing<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = (Batch<'a>, Result<(), Interrupted>)> + Send + 'a>,
>;

/// Rows read but not yet written, with the records they came from (to dead-letter one).
struct Batch<'a> {
    rows: Vec<NewNotification>,
    sources: Vec<BorrowedMessage<'a>>,
    offsets: OffsetBatch,
}

impl Batch<'_> {
    fn clear(&mut self) {
        self.rows.clear();
        self.sources.clear();
        self.offsets = OffsetBatch::new();
    }
}

impl Writer {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let empty = || Batch {
            rows: Vec::with_capacity(self.batch_max_rows),
            sources: Vec::with_capacity(self.batch_max_rows),
            offsets: OffsetBatch::new(),
        };
        let mut batch = empty();
        // One batch is written while the next is read and decoded: PostgreSQL inserts on one
        // core while the writer decodes on the other. Batches are written one at a time, in
        // order, so each stores offsets only above the previous one's.
        let mut writing: Option<Writing<'_>> = None;
        let mut spare: Option<Batch<'_>> = None;
        let mut deadline: Option<Instant> = None;
        // A batch whose write shutdown interrupted: nothing after it may store offsets.
        let mut interrupted = false;
        loop {
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let idle = writing.is_none();
            let written = async {
                match writing.as_mut() {
                    Some(w) => w.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                (done, result) = written => {
                    writing = None;
                    if result.is_err() {
                        interrupted = true;
                        break;
                    }
                    spare = Some(done);
                }
                // A batch waits for its first record's age only while none is being written.
                _ = timer, if idle => {
                    writing = Some(self.write(&mut batch, &mut spare, &empty, &shutdown));
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
                    let (topic, partition, offset) =
                        (message.topic().to_string(), message.partition(), message.offset());
                    match self.process(&message, &shutdown).await {
                        Ok(row) => {
                            batch.rows.push(row);
                            batch.sources.push(message);
                        }
                        Err(failure) if failure.is_transient() => break, // shutdown during a retry
                        Err(failure) => {
                            if !self.park(&message, &failure, &shutdown).await {
                                break;
                            }
                        }
                    }
                    batch.offsets.processed(&topic, partition, offset);
                    if deadline.is_none() {
                        deadline = Some(Instant::now() + self.batch_max);
                    }
                    if batch.rows.len() >= self.batch_max_rows {
                        // Full: wait for the batch being written, then write this one.
                        if let Some(w) = writing.take() {
                            let (done, result) = w.await;
                            if result.is_err() {
                                interrupted = true;
                                break;
                            }
                            spare = Some(done);
                        }
                        writing = Some(self.write(&mut batch, &mut spare, &empty, &shutdown));
                        deadline = None;
                    }
                }
                // Nothing more is waiting and nothing is being written: write what was read now
                // rather than at the deadline (under load batches fill up while one is written).
                _ = std::future::ready(()), if idle && !batch.offsets.is_empty() => {
                    writing = Some(self.write(&mut batch, &mut spare, &empty, &shutdown));
                    deadline = None;
                }
            }
        }
        // Drain: what was read before shutdown is written within the grace period, then its
        // offsets are stored; past it, the rest is redelivered after a restart.
        let drain = CancellationToken::new();
        let timer = drain.clone();
        let grace = self.drain;
        let guard = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            timer.cancel();
        });
        let finished = match writing.take() {
            Some(w) => tokio::select! {
                (_, result) = w => result.is_ok(),
                _ = drain.cancelled() => false,
            },
            None => true,
        };
        if finished && !interrupted {
            let _ = self.flush(&mut batch, &drain).await;
        }
        guard.abort();
        if let Err(e) = rdkafka::consumer::Consumer::commit_consumer_state(
            &self.consumer,
            rdkafka::consumer::CommitMode::Sync,
        ) {
            tracing::debug!(error = %e, "final commit");
        }
        Ok(())
    }

    /// Starts writing `batch` (swapped for the spare, or a new one, to keep reading into).
    fn write<'a>(
        &'a self,
        batch: &mut Batch<'a>,
        spare: &mut Option<Batch<'a>>,
        empty: &impl Fn() -> Batch<'a>,
        shutdown: &'a CancellationToken,
    ) -> Writing<'a> {
        let next = spare.take().unwrap_or_else(empty);
        let mut full = std::mem::replace(batch, next);
        Box::pin(async move {
            let result = self.flush(&mut full, shutdown).await;
            (full, result)
        })
    }

    /// Decodes and maps one record. Registry outages are retried here (the record is fine); a
    /// transient failure is returned only when shutdown interrupted the retries.
    async fn process(
        &self,
        message: &BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) -> Result<NewNotification, Failure> {
        let mapping = self.mappings.get(message.topic()).ok_or_else(|| {
            Failure::permanent(format!("no mapping for topic {}", message.topic()))
        })?;
        let payload = message
            .payload()
            .ok_or_else(|| Failure::permanent("the record has no value"))?;
        let mut backoff = Backoff::new("notification_writer.decode");
        let value = loop {
            match self.registry.decode(payload).await {
                Ok((value, _id)) => break value,
                Err(e) if e.is_transient() => {
                    if !backoff.wait(shutdown, &e).await {
                        return Err(Failure::transient(
                            "shutdown while the registry was unreachable",
                        ));
                    }
                }
                Err(e) => return Err(Failure::of(&e).context("undecodable")),
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
        mapping
            .to_row(avro_to_json(&value), &origin)
            .map_err(|e| Failure::permanent(format!("schema mismatch: {e}")))
    }

    /// Dead-letters one record; false when shutdown interrupted it.
    async fn park(
        &self,
        message: &BorrowedMessage<'_>,
        failure: &Failure,
        shutdown: &CancellationToken,
    ) -> bool {
        let parked = self
            .dead_letter
            .park(
                message,
                &RecordOrigin::of(message),
                failure.message(),
                1,
                shutdown,
            )
            .await;
        if parked {
            metrics::counter!(DEAD_LETTERED, "topic" => message.topic().to_string()).increment(1);
        }
        parked
    }

    /// Writes the batch — splitting it around rows Postgres refuses, which are dead-lettered —
    /// then stores its offsets. Transient failures are retried with offsets held.
    async fn flush(
        &self,
        batch: &mut Batch<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        if batch.offsets.is_empty() {
            return Ok(());
        }
        if !batch.rows.is_empty() {
            metrics::histogram!(BATCH_ROWS).record(batch.rows.len() as f64);
        }
        let rows = &batch.rows;
        let sources = &batch.sources;
        let written = write_splitting(
            rows.len(),
            shutdown,
            "notification_writer.insert",
            |range| async move {
                let result = self.insert(&rows[range]).await;
                match &result {
                    Ok(inserted) => metrics::counter!(ROWS_INSERTED).increment(*inserted),
                    Err(e) if e.is_transient() => metrics::counter!(DB_RETRIES).increment(1),
                    Err(_) => {}
                }
                result.map(|_| ())
            },
            |index, error| async move {
                let failure = Failure::of(&error).context("user_notifications refused the row");
                self.park(&sources[index], &failure, shutdown).await
            },
        )
        .await;
        if written.is_err() {
            return Err(Interrupted);
        }
        if let Err(e) = batch.offsets.store(&self.consumer) {
            // A revoked partition cannot take the offset; its next owner re-reads and the
            // unique event id keeps the rows single.
            tracing::warn!(error = %e, "storing offsets failed");
        }
        batch.clear();
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
