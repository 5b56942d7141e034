//! The consume → decode → map → batch insert loop. A batch is written in one statement when
//! no further record is waiting or it is full; while full batches are written (a few at once,
//! on their own connections) the next ones are read and decoded. Offsets are stored only after
//! every record of a batch and of the batches before it is written or dead-lettered. Failures follow the platform's model: transient ones (Postgres
//! or the registry unavailable) back off with offsets held; a batch refused for a permanent
//! reason is split in halves until the refused record is alone, which goes to the dead letter
//! while the rest are written; undecodable or unmappable records are dead-lettered at once.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::message::{BorrowedMessage, Message};
use substrate_avro::{avro_to_json, Registry};
use substrate_db::notifications::{insert_batch, NewNotification};
use substrate_db::Pool;
use substrate_kafka::consumer::OffsetBatch;
use substrate_kafka::headers::{header_str, CE_ID, CE_TIME};
use substrate_kafka::{DeadLetter, Origin as RecordOrigin, TraceParent};
use substrate_runtime::failure::{write_splitting, Backoff, Classify, Failure};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::mapping::{Mapping, Origin};
use crate::metrics::{BATCH_ROWS, DB_RETRIES, ROWS_INSERTED};

pub struct Writer {
    pub consumer: substrate_kafka::consumer::GroupConsumer,
    pub registry: Registry,
    pub pool: Pool,
    pub dead_letter: DeadLetter,
    pub mappings: BTreeMap<String, Mapping>,
    pub batch_max_rows: usize,
    pub batch_max: Duration,
    /// With no write in progress, how old a batch's first record must be before it is written.
    pub batch_linger: Duration,
    /// How long the rows read before shutdown may take to be written.
    pub drain: Duration,
    /// Full batches written at once (each on its own connection).
    pub concurrent_writes: usize,
    /// The consumer group (named on each record's span).
    pub group_id: String,
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
    /// The contexts of the rows' `process` spans (tracing on): the insert is a child of the
    /// first and links to the others.
    traces: Vec<TraceParent>,
}

impl Batch<'_> {
    fn clear(&mut self) {
        self.rows.clear();
        self.sources.clear();
        self.traces.clear();
        self.offsets = OffsetBatch::new();
    }
}

