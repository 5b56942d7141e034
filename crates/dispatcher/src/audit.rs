//! The audit log: every attempt becomes a `dispatch_attempts` row. Rows are batched into one
//! INSERT per round; the caller waits until its row is committed, so an offset is never stored
//! for an attempt that is not logged. Postgres outages are retried without losing rows; a batch
//! the table refuses is split so that only the refused row fails (its caller is told why) and
//! the others are written.

use std::sync::Mutex;

use substrate_db::dispatch::{insert_attempts, Attempt};
use substrate_db::Pool;
use substrate_runtime::failure::{write_splitting, Failure};
use substrate_runtime::{Shutdown, TraceParent};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

const BATCH_MAX: usize = 1000;

type Waiter = oneshot::Sender<Result<(), Failure>>;

/// One row to log, who waits for it, and the recording span's context (tracing on).
type Entry = (Attempt, Waiter, Option<TraceParent>);

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Entry>,
}

impl AuditLog {
    /// Starts the writer as tracked work of `shutdown`; it ends when every `AuditLog` is gone.
    pub fn start(pool: Pool, shutdown: &Shutdown) -> Self {
        let (tx, rx) = mpsc::channel(8192);
        shutdown.spawn_work(writer(pool, rx));
        Self { tx }
    }

    /// Logs `attempt`; resolves when the row is committed. A permanent failure means the table
    /// refused this row; a transient one that the writer stopped before committing it.
    pub async fn record(&self, attempt: Attempt) -> Result<(), Failure> {
        let (done, committed) = oneshot::channel();
        if self
            .tx
            .send((attempt, done, TraceParent::current()))
            .await
            .is_err()
        {
            return Err(Failure::transient("the audit writer stopped"));
        }
        committed
            .await
            .unwrap_or_else(|_| Err(Failure::transient("the audit writer stopped")))
    }
}

async fn writer(pool: Pool, mut rx: mpsc::Receiver<Entry>) {
    let mut rows = Vec::with_capacity(BATCH_MAX);
    let mut waiters: Vec<Option<Waiter>> = Vec::with_capacity(BATCH_MAX);
    let mut traces: Vec<TraceParent> = Vec::new();
    // Outages are retried until the rows are written: the senders wait for them, and the
    // channel closes only after every sender is gone.
    let never = CancellationToken::new();
    while let Some((row, done, trace)) = rx.recv().await {
        rows.push(row);
        waiters.push(Some(done));
        traces.extend(trace);
        while rows.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok((row, done, trace)) => {
                    rows.push(row);
                    waiters.push(Some(done));
                    traces.extend(trace);
                }
                Err(_) => break,
            }
        }
        // The batch's write in the traces of the attempts it logs.
        metrics::histogram!(crate::metrics::AUDIT_BATCH_ROWS).record(rows.len() as f64);
        let span = substrate_runtime::trace::batch(&traces, || {
            tracing::debug_span!(
                "write batch",
                otel.name = "write dispatch_attempts",
                batch.rows = rows.len()
            )
        });
        traces.clear();
        let refused = Mutex::new(&mut waiters);
        let _ = write_splitting(
            rows.len(),
            &never,
            "dispatcher.audit",
            |range| {
                let (pool, rows) = (&pool, &rows);
                async move {
                    let client = pool.get().await?;
                    insert_attempts(&**client, &rows[range]).await.map(|_| ())
                }
            },
            |index, error| {
                let failure = Failure::of(&error).context("dispatch_attempts refused the row");
                tracing::error!(request = %rows[index].request_id, error = %failure, "audit row refused");
                if let Some(done) = refused.lock().expect("waiters lock")[index].take() {
                    let _ = done.send(Err(failure));
                }
                async { true }
            },
        )
        .instrument(span)
        .await;
        rows.clear();
        for done in waiters.drain(..).flatten() {
            let _ = done.send(Ok(()));
        }
    }
}
