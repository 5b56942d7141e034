//! The transfer: the upload's arrival (client call, S3 event or a retry's re-emission), the
//! asynchronous move to the permanent key, the join of arrival and `file.ready`, and the retried
//! move. A move that fails or never reports is caught by the move timeout (`deadlines.rs`).

use std::sync::Arc;

use serde_json::json;
use substrate_db::media::{self as db_media, Saga, SagaState};
use substrate_kafka::TraceParent;
use substrate_runtime::failure::{retry_transient, Stopped};
use tracing::Instrument;

use super::{db, Engine, FileReady, StepError, UploadReceived, UploadRetry};
use crate::emit::Topic;
use crate::metrics::{transition, MOVES, OBJECT_BYTES};

impl Engine {
    pub(super) async fn upload_received(
        self: &Arc<Self>,
        r: &UploadReceived,
        trace: &TraceParent,
    ) -> Result<(), StepError> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let Some(saga) = db_media::lock_saga(&tx, r.request_id).await.map_err(db)? else {
            tracing::warn!(request = %r.request_id, "arrival for an unknown upload; ignored");
            return Ok(());
        };
        if saga.user_id != r.user_id {
            tracing::warn!(request = %r.request_id, "arrival names another user; ignored");
            return Ok(());
        }
        match saga.state {
            SagaState::Signed => {
                db_media::mark_received(&tx, saga.request_id, r.retry_count)
                    .await
                    .map_err(db)?;
                if saga.ready_at.is_some() {
                    // The permanent object was reported before the upload: the join is complete.
                    let confirmed = db_media::confirm(&tx, &saga).await.map_err(db)?;
                    tx.commit().await.map_err(db)?;
                    transition(Some(&saga), SagaState::Received, saga.created_at);
                    let received = Saga {
                        state: SagaState::Received,
                        ..saga.clone()
                    };
                    transition(Some(&received), SagaState::Confirmed, saga.created_at);
                    drop(client);
                    return self.announce_confirmed(&confirmed, trace).await;
                }
                let timeout = self.config.move_timeout().as_secs_f64();
                db_media::schedule_move_timeout(
                    &tx,
                    saga.request_id,
                    timeout,
                    &self.config.topic_prefix,
                )
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)?;
                transition(Some(&saga), SagaState::Received, saga.created_at);
                tracing::debug!(request = %saga.request_id, source = %r.source, "upload received");
                self.spawn_move(saga, r.retry_count as u32, *trace);
            }
            SagaState::Received => {
                // A retry's re-emission, or a second report of the same arrival: (re)start the
                // move, which is safe to repeat.
                tx.commit().await.map_err(db)?;
                self.spawn_move(saga, r.retry_count as u32, *trace);
            }
            SagaState::Expired => {
                tx.commit().await.map_err(db)?;
                tracing::info!(request = %saga.request_id, "upload arrived after its URL expired; removing it");
                if let Some(path) = &saga.upload_path {
                    if let Err(e) = self.storage.delete(path).await {
                        tracing::warn!(error = %e, "removing a late upload failed");
                    }
                }
            }
            SagaState::Rejected | SagaState::Confirmed | SagaState::Failed => {
                tx.commit().await.map_err(db)?
            }
        }
        Ok(())
    }

    /// Moves the upload to its permanent key in the background and reports `file.ready`. A
    /// move that fails or never finishes is caught by the move timeout.
    fn spawn_move(self: &Arc<Self>, saga: Saga, step: u32, trace: TraceParent) {
        let this = self.clone();
        // In the trace of the record that asked for the move.
        let span = tracing::debug_span!("move upload", otel.name = "move upload");
        let moving = async move {
            let Ok(_permit) = this.moves.clone().acquire_owned().await else {
                return;
            };
            match this.move_file(&saga).await {
                Ok(size) => {
                    metrics::counter!(MOVES, "outcome" => "moved").increment(1);
                    metrics::histogram!(OBJECT_BYTES).record(size as f64);
                    let reported =
                        retry_transient(&this.shutdown.token(), "media_saga.report_moved", || {
                            this.emit_ready(&saga, size, step, &trace)
                        })
                        .await;
                    if let Err(Stopped::Permanent(error)) = reported {
                        tracing::error!(request = %saga.request_id, %error, "reporting a moved file failed; the move timeout will retry it");
                    }
                }
                Err(error) => {
                    metrics::counter!(MOVES, "outcome" => "failed").increment(1);
                    tracing::warn!(request = %saga.request_id, %error, "moving an upload failed; the move timeout will retry it");
                }
            }
        };
        self.shutdown.spawn_work(moving.instrument(span));
    }

    async fn move_file(&self, saga: &Saga) -> Result<i64, String> {
        let from = saga.upload_path.as_deref().unwrap_or_default();
        let to = saga.permanent_path.as_deref().unwrap_or_default();
        self.storage.move_object(from, to, saga.file_size).await
    }

    async fn emit_ready(
        &self,
        saga: &Saga,
        size: i64,
        step: u32,
        trace: &TraceParent,
    ) -> Result<(), StepError> {
        let record = json!({"request_id": saga.request_id, "user_id": saga.user_id,
            "file_path": saga.permanent_path, "size": size});
        self.emitter
            .emit(Topic::FileReady, saga.request_id, step, &record, trace)
            .await
    }

    /// The join: the permanent object exists. Confirms a received upload; remembers it for a
    /// signed one whose arrival is not read yet.
    pub(super) async fn file_ready(
        &self,
        f: &FileReady,
        trace: &TraceParent,
    ) -> Result<(), StepError> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let Some(saga) = db_media::lock_saga(&tx, f.request_id).await.map_err(db)? else {
            tracing::warn!(request = %f.request_id, "ready file of an unknown upload; ignored");
            return Ok(());
        };
        if saga.user_id != f.user_id || saga.permanent_path.as_deref() != Some(&f.file_path) {
            tracing::warn!(request = %f.request_id, path = %f.file_path, "ready file does not match its saga; ignored");
            return Ok(());
        }
        match saga.state {
            SagaState::Received => {
                let confirmed = db_media::confirm(&tx, &saga).await.map_err(db)?;
                tx.commit().await.map_err(db)?;
                transition(Some(&saga), SagaState::Confirmed, saga.created_at);
                drop(client);
                self.announce_confirmed(&confirmed, trace).await
            }
            SagaState::Signed => {
                db_media::mark_ready(&tx, saga.request_id)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)
            }
            SagaState::Confirmed => {
                tx.commit().await.map_err(db)?;
                drop(client);
                self.announce_confirmed(&saga, trace).await
            }
            SagaState::Rejected | SagaState::Expired | SagaState::Failed => {
                tx.commit().await.map_err(db)
            }
        }
    }

    async fn announce_confirmed(&self, saga: &Saga, trace: &TraceParent) -> Result<(), StepError> {
        let record = json!({"request_id": saga.request_id, "user_id": saga.user_id,
            "file_path": saga.permanent_path, "file_name": saga.file_name,
            "media_type": saga.media_type, "file_size": saga.file_size});
        self.emitter
            .emit(Topic::UploadConfirmed, saga.request_id, 0, &record, trace)
            .await
    }

    /// A move timeout asked for another try: move again and, when it worked, re-emit the
    /// arrival with the retry's number (which restarts the join).
    pub(super) async fn upload_retry(
        &self,
        r: &UploadRetry,
        trace: &TraceParent,
    ) -> Result<(), StepError> {
        let saga = {
            let client = self.pool.get().await.map_err(db)?;
            db_media::saga(&**client, r.request_id).await.map_err(db)?
        };
        let Some(saga) = saga.filter(|s| s.state == SagaState::Received) else {
            return Ok(());
        };
        match self.move_file(&saga).await {
            Ok(size) => {
                metrics::counter!(MOVES, "outcome" => "moved").increment(1);
                metrics::histogram!(OBJECT_BYTES).record(size as f64);
                let record = json!({"request_id": saga.request_id, "user_id": saga.user_id,
                    "file_path": saga.upload_path, "permanent_path": saga.permanent_path,
                    "size": size, "content_type": saga.media_type, "source": "retry",
                    "retry_count": r.retry_count});
                self.emitter
                    .emit(
                        Topic::UploadReceived,
                        saga.request_id,
                        r.retry_count as u32,
                        &record,
                        trace,
                    )
                    .await
            }
            Err(error) => {
                metrics::counter!(MOVES, "outcome" => "failed").increment(1);
                tracing::warn!(request = %saga.request_id, retry = r.retry_count, %error, "retried move failed; waiting for the next timeout");
                Ok(())
            }
        }
    }

    /// Emits `internal.media.upload.received` for an arrival reported by an S3 event.
    pub async fn report_arrival(
        &self,
        saga: &Saga,
        size: i64,
        content_type: &str,
        source: &str,
    ) -> Result<(), StepError> {
        let record = json!({"request_id": saga.request_id, "user_id": saga.user_id,
            "file_path": saga.upload_path, "permanent_path": saga.permanent_path,
            "size": size, "content_type": content_type, "source": source, "retry_count": 0});
        self.emitter
            .emit(
                Topic::UploadReceived,
                saga.request_id,
                0,
                &record,
                &TraceParent::outgoing(None),
            )
            .await
    }

    /// Emits `internal.media.file.ready` for a permanent object reported by an S3 event.
    pub async fn report_ready(&self, saga: &Saga, size: i64) -> Result<(), StepError> {
        self.emit_ready(saga, size, 0, &TraceParent::outgoing(None))
            .await
    }
}
