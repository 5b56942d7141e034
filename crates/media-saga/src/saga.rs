//! The saga steps. Each step locks the saga's row, makes its change in one transaction, and then
//! produces its results; a step repeated after a crash finds the change made and produces the
//! same results again (same CloudEvents ids), so nothing is applied twice. Deadlines (the upload
//! URL's TTL, the move timeout) live in `media_deadlines` and are handled in `deadlines.rs`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rdkafka::message::{Message, OwnedMessage};
use serde::Deserialize;
use serde_json::json;
use substrate_avro::{avro_to_json, Registry};
use substrate_db::media::{Saga, SAGA_COLUMNS};
use substrate_db::{DbError, Pool};
use substrate_kafka::{DeadLetter, Origin, TraceParent};
use substrate_runtime::failure::{retry_transient, Failure, Stopped};
use substrate_runtime::Shutdown;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::config::SagaConfig;
use crate::emit::{Emitter, Topic};
use crate::metrics::{FINISHED, MOVES, STEP_SECONDS};
use crate::storage::{paths, Storage};

/// Saga states (the `state` column).
pub mod state {
    pub const SIGNED: &str = "signed";
    pub const REJECTED: &str = "rejected";
    pub const RECEIVED: &str = "received";
    pub const CONFIRMED: &str = "confirmed";
    pub const EXPIRED: &str = "expired";
    pub const FAILED: &str = "failed";
}

#[derive(Debug, Deserialize)]
pub struct UploadIntent {
    pub request_id: Uuid,
    pub user_id: Uuid,
    pub file_name: String,
    pub media_type: String,
    pub file_size: i64,
}

#[derive(Debug, Deserialize)]
pub struct UploadReceived {
    pub request_id: Uuid,
    pub user_id: Uuid,
    pub retry_count: i32,
    pub source: String,
}

#[derive(Debug, Deserialize)]
pub struct FileReady {
    pub request_id: Uuid,
    pub user_id: Uuid,
    pub file_path: String,
}

#[derive(Debug, Deserialize)]
pub struct UploadRetry {
    pub request_id: Uuid,
    pub retry_count: i32,
}

#[derive(Debug, Deserialize)]
pub struct FileIntent {
    pub request_id: Uuid,
    pub user_id: Uuid,
    pub file_path: String,
}

/// What a saga step fails with: transient (retried with the record's offset held) or permanent
/// (the record is dead-lettered).
pub type StepError = Failure;

/// A database error, classified, with what the database said.
pub fn db(e: impl Into<DbError>) -> StepError {
    Failure::of(&e.into())
}

pub struct Engine {
    pub pool: Pool,
    pub registry: Registry,
    pub emitter: Emitter,
    pub storage: Arc<Storage>,
    pub config: SagaConfig,
    pub moves: Arc<Semaphore>,
    pub dead_letter: DeadLetter,
    pub shutdown: Shutdown,
}

impl Engine {
    /// Handles one consumed record until its effects are durable; false on shutdown.
    pub async fn handle(self: &Arc<Self>, message: OwnedMessage) -> bool {
        let Some(topic) = self.emitter.topics.of(message.topic()) else {
            return true;
        };
        let started = Instant::now();
        let trace = message
            .headers()
            .and_then(|h| substrate_kafka::headers::header_str(h, "traceparent"))
            .and_then(TraceParent::parse)
            .map(|t| t.child())
            .unwrap_or_else(TraceParent::new_root);
        let Some(payload) = message.payload() else {
            return self.reject(&message, "the record has no value").await;
        };
        let decoded = retry_transient(&self.shutdown.token(), "media_saga.decode", || {
            self.registry.decode(payload)
        })
        .await;
        let json = match decoded {
            Err(Stopped::Cancelled) => return false,
            Err(Stopped::Permanent(e)) => {
                return self
                    .reject(&message, &format!("undecodable: {}", e.message))
                    .await
            }
            Ok((value, _)) => avro_to_json(&value),
        };
        macro_rules! parse {
            ($t:ty) => {
                match serde_json::from_value::<$t>(json.clone()) {
                    Ok(v) => v,
                    Err(e) => {
                        return self
                            .reject(&message, &format!("not a {} record: {e}", topic.name()))
                            .await
                    }
                }
            };
        }
        let done = match topic {
            Topic::UploadIntent => {
                let intent = parse!(UploadIntent);
                self.step(&message, "media_saga.credit_check", || {
                    self.upload_intent(&intent, &trace)
                })
                .await
            }
            Topic::UploadReceived => {
                let received = parse!(UploadReceived);
                self.step(&message, "media_saga.arrival", || {
                    self.upload_received(&received, &trace)
                })
                .await
            }
            Topic::FileReady => {
                let ready = parse!(FileReady);
                self.step(&message, "media_saga.file_ready", || {
                    self.file_ready(&ready, &trace)
                })
                .await
            }
            Topic::UploadRetry => {
                let retry = parse!(UploadRetry);
                self.step(&message, "media_saga.move_retry", || {
                    self.upload_retry(&retry, &trace)
                })
                .await
            }
            Topic::DownloadIntent => {
                let intent = parse!(FileIntent);
                self.step(&message, "media_saga.download", || {
                    self.download(&intent, &trace)
                })
                .await
            }
            Topic::DeleteIntent => {
                let intent = parse!(FileIntent);
                self.step(&message, "media_saga.delete", || {
                    self.delete(&intent, &trace)
                })
                .await
            }
            _ => true,
        };
        metrics::histogram!(STEP_SECONDS, "topic" => topic.name())
            .record(started.elapsed().as_secs_f64());
        done
    }

