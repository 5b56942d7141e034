//! `POST /api/v1/events/{route}` and `POST /api/v1/events/{route}/batch`: route lookup, auth,
//! content checks, body limits (enforced while reading), enrichment from JWT claims, schema
//! validation and produce. 202 means the broker acknowledged the record.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Map, Value as Json_};
use uuid::Uuid;

use crate::auth::Claims;
use crate::error::ApiError;
use crate::metrics::{EVENTS_ACCEPTED, REJECTED, REQUESTS, REQUEST_SECONDS};
use crate::publish::{trace_from, Encoded, Target};
use crate::routes::{AuthMode, Route, EVENT_ID_FIELD, EVENT_TIME_FIELD};
use crate::App;

pub async fn post_event(
    State(app): State<Arc<App>>,
    Path(route): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = single(&app, &route, &headers, body).await;
    finish(&route, started, result)
}

pub async fn post_batch(
    State(app): State<Arc<App>>,
    Path(route): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = batch(&app, &route, &headers, body).await;
    finish(&route, started, result)
}

fn finish(route: &str, started: Instant, result: Result<Response, ApiError>) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    let route_label = if response.status() == StatusCode::NOT_FOUND {
        "<unknown>".to_string()
    } else {
        route.to_string()
    };
    metrics::counter!(REQUESTS, "route" => route_label.clone(), "status" => response.status().as_u16().to_string()).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "route" => route_label)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Route lookup, authentication and content-type: everything checked before the body is read.
async fn admit(
    app: &App,
    route_name: &str,
    headers: &HeaderMap,
) -> Result<(Arc<Route>, Option<Claims>), ApiError> {
    let route = app.routes.get(route_name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_route",
            format!("no route named `{route_name}`"),
        )
    })?;
    let claims = match route.auth {
        AuthMode::Jwt => Some(
            app.verifier
                .verify_header(
                    headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok()),
                )
                .await
                .map_err(|e| ApiError::unauthorized(e.0))?,
        ),
        AuthMode::None => None,
    };
    check_json_content_type(headers)?;
    Ok((route, claims))
}

pub fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ))
    }
}

