//! S3 event notifications: `POST /webhooks/media-upload` (objects created under the upload
//! prefix → `internal.media.upload.received`) and `POST /webhooks/file-ready` (objects created
//! under the files prefix → `internal.media.file.ready`). The body is the S3/MinIO event format
//! (`{"Records": [{"eventName", "s3": {"bucket": {"name"}, "object": {"key", "size"}}}]}`, keys
//! URL-encoded); the caller authenticates with `Authorization: Bearer <webhook_secret>` (MinIO's
//! webhook `auth_token`). Records about other buckets, prefixes or unknown uploads are ignored
//! and listed in the answer; a failure of the database, the registry or the broker answers 503
//! so the sender retries.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use substrate_runtime::failure::{Classify, Failure};
use subtle::ConstantTimeEq;

use crate::saga::{db, state, Engine};
use crate::storage::parse_key;

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

/// `POST /webhooks/media-upload` and `POST /webhooks/file-ready` (one handler: the key's prefix
/// says which object it is).
pub async fn s3_event(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    notification(&engine, &headers, &body).await
}

async fn notification(engine: &Engine, headers: &HeaderMap, body: &[u8]) -> Response {
    let Some(secret) = engine.config.webhook_secret.as_deref() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks_disabled",
            "media_saga.webhook_secret is not set",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !bool::from(given.as_bytes().ct_eq(secret.as_bytes())) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong `Authorization: Bearer` token",
        );
    }
    let event: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not JSON: {e}"),
            )
        }
    };
    let Some(records) = event.get("Records").and_then(Value::as_array) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "expected an S3 event notification with a `Records` array",
        );
    };
    let mut accepted = 0;
    let mut ignored = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let event_name = record
            .get("eventName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let s3 = record.get("s3");
        let bucket = s3
            .and_then(|s| s.pointer("/bucket/name"))
            .and_then(Value::as_str);
        let key = s3
            .and_then(|s| s.pointer("/object/key"))
            .and_then(Value::as_str)
            .map(decode_key);
        let (Some(bucket), Some(key)) = (bucket, key) else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("Records[{index}] has no s3.bucket.name or s3.object.key"),
            );
        };
        let mut skip = |reason: &str| ignored.push(json!({"key": key, "reason": reason}));
        if !event_name.contains("ObjectCreated") {
            skip("not an object-created event");
            continue;
        }
        if bucket != engine.storage.bucket {
            skip("another bucket");
            continue;
        }
        match arrival(engine, &key).await {
            Ok(Arrival::Reported) => accepted += 1,
            Ok(Arrival::Ignored(reason)) => skip(&reason),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, %key, "handling an S3 event failed");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("the event could not be recorded: {e}"),
                );
            }
            Err(e) => {
                tracing::error!(error = %e, %key, "an S3 event cannot be recorded");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "unrecordable",
                    format!("the event can never be recorded: {e}"),
                );
            }
        }
    }
    Json(json!({"accepted": accepted, "ignored": ignored})).into_response()
}

/// What became of one created object.
enum Arrival {
    /// Reported to the saga.
    Reported,
    /// Not an object the saga waits for (why).
    Ignored(String),
}

/// Reports one created object. S3 and database outages are transient (the sender retries).
async fn arrival(engine: &Engine, key: &str) -> Result<Arrival, Failure> {
    let ignored = |reason: &str| Ok(Arrival::Ignored(reason.to_string()));
    let storage = &engine.storage;
    let (upload, parsed) = match parse_key(&storage.upload_prefix, key) {
        Some(ids) => (true, ids),
        None => match parse_key(&storage.files_prefix, key) {
            Some(ids) => (false, ids),
            None => return ignored("not under the upload or files prefix"),
        },
    };
    let (user, request) = parsed;
    let saga = {
        let client = engine.pool.get().await.map_err(db)?;
        substrate_db::media::saga(&**client, request)
            .await
            .map_err(db)?
    };
    let Some(saga) = saga.filter(|s| s.user_id == user) else {
        return ignored("no upload of this user has this request id");
    };
    let expected = if upload {
        &saga.upload_path
    } else {
        &saga.permanent_path
    };
    if expected.as_deref() != Some(key) {
        return ignored("the key is not the one signed for this request");
    }
    let head = storage
        .head(key)
        .await
        .map_err(|e| Failure::transient(format!("S3 HEAD {key}: {e}")))?;
    let Some(head) = head else {
        return ignored("no such object (deleted since?)");
    };
    if upload {
        if saga.state != state::SIGNED {
            return Ok(Arrival::Ignored(format!(
                "the upload is already {}",
                saga.state
            )));
        }
        if let Err(reason) = saga.check_upload(head.size, head.content_type.as_deref()) {
            return Ok(Arrival::Ignored(reason));
        }
        engine
            .report_arrival(&saga, head.size, &saga.media_type, "s3-event")
            .await?;
    } else {
        engine.report_ready(&saga, head.size).await?;
    }
    Ok(Arrival::Reported)
}

/// S3 event keys are URL-encoded with `+` for spaces.
fn decode_key(key: &str) -> String {
    let spaced = key.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_decoded() {
        assert_eq!(
            decode_key("uploads%2Fa%2Fmy+cat%2B1.png"),
            "uploads/a/my cat+1.png"
        );
        assert_eq!(decode_key("uploads/a/b.png"), "uploads/a/b.png");
    }
}
