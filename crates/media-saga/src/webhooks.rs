//! S3 event notifications: `POST /webhooks/media-upload` (objects created under the upload
//! prefix → `internal.media.upload.received`) and `POST /webhooks/file-ready` (objects created
//! under the files prefix → `internal.media.file.ready`). The body is the S3/MinIO event format
//! (`{"Records": [{"eventName", "s3": {"bucket": {"name"}, "object": {"key", "size"}}}]}`, keys
//! URL-encoded); the caller authenticates with `Authorization: Bearer <webhook_secret>` (MinIO's
//! webhook `auth_token`). Records about other buckets, prefixes or unknown uploads are ignored
//! and listed in the answer; a failure of the database, the registry or the broker answers 503
//! so the sender retries. Errors are JSON `{"error": {"code", "message"}}`, as the listener's
//! load shedding answers; the body is read only from an authenticated caller, within
//! `media_saga.http.body_read_timeout_ms` (then 408) and at most 2 MiB (then 413).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use substrate_db::media::SagaState;
use substrate_runtime::failure::{Classify, Failure};
use subtle::ConstantTimeEq;

use crate::saga::{db, Engine};
use crate::storage::parse_key;

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

/// The listener's answer to a path it does not serve (axum's own 404 has no body).
pub async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The listener's answer to a method a path does not take (axum keeps the `Allow` header).
pub async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take this method (see the Allow header)",
    )
}

/// `POST /webhooks/media-upload` and `POST /webhooks/file-ready` (one handler: the key's prefix
/// says which object it is).
pub async fn s3_event(State(engine): State<Arc<Engine>>, request: Request) -> Response {
    notification(&engine, request).await
}

/// The body within `timeout` and axum's default body limit (2 MiB), or the JSON answer why not
/// (which closes the connection: the rest of the body is not read).
async fn read_body(request: Request, timeout: Duration) -> Result<Bytes, Response> {
    match tokio::time::timeout(timeout, Bytes::from_request(request, &())).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(rejection)) => {
            let status = rejection.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "payload_too_large"
            } else {
                "body_unreadable"
            };
            Err(error(status, code, rejection.body_text()))
        }
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body was not received within {} ms",
                timeout.as_millis()
            ),
        )),
    }
}

async fn notification(engine: &Engine, request: Request) -> Response {
    let Some(secret) = engine.config.webhook_secret.as_deref() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks_disabled",
            "media_saga.webhook_secret is not set",
        );
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !bool::from(given.as_bytes().ct_eq(secret.as_bytes())) {
        // Before the body is read: an unauthenticated caller cannot make the saga read it.
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong `Authorization: Bearer` token",
        );
    }
    let body = match read_body(request, engine.config.http.body_read_timeout()).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let records = match parse_s3_event(&body) {
        Ok(records) => records,
        Err(bad) => return bad.into_response(),
    };
    let mut accepted = 0;
    let mut ignored = Vec::new();
    for record in records {
        // A malformed record is refused when reached, after the ones before it were handled.
        let S3Record {
            event_name,
            bucket,
            key,
        } = match record {
            Ok(record) => record,
            Err(bad) => return bad.into_response(),
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

/// A notification the webhook refuses with 400: the error code and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEvent {
    pub code: &'static str,
    pub message: String,
}

impl IntoResponse for BadEvent {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.code, self.message)
    }
}

/// One record of an S3 event notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Record {
    /// `eventName` (e.g. `s3:ObjectCreated:Put`); empty when absent.
    pub event_name: String,
    pub bucket: String,
    /// The object key, URL-decoded.
    pub key: String,
}

