//! The read API of notifications, with the visibility of the table's RLS policy (broadcast rows,
//! direct rows of which the caller is sender or recipient):
//! - `GET /api/v1/notifications/stream`: Server-Sent Events in commit order. Each event's `id`
//!   is its cursor; a client that reconnects with `Last-Event-ID` (or `?after=`) gets exactly
//!   the rows after it, then live ones. Browsers' EventSource cannot send headers: they get a
//!   short-lived ticket from `POST /api/v1/notifications/ticket` and pass `?ticket=`.
//! - `GET /api/v1/notifications?after=|before=&limit=`: pages of the same rows.
//! - `POST /api/v1/notifications/read` `{"up_to": cursor}` and `GET /api/v1/notifications/unread`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use substrate_db::feed::{self, Cursor, FeedRow};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::error::ApiError;
use crate::metrics::{STREAMS_OPEN, STREAM_ENDS};
use crate::App;

/// Signs and checks stream tickets: `<base64url(user:expiry)>.<base64url(HMAC-SHA256)>`.
pub struct Tickets {
    secret: Vec<u8>,
    ttl: Duration,
}

impl Tickets {
    pub fn new(secret: Option<&str>, ttl: Duration) -> Self {
        let secret = match secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => {
                let mut bytes = vec![0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
                bytes
            }
        };
        Self { secret, ttl }
    }

    fn mac(&self, body: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("any key length");
        mac.update(b"notification-stream-ticket.v1\n");
        mac.update(body.as_bytes());
        mac
    }

    pub fn issue(&self, user: Uuid) -> String {
        let expires = chrono::Utc::now().timestamp() + self.ttl.as_secs() as i64;
        let body = URL_SAFE_NO_PAD.encode(format!("{user}:{expires}"));
        let tag = URL_SAFE_NO_PAD.encode(self.mac(&body).finalize().into_bytes());
        format!("{body}.{tag}")
    }

    pub fn check(&self, ticket: &str) -> Result<Uuid, ApiError> {
        let bad = || ApiError::unauthorized("the stream ticket is not valid or has expired");
        let (body, tag) = ticket.split_once('.').ok_or_else(bad)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad())?;
        self.mac(body).verify_slice(&tag).map_err(|_| bad())?;
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?)
            .map_err(|_| bad())?;
        let (user, expires) = text.split_once(':').ok_or_else(bad)?;
        let expires: i64 = expires.parse().map_err(|_| bad())?;
        if expires < chrono::Utc::now().timestamp() {
            return Err(bad());
        }
        user.parse().map_err(|_| bad())
    }
}

/// The caller's user id from `Authorization: Bearer <jwt>`.
async fn user(app: &App, headers: &HeaderMap) -> Result<Uuid, ApiError> {
    let claims = app
        .verifier
        .verify_header(
            headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
        )
        .await
        .map_err(|e| ApiError::unauthorized(e.0).expected("jwt"))?;
    claims
        .get("sub")
        .and_then(|s| s.as_str())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ApiError::unauthorized("the token's `sub` is not a user id"))
}

fn db_unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "notification read failed");
    ApiError::unavailable("notifications cannot be read right now; retry", 2)
}

fn cursor_param(name: &str, value: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<Cursor>()
                .map_err(|e| ApiError::invalid_field(name, e))
        })
        .transpose()
}

