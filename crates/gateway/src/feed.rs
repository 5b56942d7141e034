//! The notification feed of one gateway instance: a single reader follows
//! `user_notifications` in commit order (`substrate_db::feed`) and broadcasts every new batch of
//! final rows to the instance's streams, which filter them per user in memory. The cost of a
//! notification is one query per instance, whatever the number of clients.
//!
//! The reader wakes on the table's NOTIFY (which names the inserting transaction) and on a
//! poll interval. When the rows of a notified transaction are not final yet (an older
//! transaction is still open), it looks again after a short, growing delay.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde::Deserialize;
use substrate_db::feed::{self, Cursor, FeedRow};
use substrate_runtime::Shutdown;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::metrics::{FEED_BATCHES, FEED_ROWS};

/// `notifications:` of the gateway's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// How often the feed looks for rows without a NOTIFY (a missed signal, a long transaction
    /// that held the watermark back).
    pub poll_ms: u64,
    /// Rows read per query.
    pub batch_rows: i64,
    /// Batches a stream may fall behind the feed before it is cut off (it resumes).
    pub feed_buffer: usize,
    /// Events queued for one client before it is cut off as too slow (it resumes).
    pub client_buffer: usize,
    /// Comment lines sent to idle streams this often.
    pub heartbeat_secs: u64,
    /// Rows per history query of a connecting stream, and the largest page.
    pub page_rows: i64,
    /// Signs stream tickets; every instance behind one load balancer needs the same value.
    /// Unset: a random secret per process (tickets work only on the instance that issued them).
    #[serde(default)]
    pub ticket_secret: Option<String>,
    /// How long a stream ticket may be used to open a stream.
    pub ticket_ttl_secs: u64,
}

/// A row as streams send it: serialized once per instance, not once per stream.
pub struct Item {
    pub row: FeedRow,
    pub json: String,
}

/// A batch of final rows, in cursor order.
pub type Batch = Arc<Vec<Item>>;

pub struct Feed {
    /// The cursor up to which rows have been broadcast; `None` until the first read.
    position: Mutex<Option<Cursor>>,
    sender: broadcast::Sender<Batch>,
    config: NotificationsConfig,
    /// Fires at shutdown: streams end so the server can drain (clients resume elsewhere).
    closing: CancellationToken,
    /// True once the position is known.
    ready: tokio::sync::watch::Sender<bool>,
}

impl Feed {
    pub fn new(config: NotificationsConfig, closing: CancellationToken) -> Arc<Self> {
        let (sender, _) = broadcast::channel(config.feed_buffer.max(1));
        Arc::new(Self {
            position: Mutex::new(None),
            sender,
            config,
            closing,
            ready: tokio::sync::watch::channel(false).0,
        })
    }

    /// Like [`subscribe`](Self::subscribe), waiting up to `wait` for the feed's first read.
    pub async fn subscribe_within(
        &self,
        wait: Duration,
    ) -> Option<(Cursor, broadcast::Receiver<Batch>)> {
        let mut ready = self.ready.subscribe();
        let _ = tokio::time::timeout(wait, ready.wait_for(|r| *r)).await;
        self.subscribe()
    }

