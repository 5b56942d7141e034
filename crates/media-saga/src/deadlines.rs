//! Durable deadlines: the TTL of an upload URL (expire, refund, remove the partial upload) and
//! the move timeout (retry the move, or dead-letter the upload when retries are spent). They
//! live in `media_deadlines`, so a deadline that fell due while the service was down fires when
//! it starts. Each one is handled in one transaction that locks the deadline (other instances
//! skip it) and the saga, produces its results, and only then marks it fired: a crash before the
//! commit undoes the database changes and the deadline fires again with the same event ids.
//!
//! A deadline fires only once every record that could answer it and was written before it fell
//! due has been read: after downtime the arrivals wait in `upload.received`, the moved files'
//! reports in `file.ready` and the retries a timeout asked for in `upload.retry`. An upload that
//! arrived in time must not be expired because the timer ran before the backlog, a move that
//! completed must not be retried, and a move timeout must not spend the next retry before the
//! last one was even attempted. The consumer group's committed offsets, compared with the first
//! record at the deadline's time in each partition, say when that is ([`GroupProgress`]); an
//! arrival's time is the record's timestamp, set where it was observed (the upload-complete call,
//! the S3 event).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use substrate_db::media::{self as db_media, DeadlineKind, SagaState};
use substrate_kafka::progress::GroupProgress;
use substrate_kafka::TraceParent;
use substrate_runtime::failure::Classify;
use tracing::Instrument;
use uuid::Uuid;

use crate::emit::Topic;
use crate::metrics::{transition, DEADLINES_FIRED, DEADLINES_HELD};
use crate::saga::{db, Engine, StepError};

/// Looks for due deadlines every `poll` until shutdown. A deadline whose handling fails
/// transiently stays due and is tried at the next poll; one that fails permanently (its results
/// can never be produced) is marked fired with the error logged, so it is not retried forever.
pub async fn run(
    engine: Arc<Engine>,
    answers: Arc<GroupProgress>,
    poll: Duration,
) -> anyhow::Result<()> {
    let shutdown = engine.shutdown.token();
    loop {
        let due = async {
            let client = engine.pool.get().await.map_err(db)?;
            db_media::due_deadlines(&**client, &engine.config.topic_prefix, BATCH)
                .await
                .map_err(db)
        };
        match due.await {
            Ok(deadlines) => {
                let full = deadlines.len() >= BATCH as usize;
                let oldest = deadlines.iter().map(|d| d.due_at.timestamp_millis()).min();
                let read_until = match oldest {
                    Some(oldest) => answers_read_until(&answers, oldest).await,
                    None => None,
                };
                let mut held = 0;
                for deadline in deadlines {
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                    if read_until.is_none_or(|until| deadline.due_at.timestamp_millis() > until) {
                        held += 1;
                        continue;
                    }
                    let (request, kind) = (deadline.request_id, deadline.kind);
                    // In the trace of the upload intent that started the saga.
                    let saga_trace = deadline.traceparent.as_deref().and_then(TraceParent::parse);
                    let span = substrate_runtime::trace::continuing(saga_trace, || {
                        tracing::debug_span!(
                            "deadline",
                            otel.name = format!("fire {kind}"),
                            media.request_id = %request
                        )
                    });
                    match fire(&engine, request, kind, saga_trace)
                        .instrument(span)
                        .await
                    {
                        Ok(()) => {}
                        Err(error) if error.is_transient() => {
                            tracing::warn!(%request, %kind, %error, "handling a deadline failed; it stays due")
                        }
                        Err(error) => abandon(&engine, request, kind, &error).await,
                    }
                }
                metrics::gauge!(DEADLINES_HELD).set(held as f64);
                if held > 0 {
                    tracing::debug!(
                        held,
                        "deadlines wait until the answers written before them are read"
                    );
                } else if full {
                    continue;
                }
            }
            Err(error) => tracing::warn!(%error, "reading due deadlines failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(poll) => {}
        }
    }
}

/// The latest time before which every answer is known to be read: now when the group has read
/// everything, else `oldest` (the oldest due deadline) when it has read that far; `None` when it
/// has not, or the broker cannot tell (the deadlines wait: firing early would expire arrived
/// uploads or spend move retries).
async fn answers_read_until(answers: &Arc<GroupProgress>, oldest: i64) -> Option<i64> {
    let answers = answers.clone();
    let now = chrono::Utc::now().timestamp_millis();
    let checked = tokio::task::spawn_blocking(move || {
        for until in [now, oldest] {
            if answers.processed_before(until, Duration::from_secs(5))? {
                return Ok(Some(until));
            }
        }
        Ok::<_, rdkafka::error::KafkaError>(None)
    })
    .await;
    match checked {
        Ok(Ok(until)) => until,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot tell how far the answers are read; deadlines wait");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "checking how far the answers are read failed; deadlines wait");
            None
        }
    }
}