impl Writer {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let empty = || Batch {
            rows: Vec::with_capacity(self.batch_max_rows),
            sources: Vec::with_capacity(self.batch_max_rows),
            offsets: OffsetBatch::new(),
            traces: Vec::new(),
        };
        let mut batch = empty();
        // Full batches are written while the next ones are read and decoded, up to
        // `concurrent_writes` at once on their own connections (PostgreSQL inserts one statement
        // per backend and core). They finish in any order but are taken back in the order they
        // were read, and only then store their offsets: never above a batch still being written.
        let mut writing: FuturesOrdered<Writing<'_>> = FuturesOrdered::new();
        let mut spare: Vec<Batch<'_>> = Vec::new();
        let mut deadline: Option<Instant> = None;
        // When the last batch write started (for `batch_linger`).
        let mut last_write: Option<Instant> = None;
        // A batch whose write shutdown interrupted: nothing after it may store offsets.
        let mut interrupted = false;
        loop {
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let idle = writing.is_empty();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((done, result)) = writing.next(), if !idle => {
                    if !self.written(done, result, &mut spare) {
                        interrupted = true;
                        break;
                    }
                }
                // A batch waits for its first record's age only while none is being written.
                _ = timer, if idle => {
                    last_write = Some(Instant::now());
                    writing.push_back(self.write(&mut batch, &mut spare, &empty, &shutdown));
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
                    let span = substrate_kafka::spans::process(&message, &self.group_id);
                    match self.process(&message, &shutdown).instrument(span.clone()).await {
                        Ok(row) => {
                            batch.rows.push(row);
                            batch.sources.push(message);
                            batch.traces.extend(TraceParent::of(&span));
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
                        let now = Instant::now();
                        deadline = Some(if self.batch_linger.is_zero() {
                            now + self.batch_max
                        } else {
                            // Lingering: at most one write starts per `batch_linger`. A record
                            // after a quiet spell is written at once; under load the rows that
                            // arrive meanwhile share one transaction.
                            last_write.map_or(now, |at| (at + self.batch_linger).max(now))
                        });
                    }
                    if batch.rows.len() >= self.batch_max_rows {
                        // Full: when every write slot is busy, wait for the oldest first.
                        if writing.len() >= self.concurrent_writes {
                            if let Some((done, result)) = writing.next().await {
                                if !self.written(done, result, &mut spare) {
                                    interrupted = true;
                                    break;
                                }
                            }
                        }
                        last_write = Some(Instant::now());
                    writing.push_back(self.write(&mut batch, &mut spare, &empty, &shutdown));
                        deadline = None;
                    }
                }
                // Nothing more is waiting and nothing is being written: write what was read now
                // rather than at the deadline (under load batches fill up while one is written).
                _ = std::future::ready(()), if idle && self.batch_linger.is_zero() && !batch.offsets.is_empty() => {
                    last_write = Some(Instant::now());
                    writing.push_back(self.write(&mut batch, &mut spare, &empty, &shutdown));
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
        while !interrupted && !writing.is_empty() {
            tokio::select! {
                Some((done, result)) = writing.next() => {
                    interrupted = !self.written(done, result, &mut spare);
                }
                _ = drain.cancelled() => interrupted = true,
            }
        }
        if !interrupted {
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

    /// Starts writing `batch` (swapped for a spare, or a new one, to keep reading into); its
    /// offsets are stored by [`Self::written`] when it is taken back in order.
    fn write<'a>(
        &'a self,
        batch: &mut Batch<'a>,
        spare: &mut Vec<Batch<'a>>,
        empty: &impl Fn() -> Batch<'a>,
        shutdown: &'a CancellationToken,
    ) -> Writing<'a> {
        let next = spare.pop().unwrap_or_else(empty);
        let full = std::mem::replace(batch, next);
        Box::pin(async move {
            let result = self.write_rows(&full, shutdown).await;
            (full, result)
        })
    }

    /// A batch taken back in read order: stores its offsets and keeps it for reuse; false when
    /// shutdown interrupted its write (nothing after it may store offsets).
    fn written<'a>(
        &self,
        mut done: Batch<'a>,
        result: Result<(), Interrupted>,
        spare: &mut Vec<Batch<'a>>,
    ) -> bool {
        if result.is_err() {
            return false;
        }
        self.store_offsets(&mut done);
        spare.push(done);
        true
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
                Ok((value, _id)) => {
                    backoff.succeeded();
                    break value;
                }
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
        self.dead_letter
            .park(
                message,
                &RecordOrigin::of(message),
                failure.message(),
                1,
                shutdown,
            )
            .await
    }

    /// Writes the batch — splitting it around rows Postgres refuses, which are dead-lettered —
    /// then stores its offsets. Transient failures are retried with offsets held.
    /// Writes the batch and stores its offsets.
    async fn flush(
        &self,
        batch: &mut Batch<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), Interrupted> {
        self.write_rows(batch, shutdown).await?;
        self.store_offsets(batch);
        Ok(())
    }

    /// Inserts the batch's rows; a batch refused for a permanent reason is split until the
    /// refused rows are alone, and those are dead-lettered.
    async fn write_rows(
        &self,
        batch: &Batch<'_>,
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
        let span = substrate_runtime::trace::batch(&batch.traces, || {
            tracing::debug_span!(
                "write batch",
                otel.name = "write user_notifications",
                batch.rows = rows.len()
            )
        });
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
        .instrument(span)
        .await;
        written.map_err(|_| Interrupted)
    }

    /// Stores the offsets of a written batch and empties it.
    fn store_offsets(&self, batch: &mut Batch<'_>) {
        if let Err(e) = batch.offsets.store(&self.consumer) {
            // A revoked partition cannot take the offset; its next owner re-reads and the
            // unique event id keeps the rows single.
            tracing::warn!(error = %e, "storing offsets failed");
        }
        batch.clear();
    }

    async fn insert(&self, rows: &[NewNotification]) -> Result<u64, substrate_db::DbError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let client = self.pool.get().await?;
        insert_batch(&**client, rows).await
    }
}
