//! `POST /webhooks/login`: the payload Supabase Database Webhooks (pg_net) send for `auth.users`
//! changes, authenticated by a shared secret header compared in constant time. A new sign-in
//! becomes an `identity.login` event; the event id is derived from user and sign-in time, so a
//! repeated delivery of the same change yields the same event.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value as Json_};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::error::ApiError;
use crate::ingest::check_json_content_type;
use crate::metrics::EVENTS_ACCEPTED;
use crate::publish::{trace_from, Target};
use crate::App;

/// Namespace of login event ids (UUIDv5 of `<user id>/<last_sign_in_at>`).
const LOGIN_NAMESPACE: Uuid = Uuid::from_u128(0x6c0f_1b3e_2d4a_4e55_9a7c_51d2_8e3f_0a11);
const ROUTE_LABEL: &str = "webhooks.login";

#[derive(Debug, Deserialize)]
struct DatabaseWebhook {
    #[serde(rename = "type")]
    kind: String,
    table: String,
    schema: String,
    record: Option<Json_>,
    #[serde(default)]
    old_record: Option<Json_>,
}

pub async fn login(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    handle_login(&app, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

fn secret_matches(expected: &str, given: Option<&[u8]>) -> bool {
    given.is_some_and(|given| bool::from(given.ct_eq(expected.as_bytes())))
}

async fn handle_login(app: &App, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let login = &app.login;
    let expected = login.secret.as_deref().ok_or_else(|| {
        ApiError::unavailable(
            "the login webhook is not configured (webhooks.login_secret)",
            60,
        )
    })?;
    if !secret_matches(
        expected,
        headers.get(&login.secret_header).map(|v| v.as_bytes()),
    ) {
        return Err(ApiError::unauthorized(format!(
            "missing or wrong `{}` header",
            login.secret_header
        )));
    }
    check_json_content_type(headers)?;
    let bytes = app.limits.read_event(headers, body).await?;
    let hook: DatabaseWebhook = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("expected a database webhook payload {{type, table, schema, record, old_record}}: {e}"),
        )
    })?;
    if hook.schema != "auth" || hook.table != "users" {
        return Err(ApiError::invalid_field(
            "table",
            format!(
                "only auth.users changes are accepted, got {}.{}",
                hook.schema, hook.table
            ),
        ));
    }
    let record = hook
        .record
        .as_ref()
        .filter(|r| r.is_object())
        .ok_or_else(|| ApiError::invalid_field("record", "must be an object"))?;
    let user_id = record
        .get("id")
        .and_then(Json_::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::invalid_field("record.id", "must be a UUID"))?;
    let signed_in_at = record.get("last_sign_in_at").and_then(Json_::as_str);
    let previous = hook
        .old_record
        .as_ref()
        .and_then(|r| r.get("last_sign_in_at"))
        .and_then(Json_::as_str);
    let is_new_sign_in = match (hook.kind.as_str(), signed_in_at) {
        (_, None) => false,
        ("INSERT", Some(_)) => true,
        ("UPDATE", Some(now)) => previous != Some(now),
        _ => false,
    };
    let Some(signed_in_at) = signed_in_at.filter(|_| is_new_sign_in) else {
        return Ok((
            StatusCode::OK,
            Json(json!({"status": "ignored", "reason": "not a new sign-in"})),
        )
            .into_response());
    };
    let event_id = Uuid::new_v5(
        &LOGIN_NAMESPACE,
        format!("{user_id}/{signed_in_at}").as_bytes(),
    );
    // to_jsonb() of a timestamptz is ISO 8601 with an offset, which RFC 3339 parsing accepts.
    let event_time = DateTime::parse_from_rfc3339(signed_in_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now());
    let provider = record
        .get("raw_app_meta_data")
        .and_then(|m| m.get("provider"))
        .cloned()
        .unwrap_or(Json_::Null);
    let event = json!({
        "event_id": event_id.to_string(),
        "event_time": event_time.timestamp_millis(),
        "user_id": user_id.to_string(),
        "email": record.get("email").cloned().unwrap_or(Json_::Null),
        "provider": provider,
        "last_sign_in_at": signed_in_at,
    });
    if let Some(field) = nul_field(&event) {
        return Err(ApiError::invalid_field(
            field,
            "contains a NUL character (\\u0000), which text in the platform's stores cannot hold",
        ));
    }
    let schema = app.login_schema.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no_schema",
            format!("topic {} has no schema under avro/", login.topic),
        )
    })?;
    let target = Target {
        topic: &login.topic,
        event_type: &login.event_type,
        schema,
        key_field: Some("user_id"),
    };
    let encoded = app.publisher.encode(&target, event_id, &event).await?;
    let trace = trace_from(headers.get("traceparent").and_then(|v| v.to_str().ok()));
    app.publisher.send(&login.topic, &encoded, &trace).await?;
    metrics::counter!(EVENTS_ACCEPTED, "route" => ROUTE_LABEL).increment(1);
    Ok((StatusCode::ACCEPTED, Json(json!({"event_id": event_id}))).into_response())
}

/// The record field behind the first text of a login event that holds a NUL character, which
/// PostgreSQL's `text` refuses: refused here, as on the event routes, rather than stored and
/// then dead-lettered by the writer.
fn nul_field(event: &Json_) -> Option<&'static str> {
    [
        ("email", "record.email"),
        ("provider", "record.raw_app_meta_data.provider"),
        ("last_sign_in_at", "record.last_sign_in_at"),
    ]
    .into_iter()
    .find(|(name, _)| event[*name].as_str().is_some_and(|s| s.contains('\0')))
    .map(|(_, field)| field)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_in_login_events_are_found() {
        let event = |email: &str, provider: &str| json!({"email": email, "provider": provider, "last_sign_in_at": "2026-01-01T00:00:00Z"});
        assert_eq!(nul_field(&event("a@example.com", "email")), None);
        assert_eq!(
            nul_field(&event("a\u{0}@example.com", "email")),
            Some("record.email")
        );
        assert_eq!(
            nul_field(&event("a@example.com", "\u{0}")),
            Some("record.raw_app_meta_data.provider")
        );
        assert_eq!(nul_field(&json!({"email": null, "provider": 5})), None);
    }

    #[test]
    fn secret_comparison() {
        assert!(secret_matches(
            "s3cret-s3cret-s3",
            Some(b"s3cret-s3cret-s3")
        ));
        assert!(!secret_matches(
            "s3cret-s3cret-s3",
            Some(b"s3cret-s3cret-s4")
        ));
        assert!(!secret_matches("s3cret-s3cret-s3", Some(b"s3cret")));
        assert!(!secret_matches("s3cret-s3cret-s3", None));
    }
}