/// Marks a deadline that can never be handled as fired, saying why.
async fn abandon(engine: &Engine, request: Uuid, kind: DeadlineKind, error: &StepError) {
    tracing::error!(%request, %kind, %error, "a deadline cannot be handled; marking it fired");
    metrics::counter!(DEADLINES_FIRED, "kind" => kind.as_str(), "effect" => "abandoned")
        .increment(1);
    let marked = async {
        let client = engine.pool.get().await.map_err(db)?;
        db_media::mark_fired(&**client, request, kind)
            .await
            .map_err(db)
    }
    .await;
    if let Err(e) = marked {
        tracing::warn!(%request, %kind, error = %e, "marking the deadline fired failed; it stays due");
    }
}

const BATCH: i64 = 256;

async fn fire(
    engine: &Engine,
    request: Uuid,
    kind: DeadlineKind,
    saga_trace: Option<TraceParent>,
) -> Result<(), StepError> {
    let mut client = engine.pool.get().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    if !db_media::lock_due_deadline(&tx, request, kind)
        .await
        .map_err(db)?
    {
        return Ok(());
    }
    let saga = db_media::lock_saga(&tx, request).await.map_err(db)?;
    let trace = TraceParent::outgoing(saga_trace);
    let mut remove_upload = None;
    let mut finished = None;
    let effect = match (kind, saga) {
        (DeadlineKind::UploadTtl, Some(saga)) if saga.state == SagaState::Signed => {
            db_media::refund(&*tx, request).await.map_err(db)?;
            db_media::finish(
                &tx,
                request,
                SagaState::Expired,
                "the upload URL expired before the file arrived",
            )
            .await
            .map_err(db)?;
            let record = json!({"request_id": request, "user_id": saga.user_id,
                "file_path": saga.upload_path,
                "expired_at": saga.expires_at.map(|t| t.timestamp_millis())
                    .unwrap_or_else(|| chrono::Utc::now().timestamp_millis())});
            engine
                .emitter
                .emit(Topic::Expired, request, 0, &record, &trace)
                .await?;
            finished = Some((saga.clone(), SagaState::Expired));
            remove_upload = saga.upload_path.clone();
            "expired"
        }
        (DeadlineKind::MoveTimeout, Some(saga)) if saga.state == SagaState::Received => {
            if saga.retry_count < engine.config.max_move_retries {
                let next = saga.retry_count + 1;
                let timeout = engine.config.move_timeout().as_secs_f64();
                db_media::set_retry_count(&tx, request, next)
                    .await
                    .map_err(db)?;
                db_media::postpone_deadline(&tx, request, kind, timeout)
                    .await
                    .map_err(db)?;
                let record = json!({"request_id": request, "user_id": saga.user_id,
                    "file_path": saga.upload_path, "permanent_path": saga.permanent_path,
                    "retry_count": next});
                engine
                    .emitter
                    .emit(Topic::UploadRetry, request, next as u32, &record, &trace)
                    .await?;
                tx.commit().await.map_err(db)?;
                tracing::info!(%request, retry = next, "move timed out; retrying");
                metrics::counter!(DEADLINES_FIRED, "kind" => kind.as_str(), "effect" => "retry")
                    .increment(1);
                return Ok(());
            }
            let reason = format!(
                "the file could not be moved to permanent storage after {} retries",
                saga.retry_count
            );
            db_media::refund(&*tx, request).await.map_err(db)?;
            db_media::finish(&tx, request, SagaState::Failed, &reason)
                .await
                .map_err(db)?;
            let record = json!({"request_id": request, "user_id": saga.user_id,
                "file_path": saga.upload_path, "reason": reason,
                "retry_count": saga.retry_count});
            engine
                .emitter
                .emit(Topic::UploadDeadLetter, request, 0, &record, &trace)
                .await?;
            finished = Some((saga.clone(), SagaState::Failed));
            tracing::warn!(%request, "upload dead-lettered: {reason}");
            "dead_letter"
        }
        // The saga moved on (the upload arrived, the move completed): nothing to do.
        _ => "stale",
    };
    db_media::mark_fired(&*tx, request, kind)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    drop(client);
    metrics::counter!(DEADLINES_FIRED, "kind" => kind.as_str(), "effect" => effect).increment(1);
    if let Some((before, to)) = finished {
        transition(Some(&before), to, before.created_at);
    }
    if let Some(path) = remove_upload {
        // Best effort: a partial or late upload; the bucket's lifecycle rule is the backstop.
        if let Err(error) = engine.storage.delete(&path).await {
            tracing::info!(%path, %error, "removing an expired upload failed");
        }
    }
    Ok(())
}