/// Reads at most `limit` bytes within `timeout`: a declared length over the limit is refused
/// before reading, a stream is cut off as soon as it passes the limit, and a body that arrives
/// too slowly is answered 408.
pub async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    match read {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body was not received within {} ms",
                timeout.as_millis()
            ),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::too_large(limit))
        }
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "body_unreadable",
            format!("the body could not be read: {e}"),
        )),
    }
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Json_>, ApiError> {
    match serde_json::from_slice::<Json_>(bytes) {
        Ok(Json_::Object(map)) => {
            if let Some(field) = nul_field(&map, "") {
                return Err(ApiError::invalid_field(
                    field,
                    "contains a NUL character (\\u0000), which text in the platform's stores cannot hold",
                ));
            }
            Ok(map)
        }
        Ok(_) => Err(ApiError::invalid_field(
            "",
            "the event must be a JSON object",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// The path (`a.b[2]`) of the first key or string value holding a NUL character, which
/// PostgreSQL's `text` and `jsonb` refuse: refused here rather than accepted and then lost.
fn nul_field(map: &Map<String, Json_>, prefix: &str) -> Option<String> {
    fn walk(value: &Json_, path: String) -> Option<String> {
        match value {
            Json_::String(s) if s.contains('\0') => Some(path),
            Json_::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, v)| walk(v, format!("{path}[{i}]"))),
            Json_::Object(map) => nul_field(map, &path),
            _ => None,
        }
    }
    map.iter().find_map(|(key, value)| {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if key.contains('\0') {
            Some(path)
        } else {
            walk(value, path)
        }
    })
}

/// Adds the gateway's fields (event id and time, JWT enrichment) and checks `require` rules.
fn prepare(
    route: &Route,
    claims: Option<&Claims>,
    mut event: Map<String, Json_>,
) -> Result<(Uuid, Json_), ApiError> {
    let event_id = Uuid::now_v7();
    if route.schema.has_field(EVENT_ID_FIELD) {
        event.insert(EVENT_ID_FIELD.into(), Json_::String(event_id.to_string()));
    }
    if route.schema.has_field(EVENT_TIME_FIELD) {
        event.insert(
            EVENT_TIME_FIELD.into(),
            Json_::from(Utc::now().timestamp_millis()),
        );
    }
    if let Some(claims) = claims {
        for (field, claim) in &route.enrich {
            let value = claims.get(claim).cloned().unwrap_or(Json_::Null);
            event.insert(field.clone(), value);
        }
    }
    for requirement in &route.require {
        let applies = requirement
            .when
            .iter()
            .all(|(field, expected)| event.get(field) == Some(expected));
        let present = event.get(&requirement.field).is_some_and(|v| !v.is_null());
        if applies && !present {
            let condition = requirement
                .when
                .iter()
                .map(|(f, v)| format!("{f} is {v}"))
                .collect::<Vec<_>>()
                .join(" and ");
            let message = if condition.is_empty() {
                "is required".to_string()
            } else {
                format!("is required when {condition}")
            };
            return Err(ApiError::invalid_field(requirement.field.clone(), message));
        }
    }
    Ok((event_id, Json_::Object(event)))
}

fn target(route: &Route) -> Target<'_> {
    Target {
        topic: &route.topic,
        event_type: &route.event_type,
        schema: &route.schema,
        key_field: route.key_field.as_deref(),
    }
}

async fn single(
    app: &App,
    route_name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (route, claims) = admit(app, route_name, headers).await?;
    let bytes = app.limits.read_event(headers, body).await?;
    let event = parse_object(&bytes)?;
    let (event_id, event) = prepare(&route, claims.as_ref(), event)?;
    let encoded = app
        .publisher
        .encode(&target(&route), event_id, &event)
        .await?;
    let trace = trace_from(headers.get("traceparent").and_then(|v| v.to_str().ok()));
    app.publisher.send(&route.topic, &encoded, &trace).await?;
    metrics::counter!(EVENTS_ACCEPTED, "route" => route.name.clone()).increment(1);
    Ok((StatusCode::ACCEPTED, Json(json!({ "event_id": event_id }))).into_response())
}

async fn batch(
    app: &App,
    route_name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (route, claims) = admit(app, route_name, headers).await?;
    let bytes = app.limits.read_batch(headers, body).await?;
    let items: Vec<Box<serde_json::value::RawValue>> =
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body must be a JSON array of events: {e}"),
            )
        })?;
    if items.is_empty() {
        return Err(ApiError::invalid_field("", "the batch is empty"));
    }
    if items.len() > app.limits.max_batch_events {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too_many_events",
            format!(
                "a batch holds at most {} events, got {}",
                app.limits.max_batch_events,
                items.len()
            ),
        ));
    }
    let trace = trace_from(headers.get("traceparent").and_then(|v| v.to_str().ok()));
    let target = target(&route);

    // Validate and encode every item first, then send the good ones concurrently so the
    // producer can put them in one broker request.
    let mut prepared: Vec<Result<Encoded, ApiError>> = Vec::with_capacity(items.len());
    for raw in &items {
        let item = if raw.get().len() > app.limits.max_event_bytes {
            Err(ApiError::too_large(app.limits.max_event_bytes))
        } else {
            match parse_object(raw.get().as_bytes())
                .and_then(|e| prepare(&route, claims.as_ref(), e))
            {
                Ok((event_id, event)) => app.publisher.encode(&target, event_id, &event).await,
                Err(e) => Err(e),
            }
        };
        prepared.push(item);
    }
    let sends = prepared.iter().map(|item| async {
        match item {
            Ok(encoded) => app
                .publisher
                .send(&route.topic, encoded, &trace)
                .await
                .map(|()| encoded.event_id),
            Err(e) => Err(e.clone()),
        }
    });
    let outcomes = futures::future::join_all(sends).await;

    let mut accepted = 0usize;
    let mut unavailable = 0usize;
    let results: Vec<Json_> = outcomes
        .iter()
        .enumerate()
        .map(|(index, outcome)| match outcome {
            Ok(event_id) => {
                accepted += 1;
                json!({"index": index, "status": 202, "event_id": event_id})
            }
            Err(e) => {
                if e.status == StatusCode::SERVICE_UNAVAILABLE {
                    unavailable += 1;
                }
                metrics::counter!(REJECTED, "reason" => e.body.code).increment(1);
                json!({"index": index, "status": e.status.as_u16(), "error": e.to_json()})
            }
        })
        .collect();
    metrics::counter!(EVENTS_ACCEPTED, "route" => route.name.clone()).increment(accepted as u64);
    let rejected = results.len() - accepted;
    let body = json!({"accepted": accepted, "rejected": rejected, "results": results});
    let status = if accepted == 0 && unavailable > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(body)).into_response();
    if unavailable > 0 {
        // Any item the broker could not take may be sent again: say when.
        response.headers_mut().insert(
            "retry-after",
            app.publisher
                .retry_after_secs
                .to_string()
                .parse()
                .expect("digits are a valid header"),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_found_with_their_path() {
        let parse = |text: &str| match serde_json::from_str::<Json_>(text).unwrap() {
            Json_::Object(map) => map,
            _ => unreachable!(),
        };
        assert_eq!(nul_field(&parse(r#"{"a": "ok", "b": 1}"#), ""), None);
        assert_eq!(
            nul_field(&parse(r#"{"text": "x\u0000y"}"#), ""),
            Some("text".into())
        );
        assert_eq!(
            nul_field(&parse(r#"{"a": {"b": ["ok", "\u0000"]}}"#), ""),
            Some("a.b[1]".into())
        );
        assert_eq!(
            nul_field(&parse(r#"{"k\u0000": 1}"#), ""),
            Some("k\u{0}".into())
        );
        let error = parse_object(br#"{"text": "x\u0000"}"#).unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.body.field.as_deref(), Some("text"));
    }
}
