//! Media intents: `POST /api/v1/media/upload-intent`, `/download-intent` and `/delete-intent`.
//! The caller is the JWT's `sub`; the body is checked field by field (an upload's type against
//! the allowed list, its size against the limit, names and paths for traversal) and the intent
//! is produced to its topic. 202 with the `request_id` means the broker stored it; the outcome
//! reaches the user as a notification. `GET /api/v1/credits` and `GET /api/v1/media/files` read
//! the caller's balance and active files.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use substrate_db::media::SagaState;
use substrate_kafka::media::{event_id, Topic, Topics};
use uuid::Uuid;

use crate::error::ApiError;
use crate::ingest::check_json_content_type;
use crate::publish::{trace_from, Target};
use crate::App;

/// What the media endpoints need from the configuration and the schema catalog.
pub struct Media {
    pub config: crate::config::MediaConfig,
    pub upload_schema: Option<substrate_avro::TopicSchema>,
    pub download_schema: Option<substrate_avro::TopicSchema>,
    pub delete_schema: Option<substrate_avro::TopicSchema>,
    pub received_schema: Option<substrate_avro::TopicSchema>,
    /// The media topics' names with the configured prefix.
    pub topics: Topics,
    /// HEADs uploads for `upload-complete` (absent: that endpoint answers 503).
    pub s3: Option<substrate_s3::Client>,
}

#[derive(Clone, Copy)]
enum Intent {
    Upload,
    Download,
    Delete,
}

impl Intent {
    fn topic(self) -> Topic {
        match self {
            Self::Upload => Topic::UploadIntent,
            Self::Download => Topic::DownloadIntent,
            Self::Delete => Topic::DeleteIntent,
        }
    }
}

pub async fn upload_intent(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&app, Intent::Upload, &headers, body).await
}

pub async fn download_intent(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&app, Intent::Download, &headers, body).await
}

pub async fn delete_intent(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(&app, Intent::Delete, &headers, body).await
}

