//! The S3 archive: events of `s3` actions are batched into NDJSON objects per bucket and
//! directory (`prefix/topic/date/`) and written when a batch reaches its record or byte limit or
//! its first event has waited long enough. A delivery completes when its object is stored, so
//! offsets never move past an event that is not in the bucket.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use substrate_runtime::trace::TraceParent;
use substrate_runtime::Shutdown;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::config::ArchiveConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveError {
    /// Worth retrying (network, 5xx, throttling).
    Retry(String),
    /// Will not succeed as configured (no such bucket, access denied, no object store).
    Permanent(String),
}

struct Item {
    bucket: String,
    dir: String,
    line: Vec<u8>,
    done: oneshot::Sender<Result<String, ArchiveError>>,
    /// The appending span's context (tracing on).
    trace: Option<TraceParent>,
}

#[derive(Clone)]
pub struct Archiver {
    tx: Option<mpsc::Sender<Item>>,
}

impl Archiver {
    /// Starts the batching task; without a client every archive fails permanently.
    /// The batcher and its writes are tracked by `shutdown`: the drain waits for objects
    /// being written.
    pub fn start(
        client: Option<aws_sdk_s3::Client>,
        config: ArchiveConfig,
        shutdown: &Shutdown,
    ) -> Self {
        let Some(client) = client else {
            return Self { tx: None };
        };
        let (tx, rx) = mpsc::channel(4096);
        shutdown.spawn_work(batcher(client, config, rx, shutdown.clone()));
        Self { tx: Some(tx) }
    }

    /// The directory of an event: `prefix/topic/YYYY-MM-DD`.
    pub fn dir(prefix: &str, topic: &str, event_time_ms: i64) -> String {
        let date = chrono::DateTime::from_timestamp_millis(event_time_ms)
            .unwrap_or_default()
            .format("%Y-%m-%d");
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("{topic}/{date}")
        } else {
            format!("{prefix}/{topic}/{date}")
        }
    }

    /// Appends one NDJSON line and waits until the object holding it is stored; returns its key.
    pub async fn append(
        &self,
        bucket: &str,
        dir: String,
        mut line: Vec<u8>,
    ) -> Result<String, ArchiveError> {
        let Some(tx) = &self.tx else {
            return Err(ArchiveError::Permanent(
                "no object store is configured (set s3.*)".into(),
            ));
        };
        line.push(b'\n');
        let (done, result) = oneshot::channel();
        tx.send(Item {
            bucket: bucket.to_string(),
            dir,
            line,
            done,
            trace: TraceParent::current(),
        })
        .await
        .map_err(|_| ArchiveError::Retry("the archiver stopped".into()))?;
        result
            .await
            .unwrap_or_else(|_| Err(ArchiveError::Retry("the archiver stopped".into())))
    }
}

struct Batch {
    body: Vec<u8>,
    waiters: Vec<oneshot::Sender<Result<String, ArchiveError>>>,
    /// The contexts of the appends: the object's write is a child of the first and links to
    /// the others.
    traces: Vec<TraceParent>,
    since: Instant,
}

async fn batcher(
    client: aws_sdk_s3::Client,
    config: ArchiveConfig,
    mut rx: mpsc::Receiver<Item>,
    shutdown: Shutdown,
) {
    let max_wait = Duration::from_millis(config.max_wait_ms);
    let mut batches: HashMap<(String, String), Batch> = HashMap::new();
    loop {
        let next_deadline = batches.values().map(|b| b.since + max_wait).min();
        let item = match next_deadline {
            Some(deadline) => tokio::select! {
                item = rx.recv() => item,
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    let due: Vec<_> = batches
                        .iter()
                        .filter(|(_, b)| b.since + max_wait <= now)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in due {
                        if let Some(batch) = batches.remove(&key) {
                            flush(&client, key, batch, &shutdown);
                        }
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(item) = item else {
            for (key, batch) in batches.drain() {
                flush(&client, key, batch, &shutdown);
            }
            return;
        };
        let key = (item.bucket, item.dir);
        let batch = batches.entry(key.clone()).or_insert_with(|| Batch {
            body: Vec::new(),
            waiters: Vec::new(),
            traces: Vec::new(),
            since: Instant::now(),
        });
        batch.body.extend_from_slice(&item.line);
        batch.waiters.push(item.done);
        batch.traces.extend(item.trace);
        if batch.waiters.len() >= config.max_records || batch.body.len() >= config.max_bytes {
            if let Some(batch) = batches.remove(&key) {
                flush(&client, key, batch, &shutdown);
            }
        }
    }
}

/// Writes one object in the background and tells every waiter how it went.
fn flush(
    client: &aws_sdk_s3::Client,
    (bucket, dir): (String, String),
    batch: Batch,
    shutdown: &Shutdown,
) {
    let client = client.clone();
    shutdown.spawn_work(async move {
        let now = chrono::Utc::now();
        let key = format!(
            "{dir}/{}-{}.ndjson",
            now.format("%H%M%S%3f"),
            uuid::Uuid::now_v7().simple()
        );
        let records = batch.waiters.len();
        metrics::histogram!(crate::metrics::ARCHIVE_BATCH_ROWS).record(records as f64);
        metrics::histogram!(crate::metrics::ARCHIVE_OBJECT_BYTES).record(batch.body.len() as f64);
        let span = substrate_runtime::trace::batch(&batch.traces, || {
            substrate_s3::span("PutObject", &bucket, &key)
        });
        let put = client
            .put_object()
            .bucket(&bucket)
            .key(&key)
            .content_type("application/x-ndjson")
            .body(ByteStream::from(batch.body))
            .customize();
        let result = substrate_s3::carry(put, &span)
            .send()
            .instrument(span.clone())
            .await;
        if result.is_err() {
            substrate_s3::record_error(&span, "s3_error");
        }
        let outcome = match result {
            Ok(_) => {
                tracing::debug!(%bucket, %key, records, "archived");
                Ok(key)
            }
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let message = substrate_s3::error_message(&e);
                tracing::warn!(%bucket, %key, records, error = %message, "archive write failed");
                match status {
                    Some(s) if (400..500).contains(&s) && s != 408 && s != 429 => {
                        Err(ArchiveError::Permanent(format!("s3://{bucket}: {message}")))
                    }
                    _ => Err(ArchiveError::Retry(format!("s3://{bucket}: {message}"))),
                }
            }
        };
        for waiter in batch.waiters {
            let _ = waiter.send(outcome.clone());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories() {
        let t = 1_795_000_000_000; // 2026-11-18
        assert_eq!(
            Archiver::dir("vip/", "public.commerce.purchase.events", t),
            "vip/public.commerce.purchase.events/2026-11-18"
        );
        assert_eq!(Archiver::dir("", "t", t), "t/2026-11-18");
    }
}
