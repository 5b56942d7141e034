//! Stored files: a signed download URL for the owner, and deletion (object first, then the
//! row, so a file marked deleted never points at a live object).

use std::time::SystemTime;

use serde_json::json;
use substrate_db::media as db_media;
use substrate_kafka::TraceParent;
use substrate_runtime::failure::Failure;

use super::{db, Engine, FileIntent, StepError};
use crate::emit::Topic;

impl Engine {
    pub(super) async fn download(
        &self,
        d: &FileIntent,
        trace: &TraceParent,
    ) -> Result<(), StepError> {
        let owned = {
            let client = self.pool.get().await.map_err(db)?;
            db_media::owns_active_file(&**client, &d.file_path, d.user_id)
                .await
                .map_err(db)?
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

    pub(super) async fn delete(
        &self,
        d: &FileIntent,
        trace: &TraceParent,
    ) -> Result<(), StepError> {
        let client = self.pool.get().await.map_err(db)?;
        let rejected = |reason: String| {
            json!({"request_id": d.request_id, "user_id": d.user_id,
                "file_path": d.file_path, "reason": reason})
        };
        let deleted_at = match db_media::file_deleted_at(&**client, &d.file_path, d.user_id)
            .await
            .map_err(db)?
        {
            None => {
                let record = rejected("no file of yours at this path".into());
                return self
                    .emitter
                    .emit(Topic::DeleteRejected, d.request_id, 0, &record, trace)
                    .await;
            }
            // Deleted before: the same result again.
            Some(Some(at)) => at,
            Some(None) => {
                if let Err(error) = self.storage.delete(&d.file_path).await {
                    tracing::warn!(path = %d.file_path, %error, "deleting an object failed");
                    let record = rejected(format!("the object could not be removed: {error}"));
                    return self
                        .emitter
                        .emit(Topic::DeleteRejected, d.request_id, 0, &record, trace)
                        .await;
                }
                db_media::mark_file_deleted(&**client, &d.file_path, d.user_id)
                    .await
                    .map_err(db)?
            }
        };
        drop(client);
        let record = json!({"request_id": d.request_id, "user_id": d.user_id,
            "file_path": d.file_path, "deleted_at": deleted_at.timestamp_millis()});
        self.emitter
            .emit(Topic::Deleted, d.request_id, 0, &record, trace)
            .await
    }
}
