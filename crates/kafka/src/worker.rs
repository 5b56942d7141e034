//! Concurrent processing of one consumer's records: each record is handled in its own task (at
//! most `max_in_flight` at once) and offsets are stored only below the lowest record still in
//! flight, so a crash redelivers exactly what was not finished. Shared by the services whose
//! per-record work waits on the network (deliveries, saga steps).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::consumer::OffsetBatch;
use crate::in_flight::InFlight;

/// Reads `consumer` until `shutdown`, handing every record that `admit` lets through to
/// `handle`. `handle` returns true once the record's effects are durable (its offset may then be
/// stored) and false when it was interrupted (the record is redelivered after a restart).
/// At shutdown, running handlers get `drain` to finish before the final offset commit. Each
/// handler runs in the record's `process` span (consumer group `group`).
#[allow(clippy::too_many_arguments)]
pub async fn run<A, H, Fut>(
    consumer: Arc<crate::consumer::GroupConsumer>,
    group: &str,
    max_in_flight: usize,
    shutdown: CancellationToken,
    drain: Duration,
    mut admit: A,
    handle: H,
) where
    A: FnMut(&OwnedMessage) -> bool,
    H: Fn(OwnedMessage) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let in_flight = Arc::new(Mutex::new(InFlight::default()));
    let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
    let tasks = TaskTracker::new();
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.recv() => match m {
                Ok(m) => m.detach(),
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    continue;
                }
            },
        };
        tracing::trace!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            "received"
        );
        if !admit(&message) {
            continue;
        }
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("never closed"),
        };
        let (topic, partition, offset) = (
            message.topic().to_string(),
            message.partition(),
            message.offset(),
        );
        in_flight
            .lock()
            .expect("in-flight lock")
            .begin(&topic, partition, offset);
        let span = crate::spans::process(&message, group);
        let work = span.in_scope(|| handle(message)).instrument(span);
        let in_flight = in_flight.clone();
        let consumer = consumer.clone();
        tasks.spawn(async move {
            let finished = work.await;
            drop(permit);
            if !finished {
                return;
            }
            let next = in_flight
                .lock()
                .expect("in-flight lock")
                .finish(&topic, partition, offset);
            if let Some(next) = next {
                let mut batch = OffsetBatch::new();
                batch.processed(&topic, partition, next - 1);
                if let Err(e) = batch.store(&*consumer) {
                    tracing::debug!(error = %e, "storing an offset failed (partition revoked?)");
                }
            }
        });
    }
    tasks.close();
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        tracing::warn!(
            pending = in_flight.lock().expect("in-flight lock").pending(),
            "records still in progress at shutdown; they will be redelivered"
        );
    }
    // Ship the stored offsets now rather than at the next auto-commit tick.
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %e, "final commit");
    }
}