    /// Cancelled when the gateway shuts down.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    pub fn config(&self) -> &NotificationsConfig {
        &self.config
    }

    /// Subscribes to batches after the returned position (`None` while the feed has not read the
    /// database yet). Rows up to the position are read from the database by the caller.
    pub fn subscribe(&self) -> Option<(Cursor, broadcast::Receiver<Batch>)> {
        let position = self.position.lock().expect("feed position lock");
        position.map(|p| (p, self.sender.subscribe()))
    }

    /// Broadcasts `rows` (all after the position) and moves the position past them; under the
    /// lock, so a subscriber sees either the position before the batch and the batch, or the
    /// position after it.
    fn publish(&self, rows: Vec<FeedRow>) {
        let Some(last) = rows.last().map(|r| r.cursor) else {
            return;
        };
        let mut position = self.position.lock().expect("feed position lock");
        metrics::counter!(FEED_BATCHES).increment(1);
        metrics::counter!(FEED_ROWS).increment(rows.len() as u64);
        let items = rows
            .into_iter()
            .map(|row| Item {
                json: serde_json::to_string(&row).unwrap_or_default(),
                row,
            })
            .collect();
        let _ = self.sender.send(Arc::new(items));
        *position = Some(last);
    }

    /// Runs the reader until shutdown.
    pub fn spawn(
        self: Arc<Self>,
        pool: substrate_db::Pool,
        database: substrate_db::DbConfig,
        lifecycle: &Shutdown,
    ) {
        let shutdown = lifecycle.token();
        let (wake_tx, wake_rx) = mpsc::unbounded_channel::<u64>();
        lifecycle.spawn("notification feed listener", {
            let shutdown = shutdown.clone();
            async move {
                listen_forever(database, wake_tx, shutdown).await;
                Ok(())
            }
        });
        lifecycle.spawn("notification feed", async move {
            self.read_forever(pool, wake_rx, shutdown).await;
            Ok(())
        });
    }

    async fn read_forever(
        &self,
        pool: substrate_db::Pool,
        mut wake: mpsc::UnboundedReceiver<u64>,
        shutdown: CancellationToken,
    ) {
        let poll = Duration::from_millis(self.config.poll_ms.max(10));
        // The newest transaction a NOTIFY named whose rows may not have been read yet.
        let mut pending_tx: u64 = 0;
        let mut retry = Duration::from_millis(2);
        loop {
            let wait = if pending_tx > 0 {
                retry.min(poll)
            } else {
                poll
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                woken = wake.recv() => {
                    if let Some(tx) = woken {
                        pending_tx = pending_tx.max(tx);
                    }
                    while let Ok(tx) = wake.try_recv() {
                        pending_tx = pending_tx.max(tx);
                    }
                    retry = Duration::from_millis(2);
                }
                _ = tokio::time::sleep(wait) => {
                    if pending_tx > 0 {
                        retry = (retry * 2).min(poll);
                    }
                }
            }
            match self.read(&pool).await {
                Ok(watermark) => {
                    if watermark > pending_tx {
                        pending_tx = 0;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the notification feed failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
            }
        }
    }

    /// Reads and broadcasts every final row after the position; returns the watermark.
    async fn read(&self, pool: &substrate_db::Pool) -> Result<u64, substrate_db::DbError> {
        let client = pool.get().await?;
        let current = *self.position.lock().expect("feed position lock");
        let mut position = match current {
            Some(position) => position,
            None => {
                // Start at the present: older rows reach clients through their history query.
                let watermark = feed::watermark(&**client).await?;
                let start = Cursor::below(watermark);
                *self.position.lock().expect("feed position lock") = Some(start);
                self.ready.send_replace(true);
                tracing::info!(%start, "notification feed started");
                start
            }
        };
        loop {
            let (rows, watermark) =
                feed::final_after(&**client, position, self.config.batch_rows).await?;
            let full = rows.len() as i64 >= self.config.batch_rows;
            if let Some(last) = rows.last() {
                position = last.cursor;
            }
            self.publish(rows);
            if !full {
                return Ok(watermark);
            }
        }
    }
}

#[derive(Deserialize)]
struct Signal {
    tx: Option<String>,
}

/// LISTENs on `user_notifications` and forwards the inserting transaction of every signal;
/// reconnects after a lost connection (the poll covers the gap).
async fn listen_forever(
    database: substrate_db::DbConfig,
    wake: mpsc::UnboundedSender<u64>,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if let Err(error) = listen(&database, &wake, &shutdown).await {
            tracing::warn!(%error, "notification listener lost its connection; reconnecting");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn listen(
    database: &substrate_db::DbConfig,
    wake: &mpsc::UnboundedSender<u64>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let (client, mut connection) = substrate_db::connect(database).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<u64>>();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let tx_id = serde_json::from_str::<Signal>(n.payload())
                        .ok()
                        .and_then(|s| s.tx)
                        .and_then(|t| t.parse().ok());
                    let _ = tx.send(tx_id);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let _driver = tokio_util::task::AbortOnDropHandle::new(driver);
    client.batch_execute("LISTEN user_notifications").await?;
    // Anything inserted before LISTEN took effect is found by the next read.
    let _ = wake.send(0);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            received = rx.recv() => match received {
                Some(tx_id) => { let _ = wake.send(tx_id.unwrap_or(0)); }
                None => anyhow::bail!("notification connection ended"),
            }
        }
    }
}