/// `POST /api/v1/notifications/ticket`: a ticket to open one stream within its lifetime.
pub async fn ticket(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match user(&app, &headers).await {
        Ok(user) => (
            StatusCode::OK,
            Json(json!({
                "ticket": app.tickets.issue(user),
                "expires_in": app.tickets.ttl.as_secs(),
            })),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    after: Option<String>,
    before: Option<String>,
    limit: Option<i64>,
}

/// `GET /api/v1/notifications`: `{"notifications": [...], "cursor": <last cursor or null>}`.
pub async fn page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<PageQuery>,
) -> Response {
    let result = async {
        let user = user(&app, &headers).await?;
        let after = cursor_param("after", query.after.as_deref())?;
        let before = cursor_param("before", query.before.as_deref())?;
        if after.is_some() && before.is_some() {
            return Err(ApiError::invalid_field(
                "before",
                "give `after` or `before`, not both",
            ));
        }
        let max = app.feed.config().page_rows;
        let limit = query.limit.unwrap_or(50);
        if !(1..=max).contains(&limit) {
            return Err(ApiError::invalid_field(
                "limit",
                format!("must be between 1 and {max}"),
            ));
        }
        let client = app.db.get().await.map_err(db_unavailable)?;
        let rows = feed::page(&**client, user, after, before, limit)
            .await
            .map_err(db_unavailable)?;
        let cursor = rows.last().map(|r| r.cursor);
        Ok::<_, ApiError>(Json(json!({ "notifications": rows, "cursor": cursor })).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, Deserialize)]
pub struct ReadBody {
    up_to: String,
}

/// `POST /api/v1/notifications/read`: everything up to `up_to` is read.
pub async fn mark_read(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let user = user(&app, &headers).await?;
        crate::ingest::check_json_content_type(&headers)?;
        let body: ReadBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body must be {{\"up_to\": \"<cursor>\"}}: {e}"),
            )
        })?;
        let cursor = cursor_param("up_to", Some(&body.up_to))?
            .ok_or_else(|| ApiError::invalid_field("up_to", "is required"))?;
        let client = app.db.get().await.map_err(db_unavailable)?;
        let read = feed::mark_read(&**client, user, cursor)
            .await
            .map_err(db_unavailable)?;
        let (unread, _) = feed::unread(&**client, user)
            .await
            .map_err(db_unavailable)?;
        Ok::<_, ApiError>(Json(json!({ "read_up_to": read, "unread": unread })).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /api/v1/notifications/unread`: `{"unread": n, "read_up_to": cursor}`.
pub async fn unread(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let result = async {
        let user = user(&app, &headers).await?;
        let client = app.db.get().await.map_err(db_unavailable)?;
        let (unread, read) = feed::unread(&**client, user)
            .await
            .map_err(db_unavailable)?;
        Ok::<_, ApiError>(Json(json!({ "unread": unread, "read_up_to": read })).into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    after: Option<String>,
    ticket: Option<String>,
}

fn event(row: &FeedRow) -> Event {
    let json = serde_json::to_string(row).unwrap_or_default();
    event_of(row, &json)
}

fn event_of(row: &FeedRow, json: &str) -> Event {
    Event::default()
        .id(row.cursor.to_string())
        .event("notification")
        .data(json)
}

/// Why a stream ended, for the metric.
fn ended(reason: &'static str) {
    metrics::counter!(STREAM_ENDS, "reason" => reason).increment(1);
}

/// `GET /api/v1/notifications/stream`.
pub async fn stream(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<StreamQuery>,
) -> Response {
    let result = async {
        let user = match query.ticket.as_deref() {
            Some(ticket) => app.tickets.check(ticket)?,
            None => user(&app, &headers).await?,
        };
        // EventSource resends the last id it saw; `after` is for the first connection.
        let last_event_id = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let after = match cursor_param("Last-Event-ID", last_event_id.as_deref())? {
            Some(cursor) => Some(cursor),
            None => cursor_param("after", query.after.as_deref())?,
        };
        let (position, live) = app
            .feed
            .subscribe_within(Duration::from_secs(5))
            .await
            .ok_or_else(|| ApiError::unavailable("the notification feed is starting; retry", 1))?;
        let config = app.feed.config();
        let (sender, receiver) = mpsc::channel::<Event>(config.client_buffer.max(1));
        let stall = Duration::from_secs(config.heartbeat_secs.max(1) * 2);
        let app = app.clone();
        metrics::gauge!(STREAMS_OPEN).increment(1.0);
        tokio::spawn(async move {
            let reason = follow(&app, user, after, position, live, &sender, stall).await;
            metrics::gauge!(STREAMS_OPEN).decrement(1.0);
            ended(reason);
        });
        let events = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver
                .recv()
                .await
                .map(|event| (Ok::<_, Infallible>(event), receiver))
        });
        let sse = Sse::new(events).keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(config.heartbeat_secs.max(1)))
                .text("heartbeat"),
        );
        let mut response = sse.into_response();
        response.headers_mut().insert(
            "x-accel-buffering",
            axum::http::HeaderValue::from_static("no"),
        );
        Ok::<_, ApiError>(response)
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Sends the rows after `after` up to `position` from the database, then the live rows after
/// it. Returns why it stopped. Never skips a row: when it must stop (a slow client, a feed it
/// fell behind) the client resumes from the last id it received.
async fn follow(
    app: &App,
    user: Uuid,
    after: Option<Cursor>,
    position: Cursor,
    mut live: broadcast::Receiver<crate::feed::Batch>,
    sender: &mpsc::Sender<Event>,
    stall: Duration,
) -> &'static str {
    // Without a cursor the stream starts at the present.
    let mut last = after.unwrap_or(position);
    let page = app.feed.config().page_rows;
    while last < position {
        let rows = match app.db.get().await {
            Ok(client) => feed::visible_between(&**client, user, last, position, page).await,
            Err(e) => Err(e.into()),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "reading a stream's history failed; the client resumes");
                return "database";
            }
        };
        let Some(end) = rows.last().map(|r| r.cursor) else {
            break;
        };
        for row in &rows {
            // History is sent at the client's pace, but a client that stops reading is cut off.
            tokio::select! {
                _ = app.feed.closing().cancelled() => return "shutdown",
                sent = tokio::time::timeout(stall, sender.send(event(row))) => {
                    if sent.map_or(true, |sent| sent.is_err()) {
                        return "slow_or_gone";
                    }
                }
            }
        }
        last = end;
        if (rows.len() as i64) < page {
            break;
        }
    }
    last = last.max(position);
    loop {
        tokio::select! {
            _ = app.feed.closing().cancelled() => return "shutdown",
            _ = sender.closed() => return "client_closed",
            received = live.recv() => match received {
                Ok(batch) => {
                    for item in batch.iter() {
                        let row = &item.row;
                        if row.cursor <= last || !row.visible_to(user) {
                            continue;
                        }
                        match sender.try_send(event_of(row, &item.json)) {
                            Ok(()) => last = row.cursor,
                            Err(mpsc::error::TrySendError::Full(_)) => return "slow_client",
                            Err(mpsc::error::TrySendError::Closed(_)) => return "client_closed",
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => return "lagged",
                Err(broadcast::error::RecvError::Closed) => return "shutdown",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_name_their_user_until_they_expire() {
        let tickets = Tickets::new(
            Some("a-secret-of-the-gateway-instances"),
            Duration::from_secs(60),
        );
        let user = Uuid::new_v4();
        let ticket = tickets.issue(user);
        assert_eq!(tickets.check(&ticket).unwrap(), user);
        let other = Tickets::new(
            Some("another-secret-another-gateway-xx"),
            Duration::from_secs(60),
        );
        assert!(other.check(&ticket).is_err(), "signed with another secret");
        let (body, tag) = ticket.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(format!("{}:{}", Uuid::new_v4(), i64::MAX));
        assert!(
            tickets.check(&format!("{forged}.{tag}")).is_err(),
            "another body"
        );
        assert!(tickets.check(body).is_err());
        let expired = Tickets::new(Some("a-secret-of-the-gateway-instances"), Duration::ZERO);
        let old = expired.issue(user);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(expired.check(&old).is_err(), "expired");
    }
}