/// Reads an S3/MinIO event notification: `invalid_json` when the body is not JSON,
/// `invalid_body` without a `Records` array; then each record, or `invalid_body` naming the
/// record without `s3.bucket.name` or `s3.object.key` (the handler answers that when it reaches
/// the record, as it did when it read records one by one).
pub fn parse_s3_event(body: &[u8]) -> Result<Vec<Result<S3Record, BadEvent>>, BadEvent> {
    let event: Value = serde_json::from_slice(body).map_err(|e| BadEvent {
        code: "invalid_json",
        message: format!("the body is not JSON: {e}"),
    })?;
    let records = event
        .get("Records")
        .and_then(Value::as_array)
        .ok_or_else(|| BadEvent {
            code: "invalid_body",
            message: "expected an S3 event notification with a `Records` array".into(),
        })?;
    Ok(records
        .iter()
        .enumerate()
        .map(|(index, record)| {
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
                .and_then(Value::as_str);
            match (bucket, key) {
                (Some(bucket), Some(key)) => Ok(S3Record {
                    event_name: event_name.to_string(),
                    bucket: bucket.to_string(),
                    key: decode_key(key),
                }),
                _ => Err(BadEvent {
                    code: "invalid_body",
                    message: format!("Records[{index}] has no s3.bucket.name or s3.object.key"),
                }),
            }
        })
        .collect())
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
        if saga.state != SagaState::Signed {
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
    use axum::routing::post;
    use axum::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A listener with `read_body` (50 ms) behind `/read` and the JSON fallbacks.
    async fn serve() -> std::net::SocketAddr {
        let router = Router::new()
            .route(
                "/read",
                post(|request: Request| async move {
                    match read_body(request, Duration::from_millis(50)).await {
                        Ok(body) => body.into_response(),
                        Err(refused) => refused,
                    }
                }),
            )
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed);
        // As the service serves it: answers that leave a body unread close the connection.
        let router = substrate_runtime::http::bounded(
            router,
            &substrate_runtime::http::HttpLimits::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    async fn json_error(response: reqwest::Response) -> (u16, Value) {
        assert_eq!(response.headers()["content-type"], "application/json");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// A stalled body is answered 408 once the body-read timeout passes (before, only the
    /// request timeout cut it off, with a 503), an oversized one 413 as JSON (axum's own 413 is
    /// plain text).
    #[tokio::test]
    async fn bodies_are_read_within_the_timeout_and_the_limit() {
        let addr = serve().await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST /read HTTP/1.1\r\nHost: saga\r\nContent-Length: 100\r\n\r\n{\"Rec")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
            .await
            .expect("answered within the timeout")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");

        let client = reqwest::Client::new();
        let url = format!("http://{addr}/read");
        let response = client
            .post(&url)
            .body(vec![b'a'; 3 << 20])
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["connection"], "close");
        let (status, body) = json_error(response).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (413, &json!("payload_too_large"))
        );
        let response = client.post(&url).body("{}").send().await.unwrap();
        assert_eq!(response.text().await.unwrap(), "{}");
    }

    /// Errors have the shape of the listener's load shedding; unknown paths and methods too.
    #[tokio::test]
    async fn errors_unknown_paths_and_methods_are_json() {
        let refused = BadEvent {
            code: "invalid_json",
            message: "no".into(),
        }
        .into_response();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(refused.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"error": {"code": "invalid_json", "message": "no"}})
        );

        let addr = serve().await;
        let client = reqwest::Client::new();
        for (method, path, expected) in [
            (reqwest::Method::POST, "/nowhere", (404, "not_found")),
            (reqwest::Method::GET, "/read", (405, "method_not_allowed")),
        ] {
            let response = client
                .request(method, format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            if response.status() == 405 {
                assert_eq!(response.headers()["allow"], "POST");
            }
            let (status, body) = json_error(response).await;
            assert_eq!((status, body["error"]["code"].as_str().unwrap()), expected);
        }
    }

    #[test]
    fn keys_are_decoded() {
        assert_eq!(
            decode_key("uploads%2Fa%2Fmy+cat%2B1.png"),
            "uploads/a/my cat+1.png"
        );
        assert_eq!(decode_key("uploads/a/b.png"), "uploads/a/b.png");
    }
}

#[cfg(test)]
mod properties {
    //! Property tests of S3 event parsing: arbitrary bytes and arbitrary JSON never panic and
    //! are refused with a 400 code and message, and well-formed events with arbitrary keys
    //! (percent-encoded, spaces as `+`) give back each record's decoded key.

    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    use proptest::prelude::*;
    use proptest::sample::select;
    use proptest::test_runner::Config as ProptestConfig;

    use super::*;

