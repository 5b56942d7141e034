//! The upload decision: charge one credit (or reject), sign the upload URL, arm its TTL.

use std::time::SystemTime;

use serde_json::json;
use substrate_db::media::{self as db_media, NewSaga, Saga, SagaState};
use substrate_kafka::TraceParent;
use substrate_runtime::failure::Failure;

use super::{db, Engine, StepError, UploadIntent};
use crate::emit::Topic;
use crate::metrics::transition;
use crate::storage::paths;

impl Engine {
    /// Decides an upload intent once; a repeated intent announces the recorded decision again.
    pub(super) async fn upload_intent(
        &self,
        i: &UploadIntent,
        trace: &TraceParent,
    ) -> Result<(), StepError> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let (saga, balance) = match db_media::lock_saga(&tx, i.request_id).await.map_err(db)? {
            Some(saga) => (saga, None),
            None => {
                let debit =
                    db_media::debit(&*tx, i.request_id, i.user_id, self.config.starting_credits)
                        .await
                        .map_err(db)?;
                let (upload, permanent) = paths(
                    &self.config.upload_prefix,
                    &self.config.files_prefix,
                    i.user_id,
                    i.request_id,
                    &i.file_name,
                );
                let traceparent = trace.to_string();
                let new = NewSaga {
                    request_id: i.request_id,
                    user_id: i.user_id,
                    file_name: &i.file_name,
                    media_type: &i.media_type,
                    file_size: i.file_size,
                    upload_path: &upload,
                    permanent_path: &permanent,
                    traceparent: Some(&traceparent),
                };
                let ttl = self.config.upload_ttl().as_secs_f64();
                let saga = db_media::insert_saga(&tx, &new, debit.approved, ttl)
                    .await
                    .map_err(db)?;
                if let Some(due_at) = saga.expires_at {
                    db_media::schedule_upload_ttl(
                        &tx,
                        saga.request_id,
                        due_at,
                        &self.config.topic_prefix,
                    )
                    .await
                    .map_err(db)?;
                }
                (saga, Some(debit.balance))
            }
        };
        tx.commit().await.map_err(db)?;
        drop(client);
        if balance.is_some() {
            transition(None, saga.state, saga.created_at);
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
        if saga.state == SagaState::Rejected {
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
                db_media::balance(&**client, saga.user_id)
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
}