    /// Runs a step until its effects are durable: transient failures back off with the offset
    /// held, a permanent one dead-letters the record. False when shutdown interrupted it.
    async fn step<F, Fut>(&self, message: &OwnedMessage, operation: &'static str, effect: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), StepError>>,
    {
        match retry_transient(&self.shutdown.token(), operation, effect).await {
            Ok(()) => true,
            Err(Stopped::Cancelled) => false,
            Err(Stopped::Permanent(failure)) => self.reject(message, failure.message()).await,
        }
    }

    /// Sends a record the saga cannot process to the dead-letter topic.
    async fn reject(&self, message: &OwnedMessage, error: &str) -> bool {
        self.dead_letter
            .park(
                message,
                &Origin::of(message),
                error,
                1,
                &self.shutdown.token(),
            )
            .await
    }

    // ---- upload: credit check, presign, TTL deadline ----

    async fn upload_intent(&self, i: &UploadIntent, trace: &TraceParent) -> Result<(), StepError> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let existing = tx
            .query_opt(
                &format!(
                    "SELECT {SAGA_COLUMNS} FROM public.media_sagas WHERE request_id = $1 FOR UPDATE"
                ),
                &[&i.request_id],
            )
            .await
            .map_err(db)?;
        let (saga, balance) = match existing {
            Some(row) => (Saga::from_row(&row), None),
            None => {
                let debit = substrate_db::media::debit(
                    &*tx,
                    i.request_id,
                    i.user_id,
                    self.config.starting_credits,
                )
                .await
                .map_err(db)?;
                let (upload, permanent) = paths(
                    &self.config.upload_prefix,
                    &self.config.files_prefix,
                    i.user_id,
                    i.request_id,
                    &i.file_name,
                );
                let (state, reason) = if debit.approved {
                    (state::SIGNED, None)
                } else {
                    (state::REJECTED, Some("insufficient credits"))
                };
                let ttl = self.config.upload_ttl().as_secs_f64();
                let row = tx
                    .query_one(
                        &format!(
                            "INSERT INTO public.media_sagas (request_id, user_id, state, file_name,
                                 media_type, file_size, upload_path, permanent_path, reason,
                                 expires_at, finished_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                                 CASE WHEN $3 = 'signed'
                                      THEN date_trunc('milliseconds', now()) + $10 * interval '1 second' END,
                                 CASE WHEN $3 = 'rejected' THEN now() END)
                             RETURNING {SAGA_COLUMNS}"
                        ),
                        &[
                            &i.request_id,
                            &i.user_id,
                            &state,
                            &i.file_name,
                            &i.media_type,
                            &i.file_size,
                            &upload,
                            &permanent,
                            &reason,
                            &ttl,
                        ],
                    )
                    .await
                    .map_err(db)?;
                let saga = Saga::from_row(&row);
                if debit.approved {
                    tx.execute(
                        "INSERT INTO public.media_deadlines (request_id, kind, due_at, scope)
                         VALUES ($1, 'upload_ttl', $2, $3) ON CONFLICT DO NOTHING",
                        &[
                            &saga.request_id,
                            &saga.expires_at,
                            &self.config.topic_prefix,
                        ],
                    )
                    .await
                    .map_err(db)?;
                }
                (saga, Some(debit.balance))
            }
        };
        tx.commit().await.map_err(db)?;
        drop(client);
        if balance.is_some() && saga.state == state::REJECTED {
            metrics::counter!(FINISHED, "state" => state::REJECTED).increment(1);
        }
        self.announce_decision(&saga, balance, trace).await
    }

    /// The results of the credit check: rejected, or approved + the signed upload URL.
    async fn announce_decision(
        &self,
        saga: &Saga,
        balance: Option<i32>,
        trace: &TraceParent,
    ) -> Result<(), StepError> {
        if saga.state == state::REJECTED {
            let record = json!({"request_id": saga.request_id, "user_id": saga.user_id,
                "file_name": saga.file_name,
                "reason": saga.reason.clone().unwrap_or_else(|| "rejected".into())});
            return self
                .emitter
                .emit(Topic::UploadRejected, saga.request_id, 0, &record, trace)
                .await;
        }
        let balance = match balance {
            Some(b) => b,
            None => {
                let client = self.pool.get().await.map_err(db)?;
                substrate_db::media::balance(&**client, saga.user_id)
                    .await
                    .map_err(db)?
                    .unwrap_or(0)
            }
        };
        let approved = json!({"request_id": saga.request_id, "user_id": saga.user_id,
            "file_name": saga.file_name, "media_type": saga.media_type,
            "file_size": saga.file_size, "balance": balance});
        let expires_at = saga
            .expires_at
            .ok_or_else(|| Failure::permanent("an approved saga has no expiry"))?;
        let upload_path = saga.upload_path.clone().unwrap_or_default();
        let ttl = self.config.upload_ttl();
        let url = self
            .storage
            .presign_put(
                &upload_path,
                &saga.media_type,
                saga.file_size,
                SystemTime::from(expires_at) - ttl,
                ttl,
            )
            .await
            .map_err(|e| Failure::permanent(format!("signing the upload URL: {e}")))?;
        let signed = json!({"request_id": saga.request_id, "user_id": saga.user_id,
            "file_path": upload_path, "upload_url": url, "media_type": saga.media_type,
            "file_size": saga.file_size, "expires_at": expires_at.timestamp_millis()});
        // Both wait for their acknowledgement together.
        let (a, s) = tokio::join!(
            self.emitter
                .emit(Topic::UploadApproved, saga.request_id, 0, &approved, trace),
            self.emitter
                .emit(Topic::UploadSigned, saga.request_id, 0, &signed, trace)
        );
        a.and(s)
    }

    // ---- move saga: arrival, asynchronous move, join, retries ----

    async fn upload_received(
        self: &Arc<Self>,
        r: &UploadReceived,
        trace: &TraceParent,
    ) -> Result<(), StepError> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let Some(saga) = lock_saga(&tx, r.request_id).await? else {
            tracing::warn!(request = %r.request_id, "arrival for an unknown upload; ignored");
            return Ok(());
        };
        if saga.user_id != r.user_id {
            tracing::warn!(request = %r.request_id, "arrival names another user; ignored");
            return Ok(());
        }
        match saga.state.as_str() {
            state::SIGNED => {
                tx.execute(
                    "UPDATE public.media_sagas SET state = 'received', received_at = now(),
                         retry_count = GREATEST(retry_count, $2), updated_at = now()
                     WHERE request_id = $1",
                    &[&saga.request_id, &r.retry_count],
                )
                .await
                .map_err(db)?;
                tx.execute(
                    "DELETE FROM public.media_deadlines WHERE request_id = $1 AND kind = 'upload_ttl'",
                    &[&saga.request_id],
                )
                .await
                .map_err(db)?;
                if saga.ready_at.is_some() {
                    // The permanent object was reported before the upload: the join is complete.
                    let confirmed = confirm(&tx, &saga).await?;
                    tx.commit().await.map_err(db)?;
                    metrics::counter!(FINISHED, "state" => state::CONFIRMED).increment(1);
                    drop(client);
                    return self.announce_confirmed(&confirmed, trace).await;
                }
                let timeout = self.config.move_timeout().as_secs_f64();
                tx.execute(
                    "INSERT INTO public.media_deadlines (request_id, kind, due_at, scope)
                     VALUES ($1, 'move_timeout', now() + $2 * interval '1 second', $3)
                     ON CONFLICT (request_id, kind)
                     DO UPDATE SET due_at = EXCLUDED.due_at, fired_at = NULL",
                    &[&saga.request_id, &timeout, &self.config.topic_prefix],
                )
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)?;
                tracing::debug!(request = %saga.request_id, source = %r.source, "upload received");
                self.spawn_move(saga, r.retry_count as u32, *trace);
            }
            state::RECEIVED => {
                // A retry's re-emission, or a second report of the same arrival: (re)start the
                // move, which is safe to repeat.
                tx.commit().await.map_err(db)?;
                self.spawn_move(saga, r.retry_count as u32, *trace);
            }
            state::EXPIRED => {
                tx.commit().await.map_err(db)?;
                tracing::info!(request = %saga.request_id, "upload arrived after its URL expired; removing it");
                if let Some(path) = &saga.upload_path {
                    if let Err(e) = self.storage.delete(path).await {
                        tracing::warn!(error = %e, "removing a late upload failed");
                    }
                }
            }
            _ => tx.commit().await.map_err(db)?,
        }
        Ok(())
    }

    /// Moves the upload to its permanent key in the background and reports `file.ready`. A
    /// move that fails or never finishes is caught by the move timeout.
    fn spawn_move(self: &Arc<Self>, saga: Saga, step: u32, trace: TraceParent) {
        let this = self.clone();
        self.shutdown.spawn_work(async move {
            let Ok(_permit) = this.moves.clone().acquire_owned().await else {
                return;
            };
            match this.move_file(&saga).await {
                Ok(size) => {
                    metrics::counter!(MOVES, "outcome" => "moved").increment(1);
                    let reported = retry_transient(
                        &this.shutdown.token(),
                        "media_saga.report_moved",
                        || this.emit_ready(&saga, size, step, &trace),
                    )
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
        });
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

    async fn file_ready(&self, f: &FileReady, trace: &TraceParent) -> Result<(), StepError> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let Some(saga) = lock_saga(&tx, f.request_id).await? else {
            tracing::warn!(request = %f.request_id, "ready file of an unknown upload; ignored");
            return Ok(());
        };
        if saga.user_id != f.user_id || saga.permanent_path.as_deref() != Some(&f.file_path) {
            tracing::warn!(request = %f.request_id, path = %f.file_path, "ready file does not match its saga; ignored");
            return Ok(());
        }
        match saga.state.as_str() {
            state::RECEIVED => {
                let confirmed = confirm(&tx, &saga).await?;
                tx.commit().await.map_err(db)?;
                metrics::counter!(FINISHED, "state" => state::CONFIRMED).increment(1);
                drop(client);
                self.announce_confirmed(&confirmed, trace).await
            }
            state::SIGNED => {
                tx.execute(
                    "UPDATE public.media_sagas SET ready_at = now(), updated_at = now()
                     WHERE request_id = $1",
                    &[&saga.request_id],
                )
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)
            }
            state::CONFIRMED => {
                tx.commit().await.map_err(db)?;
                drop(client);
                self.announce_confirmed(&saga, trace).await
            }
            _ => tx.commit().await.map_err(db),
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

    async fn upload_retry(&self, r: &UploadRetry, trace: &TraceParent) -> Result<(), StepError> {
        let saga = {
            let client = self.pool.get().await.map_err(db)?;
            substrate_db::media::saga(&**client, r.request_id)
                .await
                .map_err(db)?
        };
        let Some(saga) = saga.filter(|s| s.state == state::RECEIVED) else {
            return Ok(());
        };
        match self.move_file(&saga).await {
            Ok(size) => {
                metrics::counter!(MOVES, "outcome" => "moved").increment(1);
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

    // ---- download and delete ----

    async fn download(&self, d: &FileIntent, trace: &TraceParent) -> Result<(), StepError> {
        let owned = {
            let client = self.pool.get().await.map_err(db)?;
            client
                .query_opt(
                    "SELECT 1 FROM public.media_files
                     WHERE file_path = $1 AND user_id = $2 AND status = 'active'",
                    &[&d.file_path, &d.user_id],
                )
                .await
                .map_err(db)?
                .is_some()
        };
        if !owned {
            let record = json!({"request_id": d.request_id, "user_id": d.user_id,
                "file_path": d.file_path, "reason": "no active file of yours at this path"});
            return self
                .emitter
                .emit(Topic::DownloadRejected, d.request_id, 0, &record, trace)
                .await;
        }
        let ttl = self.config.download_ttl();
        let now = SystemTime::now();
        let url = self
            .storage
            .presign_get(&d.file_path, now, ttl)
            .await
            .map_err(|e| Failure::permanent(format!("signing the download URL: {e}")))?;
        let expires_at = chrono::DateTime::<chrono::Utc>::from(now + ttl).timestamp_millis();
        let record = json!({"request_id": d.request_id, "user_id": d.user_id,
            "file_path": d.file_path, "download_url": url, "expires_at": expires_at});
        self.emitter
            .emit(Topic::DownloadSigned, d.request_id, 0, &record, trace)
            .await
    }

    async fn delete(&self, d: &FileIntent, trace: &TraceParent) -> Result<(), StepError> {
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_opt(
                "SELECT status, deleted_at FROM public.media_files
                 WHERE file_path = $1 AND user_id = $2",
                &[&d.file_path, &d.user_id],
            )
            .await
            .map_err(db)?;
        let rejected = |reason: String| {
            json!({"request_id": d.request_id, "user_id": d.user_id,
                "file_path": d.file_path, "reason": reason})
        };
        let Some(row) = row else {
            let record = rejected("no file of yours at this path".into());
            return self
                .emitter
                .emit(Topic::DeleteRejected, d.request_id, 0, &record, trace)
                .await;
        };
        let status: String = row.get(0);
        let deleted_at: chrono::DateTime<chrono::Utc> = if status == "deleted" {
            row.get::<_, Option<chrono::DateTime<chrono::Utc>>>(1)
                .unwrap_or_else(chrono::Utc::now)
        } else {
            // The object goes first: a file marked deleted never points at a live object.
            if let Err(error) = self.storage.delete(&d.file_path).await {
                tracing::warn!(path = %d.file_path, %error, "deleting an object failed");
                let record = rejected(format!("the object could not be removed: {error}"));
                return self
                    .emitter
                    .emit(Topic::DeleteRejected, d.request_id, 0, &record, trace)
                    .await;
            }
            client
                .query_one(
                    "UPDATE public.media_files
                     SET status = 'deleted', deleted_at = COALESCE(deleted_at, now())
                     WHERE file_path = $1 AND user_id = $2 RETURNING deleted_at",
                    &[&d.file_path, &d.user_id],
                )
                .await
                .map_err(db)?
                .get::<_, Option<chrono::DateTime<chrono::Utc>>>(0)
                .unwrap_or_else(chrono::Utc::now)
        };
        drop(client);
        let record = json!({"request_id": d.request_id, "user_id": d.user_id,
            "file_path": d.file_path, "deleted_at": deleted_at.timestamp_millis()});
        self.emitter
            .emit(Topic::Deleted, d.request_id, 0, &record, trace)
            .await
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
                &TraceParent::new_root(),
            )
            .await
    }

    /// Emits `internal.media.file.ready` for a permanent object reported by an S3 event.
    pub async fn report_ready(&self, saga: &Saga, size: i64) -> Result<(), StepError> {
        self.emit_ready(saga, size, 0, &TraceParent::new_root())
            .await
    }
}

/// The saga row, locked for this transaction.
pub async fn lock_saga(
    tx: &tokio_postgres::Transaction<'_>,
    request: Uuid,
) -> Result<Option<Saga>, StepError> {
    Ok(tx
        .query_opt(
            &format!(
                "SELECT {SAGA_COLUMNS} FROM public.media_sagas WHERE request_id = $1 FOR UPDATE"
            ),
            &[&request],
        )
        .await
        .map_err(db)?
        .as_ref()
        .map(Saga::from_row))
}

/// Completes the upload: the file row, the saga's terminal state, no deadlines left.
async fn confirm(tx: &tokio_postgres::Transaction<'_>, saga: &Saga) -> Result<Saga, StepError> {
    tx.execute(
        "INSERT INTO public.media_files (request_id, user_id, file_path, file_name, media_type, file_size)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request_id) DO NOTHING",
        &[
            &saga.request_id,
            &saga.user_id,
            &saga.permanent_path,
            &saga.file_name,
            &saga.media_type,
            &saga.file_size,
        ],
    )
    .await
    .map_err(db)?;
    let row = tx
        .query_one(
            &format!(
                "UPDATE public.media_sagas SET state = 'confirmed', ready_at = COALESCE(ready_at, now()),
                     finished_at = now(), updated_at = now()
                 WHERE request_id = $1 RETURNING {SAGA_COLUMNS}"
            ),
            &[&saga.request_id],
        )
        .await
        .map_err(db)?;
    tx.execute(
        "DELETE FROM public.media_deadlines WHERE request_id = $1",
        &[&saga.request_id],
    )
    .await
    .map_err(db)?;
    Ok(Saga::from_row(&row))
}