    /// Cases per property; failures print the shrunk input and write nothing beside the sources.
    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Keys of the S3 event format, so arbitrary JSON often looks like an event.
    const KEYS: &[&str] = &[
        "Records",
        "eventName",
        "eventTime",
        "s3",
        "bucket",
        "name",
        "object",
        "key",
        "size",
    ];

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[%+a-zA-Z0-9/]{0,12}".prop_map(Value::String),
            Just(Value::from("\u{0}")),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            let key = prop_oneof![3 => select(KEYS).prop_map(String::from), 1 => any::<String>()];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map(key, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Checks what any body gives: 400 codes with messages, one result per record, and a
    /// record refused exactly when its bucket name or key is missing.
    fn check(body: &[u8]) -> Result<(), TestCaseError> {
        match parse_s3_event(body) {
            Err(bad) => {
                prop_assert!(matches!(bad.code, "invalid_json" | "invalid_body"));
                prop_assert!(!bad.message.is_empty());
                prop_assert_eq!(bad.into_response().status(), StatusCode::BAD_REQUEST);
            }
            Ok(records) => {
                let event: Value = serde_json::from_slice(body).expect("parsed as JSON");
                let raw = event["Records"].as_array().expect("a Records array");
                prop_assert_eq!(records.len(), raw.len());
                for (index, (record, raw)) in records.into_iter().zip(raw).enumerate() {
                    let bucket = raw.pointer("/s3/bucket/name").and_then(Value::as_str);
                    let key = raw.pointer("/s3/object/key").and_then(Value::as_str);
                    match record {
                        Ok(record) => {
                            prop_assert_eq!(Some(record.bucket.as_str()), bucket);
                            prop_assert_eq!(Some(record.key), key.map(decode_key));
                        }
                        Err(bad) => {
                            prop_assert!(bucket.is_none() || key.is_none());
                            prop_assert_eq!(bad.code, "invalid_body");
                            let named = format!("Records[{index}]");
                            prop_assert!(bad.message.starts_with(&named), "{}", bad.message);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// How S3 and MinIO write keys: percent-encoded, spaces as `+`, sometimes `/` left as is.
    fn encode(key: &str, keep_slashes: bool) -> String {
        const KEEP: &AsciiSet = &NON_ALPHANUMERIC
            .remove(b'/')
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        let set = if keep_slashes { KEEP } else { NON_ALPHANUMERIC };
        utf8_percent_encode(key, set)
            .to_string()
            .replace("%20", "+")
    }

    proptest! {
        #![proptest_config(config())]

        /// Arbitrary bytes, and JSON cut short, never panic.
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..256),
                (json_value(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
                    let text = v.to_string().into_bytes();
                    let at = cut.index(text.len() + 1);
                    text[..at].to_vec()
                }),
            ],
        ) {
            check(&bytes)?;
        }

        /// Arbitrary JSON, often shaped like an event, never panics; records are read as they are.
        #[test]
        fn arbitrary_json_never_panics(
            value in prop_oneof![
                json_value(),
                prop::collection::vec(json_value(), 0..4)
                    .prop_map(|records| json!({"Records": records})),
            ],
        ) {
            check(value.to_string().as_bytes())?;
        }

        /// Well-formed events give each record's event name, bucket and decoded key.
        #[test]
        fn well_formed_events_give_decoded_keys(
            records in prop::collection::vec(
                (
                    prop_oneof![
                        any::<String>(),
                        "[a-zA-Z0-9 +%/._~-]{1,40}",
                        "uploads/[0-9a-f-]{36}/[0-9a-f-]{36}/[a-z +%]{0,12}\\.png",
                    ],
                    any::<bool>(),
                    select(vec!["s3:ObjectCreated:Put", "s3:ObjectRemoved:Delete", ""]),
                    "[a-z0-9.-]{3,20}",
                    any::<u64>(),
                ),
                0..5,
            ),
        ) {
            let raw: Vec<Value> = records
                .iter()
                .map(|(key, keep, name, bucket, size)| json!({
                    "eventVersion": "2.0",
                    "eventSource": "minio:s3",
                    "eventName": name,
                    "eventTime": "2026-01-01T00:00:00.000Z",
                    "s3": {
                        "bucket": {"name": bucket},
                        "object": {"key": encode(key, *keep), "size": size},
                    },
                }))
                .collect();
            let event = json!({ "Records": raw });
            let body = serde_json::to_vec(&event).unwrap();
            let parsed = parse_s3_event(&body).map_err(|e| TestCaseError::fail(e.message))?;
            prop_assert_eq!(parsed.len(), records.len());
            for (record, (key, _, name, bucket, _)) in parsed.into_iter().zip(&records) {
                let record = record.map_err(|e| TestCaseError::fail(e.message))?;
                prop_assert_eq!(&record.key, key);
                prop_assert_eq!(&record.bucket, bucket);
                prop_assert_eq!(&record.event_name, name);
            }
            check(&body)?;
        }
    }
}