async fn handle(app: &App, intent: Intent, headers: &HeaderMap, body: Body) -> Response {
    accept(app, intent, headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The caller's user id (the JWT's `sub`).
pub(crate) async fn caller(app: &App, headers: &HeaderMap) -> Result<Uuid, ApiError> {
    let claims = app
        .verifier
        .verify_header(
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .await
        .map_err(|e| ApiError::unauthorized(e.0))?;
    claims
        .get("sub")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::unauthorized("the token's `sub` is not a user id"))
}

pub(crate) fn db_unavailable(app: &App, error: impl std::fmt::Display) -> ApiError {
    tracing::warn!(%error, "database read failed");
    ApiError::unavailable(
        format!("the database did not answer: {error}"),
        app.publisher.retry_after_secs,
    )
}

/// `GET /api/v1/credits`: `{"balance"}` (the starting balance before the first upload).
pub async fn credits(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let result = async {
        let user = caller(&app, &headers).await?;
        let client = app.db.get().await.map_err(|e| db_unavailable(&app, e))?;
        let balance = substrate_db::media::balance(&**client, user)
            .await
            .map_err(|e| db_unavailable(&app, e))?
            .unwrap_or(app.media.config.starting_credits);
        Ok::<_, ApiError>(Json(json!({"balance": balance})).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /api/v1/media/files`: the caller's active files, newest first.
pub async fn files(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let result = async {
        let user = caller(&app, &headers).await?;
        let client = app.db.get().await.map_err(|e| db_unavailable(&app, e))?;
        let files = substrate_db::media::active_files(&**client, user)
            .await
            .map_err(|e| db_unavailable(&app, e))?;
        let files: Vec<Value> = files
            .into_iter()
            .map(|f| {
                json!({"file_path": f.file_path, "file_name": f.file_name,
                       "media_type": f.media_type, "file_size": f.file_size,
                       "request_id": f.request_id, "created_at": f.created_at.to_rfc3339()})
            })
            .collect();
        Ok::<_, ApiError>(Json(json!({"files": files})).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /api/v1/media/upload-complete` `{"request_id"}`: the client says its PUT finished.
/// The object is HEADed (it exists with the declared size and type) and the arrival goes to
/// `internal.media.upload.received`; 202 once the broker has it. Repeating the call after the
/// arrival was recorded answers 202 again; an upload that was rejected, expired or failed
/// answers 409.
pub async fn upload_complete(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    complete(&app, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn complete(app: &App, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let user = caller(app, headers).await?;
    check_json_content_type(headers)?;
    let bytes = app.limits.read_event(headers, body).await?;
    let fields = json_object(&bytes)?;
    reject_unknown(&fields, &["request_id"])?;
    let request_id = fields
        .get("request_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::invalid_field("request_id", "required, a UUID"))?;
    let media = &app.media;
    let topic = &media.topics.name(Topic::UploadReceived);
    let (Some(s3), Some(schema)) = (&media.s3, &media.received_schema) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "media_unavailable",
            "this gateway has no object store settings (s3) or no schema for the received topic",
        ));
    };
    let saga = {
        let client = app.db.get().await.map_err(|e| db_unavailable(app, e))?;
        substrate_db::media::saga(&**client, request_id)
            .await
            .map_err(|e| db_unavailable(app, e))?
    }
    .filter(|s| s.user_id == user)
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_request",
            format!("no signed upload {request_id} of yours (is the upload URL notification there yet?)"),
        )
    })?;
    let conflict = |code: &'static str, message: String| {
        Err(ApiError::new(StatusCode::CONFLICT, code, message))
    };
    match saga.state {
        SagaState::Signed => {}
        SagaState::Received | SagaState::Confirmed => {
            return Ok((
                StatusCode::ACCEPTED,
                Json(json!({"request_id": request_id, "state": saga.state})),
            )
                .into_response())
        }
        SagaState::Expired => {
            return conflict(
                "upload_expired",
                "the upload URL expired; start a new upload".into(),
            )
        }
        SagaState::Rejected => {
            return conflict(
                "upload_rejected",
                format!(
                    "the upload was rejected: {}",
                    saga.reason.unwrap_or_default()
                ),
            )
        }
        SagaState::Failed => {
            return conflict(
                "upload_failed",
                format!("the upload failed: {}", saga.reason.unwrap_or_default()),
            )
        }
    }
    if saga.expires_at.is_some_and(|t| t <= chrono::Utc::now()) {
        return conflict(
            "upload_expired",
            "the upload URL expired; start a new upload".into(),
        );
    }
    let upload_path = saga.upload_path.clone().unwrap_or_default();
    let head = substrate_s3::head(s3, &media.config.bucket, &upload_path)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "HEAD of an upload failed");
            ApiError::unavailable(
                format!("the object store did not answer: {e}"),
                app.publisher.retry_after_secs,
            )
        })?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "upload_missing",
                format!("nothing at {upload_path} yet: PUT the file to the signed URL first"),
            )
        })?;
    saga.check_upload(head.size, head.content_type.as_deref())
        .map_err(|m| ApiError::new(StatusCode::CONFLICT, "upload_mismatch", m))?;
    let record = json!({"request_id": request_id, "user_id": user, "file_path": upload_path,
        "permanent_path": saga.permanent_path, "size": head.size,
        "content_type": saga.media_type, "source": "client", "retry_count": 0});
    let target = Target {
        topic,
        event_type: Topic::UploadReceived.event_type(),
        schema,
        key_field: Some("request_id"),
    };
    // The same id as the saga's own report of this arrival (an S3 event), so the two are one.
    let event_id = event_id(request_id, Topic::UploadReceived, 0);
    let encoded = app.publisher.encode(&target, event_id, &record).await?;
    let trace = trace_from(headers.get("traceparent").and_then(|v| v.to_str().ok()));
    app.publisher.send(topic, &encoded, &trace).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"request_id": request_id, "state": SagaState::Received})),
    )
        .into_response())
}

fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not JSON: {e}"),
        )),
    }
}

