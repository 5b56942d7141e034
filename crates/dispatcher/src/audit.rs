//! The audit log: every attempt becomes a `dispatch_attempts` row. Rows are batched into one
//! INSERT per round; the caller waits until its row is committed, so an offset is never stored
//! for an attempt that is not logged. Postgres outages are retried without losing rows.

use std::time::Duration;

use substrate_db::dispatch::{insert_attempts, Attempt};
use substrate_db::Pool;
use tokio::sync::{mpsc, oneshot};

const BATCH_MAX: usize = 1000;

#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<(Attempt, oneshot::Sender<()>)>,
}

impl AuditLog {
    pub fn start(pool: Pool) -> Self {
        let (tx, rx) = mpsc::channel(8192);
        tokio::spawn(writer(pool, rx));
        Self { tx }
    }

    /// Logs `attempt`; resolves when the row is committed (false when the writer stopped).
    pub async fn record(&self, attempt: Attempt) -> bool {
        let (done, committed) = oneshot::channel();
        if self.tx.send((attempt, done)).await.is_err() {
            return false;
        }
        committed.await.is_ok()
    }
}

async fn writer(pool: Pool, mut rx: mpsc::Receiver<(Attempt, oneshot::Sender<()>)>) {
    let mut rows = Vec::with_capacity(BATCH_MAX);
    let mut waiters = Vec::with_capacity(BATCH_MAX);
    while let Some((row, done)) = rx.recv().await {
        rows.push(row);
        waiters.push(done);
        while rows.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok((row, done)) => {
                    rows.push(row);
                    waiters.push(done);
                }
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(100);
        loop {
            let result = match pool.get().await {
                Ok(client) => insert_attempts(&**client, &rows).await,
                Err(e) => Err(e.into()),
            };
            match result {
                Ok(_) => break,
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, rows = rows.len(), "audit insert failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    // A row the table refuses (a bug, not an outage): log it and move on rather
                    // than stop every delivery.
                    tracing::error!(error = %e, rows = rows.len(), "audit rows refused");
                    break;
                }
            }
        }
        rows.clear();
        for done in waiters.drain(..) {
            let _ = done.send(());
        }
    }
}