async fn accept(
    app: &App,
    intent: Intent,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let user = caller(app, headers).await?;
    check_json_content_type(headers)?;
    let bytes = app.limits.read_event(headers, body).await?;
    let fields = json_object(&bytes)?;
    let media = &app.media;
    let request_id = Uuid::now_v7();
    let now = chrono::Utc::now().timestamp_millis();
    let topic = &media.topics.name(intent.topic());
    let (schema, record) = match intent {
        Intent::Upload => {
            let known = ["file_name", "media_type", "file_size"];
            reject_unknown(&fields, &known)?;
            let file_name = file_name(&fields)?;
            let media_type = string_field(&fields, "media_type")?.to_ascii_lowercase();
            if !media.config.allowed_types.contains(&media_type) {
                return Err(ApiError::invalid_field(
                    "media_type",
                    format!(
                        "`{media_type}` is not allowed; allowed: {}",
                        media.config.allowed_types.join(", ")
                    ),
                ));
            }
            let file_size = fields
                .get("file_size")
                .and_then(Value::as_u64)
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    ApiError::invalid_field("file_size", "must be a positive whole number of bytes")
                })?;
            if file_size > media.config.max_file_bytes {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "file_too_large",
                    format!(
                        "{file_size} bytes is over the limit of {} bytes",
                        media.config.max_file_bytes
                    ),
                )
                .field("file_size"));
            }
            (
                &media.upload_schema,
                json!({"request_id": request_id, "user_id": user, "file_name": file_name,
                       "media_type": media_type, "file_size": file_size, "requested_at": now}),
            )
        }
        Intent::Download | Intent::Delete => {
            reject_unknown(&fields, &["file_path"])?;
            let file_path = file_path(&fields)?;
            let schema = match intent {
                Intent::Download => &media.download_schema,
                _ => &media.delete_schema,
            };
            (
                schema,
                json!({"request_id": request_id, "user_id": user, "file_path": file_path,
                       "requested_at": now}),
            )
        }
    };
    let schema = schema.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "media_unavailable",
            format!("{topic} has no schema in this gateway's avro directory"),
        )
    })?;
    let target = Target {
        topic,
        event_type: intent.topic().event_type(),
        schema,
        key_field: Some("user_id"),
    };
    let encoded = app.publisher.encode(&target, request_id, &record).await?;
    let trace = trace_from(headers.get("traceparent").and_then(|v| v.to_str().ok()));
    app.publisher.send(topic, &encoded, &trace).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"request_id": request_id})),
    )
        .into_response())
}

fn reject_unknown(fields: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match fields.keys().find(|k| !known.contains(&k.as_str())) {
        Some(extra) => Err(ApiError::invalid_field(
            extra.clone(),
            format!("unknown field; expected {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn string_field<'a>(fields: &'a Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    fields
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::invalid_field(name, "required, a non-empty string"))
}

/// A plain file name: no path separators, no `.`/`..`, no control characters, ≤ 255 bytes.
fn file_name(fields: &Map<String, Value>) -> Result<String, ApiError> {
    let name = string_field(fields, "file_name")?;
    if name.len() > 255
        || name == "."
        || name == ".."
        || name.contains(['/', '\\'])
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_field(
            "file_name",
            "must be a plain file name (no path separators or control characters, at most 255 bytes)",
        ));
    }
    Ok(name.to_string())
}

/// An object key as the platform hands it out (`files/<user>/…`): no `..` segments, no leading
/// slash, no control characters, ≤ 1024 bytes. Ownership is checked by the media saga.
fn file_path(fields: &Map<String, Value>) -> Result<String, ApiError> {
    let path = string_field(fields, "file_path")?;
    if path.len() > 1024
        || path.starts_with('/')
        || path
            .split('/')
            .any(|segment| segment == ".." || segment == ".")
        || path.chars().any(char::is_control)
    {
        return Err(ApiError::invalid_field(
            "file_path",
            "must be a relative object key without `.`/`..` segments or control characters",
        ));
    }
    Ok(path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn names_and_paths() {
        assert!(file_name(&map(json!({"file_name": "cat.png"}))).is_ok());
        for bad in ["../x", "a/b", "a\\b", "..", "", "a\u{0}b"] {
            assert!(
                file_name(&map(json!({"file_name": bad}))).is_err(),
                "{bad:?}"
            );
        }
        assert!(file_path(&map(json!({"file_path": "files/u/r/cat.png"}))).is_ok());
        for bad in ["/files/x", "files/../etc", "files/./x", ""] {
            assert!(
                file_path(&map(json!({"file_path": bad}))).is_err(),
                "{bad:?}"
            );
        }
        assert!(
            reject_unknown(&map(json!({"file_path": "x", "extra": 1})), &["file_path"]).is_err()
        );
    }
}
