//! `POST /api/v1/events/{route}` and `POST /api/v1/events/{route}/batch`: route lookup, auth,
//! content checks, body limits (enforced while reading), enrichment from JWT claims, schema
//! validation and produce. 202 means the broker acknowledged the record.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Map, Value as Json_};
use substrate_db::api_keys;
use uuid::Uuid;

use crate::auth::Claims;
use crate::error::ApiError;
use crate::idempotency::{self, Start, Ticket, REPLAYED_HEADER};
use crate::keys::Source;
use crate::metrics::{RouteName, BATCH_EVENTS, EVENTS_ACCEPTED, IDEMPOTENT_REPLAYS, REJECTED};
use crate::publish::{trace_from, Encoded, Target};
use crate::routes::{AuthMode, Route, EVENT_ID_FIELD, EVENT_TIME_FIELD};
use crate::App;

/// The client's address, when the server recorded it.
pub type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

/// The `{route}` of the path. axum refuses a segment that does not decode to UTF-8 with a plain
/// text 400; no route has such a name, so it is answered as an unknown route, in JSON.
pub type RoutePath = Result<Path<String>, PathRejection>;

fn unknown_path(rejection: &PathRejection) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        format!("no such route: {}", rejection.body_text()),
    )
}

pub async fn post_event(
    State(app): State<Arc<App>>,
    route: RoutePath,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (route, result) = match route {
        Ok(Path(route)) => {
            let result = single(&app, &route, &headers, peer_ip(&peer), body).await;
            (route, result)
        }
        Err(rejection) => (String::new(), Err(unknown_path(&rejection))),
    };
    finish(&route, result)
}

pub async fn post_batch(
    State(app): State<Arc<App>>,
    route: RoutePath,
    peer: Peer,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (route, result) = match route {
        Ok(Path(route)) => {
            let result = batch(&app, &route, &headers, peer_ip(&peer), body).await;
            (route, result)
        }
        Err(rejection) => (String::new(), Err(unknown_path(&rejection))),
    };
    finish(&route, result)
}

fn peer_ip(peer: &Peer) -> Option<IpAddr> {
    peer.as_ref().map(|Extension(ConnectInfo(addr))| addr.ip())
}

/// The answer, its `route` label the route's name (`unknown` for a route not in routes.yaml).
fn finish(route: &str, result: Result<Response, ApiError>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    let name = if response.status() == StatusCode::NOT_FOUND {
        "unknown".to_string()
    } else {
        route.to_string()
    };
    response.extensions_mut().insert(RouteName(name.into()));
    response
}

/// Who is posting.
#[derive(Debug)]
pub enum Caller {
    /// A signed-in user (`auth: jwt`).
    User(Claims),
    /// A server-to-server source (`auth: api_key`).
    Source(Source),
    /// Nobody in particular (`auth: none`), known by address.
    Anonymous(Option<IpAddr>),
}

impl Caller {
    fn claims(&self) -> Option<&Claims> {
        match self {
            Self::User(claims) => Some(claims),
            _ => None,
        }
    }

    /// The rate-limit bucket: the user id, the API key, or the client address.
    pub fn principal(&self) -> String {
        match self {
            Self::User(claims) => match claims.get("sub") {
                Some(Json_::String(sub)) => format!("user:{sub}"),
                other => format!("user:{}", other.cloned().unwrap_or_default()),
            },
            Self::Source(source) => format!("key:{}", source.label),
            Self::Anonymous(Some(ip)) => format!("addr:{ip}"),
            Self::Anonymous(None) => "addr:unknown".into(),
        }
    }

    /// Whose idempotency keys these are: a source's keys survive the rotation of its API key.
    pub fn scope(&self) -> String {
        match self {
            Self::Source(source) => format!("source:{}", source.source),
            _ => self.principal(),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
}

fn wrong_credential(route: &Route, got: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "wrong_credential",
        format!(
            "route `{}` takes {}, not {got}",
            route.name,
            route.auth.describe()
        ),
    )
    .expected(route.auth.as_str())
}

/// Route lookup, authentication and content-type: everything checked before the body is read.
async fn admit(
    app: &App,
    route_name: &str,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<(Arc<Route>, Caller), ApiError> {
    let route = app.routes.get(route_name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_route",
            format!("no route named `{route_name}`"),
        )
    })?;
    let api_key_header = headers.get("x-api-key").map(|v| v.to_str().unwrap_or(""));
    let caller = match route.auth {
        AuthMode::Jwt => {
            if api_key_header.is_some() || bearer(headers).is_some_and(api_keys::looks_like_key) {
                return Err(wrong_credential(&route, "an API key"));
            }
            let claims = app
                .verifier
                .verify_header(
                    headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok()),
                )
                .await
                .map_err(|e| ApiError::unauthorized(e.0).expected("jwt"))?;
            Caller::User(claims)
        }
        AuthMode::ApiKey => {
            let key = match (api_key_header, bearer(headers)) {
                (Some(key), _) => key,
                (None, Some(token)) if api_keys::looks_like_key(token) => token,
                (None, Some(_)) => return Err(wrong_credential(&route, "a JWT")),
                (None, None) => {
                    return Err(ApiError::unauthorized(format!(
                        "route `{}` takes {}",
                        route.name,
                        route.auth.describe()
                    ))
                    .expected("api_key"))
                }
            };
            let source = app.keys.verify(key, &route.name)?;
            tracing::debug!(key = %source.label, source = %source.source, route = %route.name, "API key accepted");
            Caller::Source(source)
        }
        AuthMode::None => Caller::Anonymous(peer),
    };
    check_json_content_type(headers)?;
    Ok((route, caller))
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
    event_id: Uuid,
    mut event: Map<String, Json_>,
) -> Result<Json_, ApiError> {
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
        // The client's fields were checked when parsed; a claim copied in is checked here.
        let enriched: Map<String, Json_> = route
            .enrich
            .iter()
            .filter_map(|(field, _)| Some((field.clone(), event.get(field)?.clone())))
            .collect();
        if let Some(field) = nul_field(&enriched, "") {
            return Err(ApiError::invalid_field(
                field,
                "is taken from a claim of the token that contains a NUL character (\\u0000), which text in the platform's stores cannot hold",
            ));
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
    Ok(Json_::Object(event))
}

fn target(route: &Route) -> Target<'_> {
    Target {
        topic: &route.topic,
        event_type: &route.event_type,
        schema: &route.schema,
        key_field: route.key_field.as_deref(),
    }
}

/// The answer to a request whose key was claimed, as stored for replays.
fn stored(result: &Result<(StatusCode, Json_), ApiError>) -> (StatusCode, Json_) {
    match result {
        Ok((status, body)) => (*status, body.clone()),
        Err(e) => (e.status, json!({ "error": e.body })),
    }
}

fn replayed(route: &Route, status: StatusCode, body: Json_) -> Response {
    metrics::counter!(IDEMPOTENT_REPLAYS, "route" => route.name.clone()).increment(1);
    let mut response = (status, Json(body)).into_response();
    response
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Claims the request's `Idempotency-Key`, if it has one: `Ok(Err(response))` is a replay.
async fn claim(
    app: &App,
    route: &Route,
    caller: &Caller,
    headers: &HeaderMap,
    kind: &str,
    body: &[u8],
    events: usize,
) -> Result<Result<Option<Ticket>, Response>, ApiError> {
    let Some(key) = idempotency::key_of(headers)? else {
        return Ok(Ok(None));
    };
    let fingerprint = idempotency::fingerprint(&route.name, kind, body);
    match app
        .idempotency
        .start(&caller.scope(), &key, &fingerprint, events)
        .await?
    {
        Start::Owned(ticket) => Ok(Ok(Some(ticket))),
        Start::Replay { status, body } => Ok(Err(replayed(route, status, body))),
    }
}

async fn single(
    app: &App,
    route_name: &str,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    body: Body,
) -> Result<Response, ApiError> {
    let (route, caller) = admit(app, route_name, headers, peer).await?;
    let allowance = route.limits.take(&caller.principal(), 1)?;
    let bytes = app.limits.read_event(headers, body).await?;
    let ticket = match claim(app, &route, &caller, headers, "single", &bytes, 1).await? {
        Ok(ticket) => ticket,
        Err(replay) => return Ok(replay),
    };
    let event_id = ticket
        .as_ref()
        .map_or_else(Uuid::now_v7, |t| t.event_ids[0]);
    let result = produce_one(app, &route, &caller, headers, &bytes, event_id)
        .await
        .map(|()| (StatusCode::ACCEPTED, json!({ "event_id": event_id })));
    if let Some(ticket) = ticket {
        let (status, body) = stored(&result);
        app.idempotency.finish(ticket, status, &body, false).await;
    }
    let (status, body) = result?;
    metrics::counter!(EVENTS_ACCEPTED, "route" => route.name.clone()).increment(1);
    let mut response = (status, Json(body)).into_response();
    if let Some(allowance) = allowance {
        allowance.apply(response.headers_mut());
    }
    Ok(response)
}

async fn produce_one(
    app: &App,
    route: &Route,
    caller: &Caller,
    headers: &HeaderMap,
    bytes: &[u8],
    event_id: Uuid,
) -> Result<(), ApiError> {
    let event = parse_object(bytes)?;
    let event = prepare(route, caller.claims(), event_id, event)?;
    let encoded = app
        .publisher
        .encode(&target(route), event_id, &event)
        .await?;
    let trace = trace_from(headers.get("traceparent").and_then(|v| v.to_str().ok()));
    app.publisher.send(&route.topic, &encoded, &trace).await
}

async fn batch(
    app: &App,
    route_name: &str,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
    body: Body,
) -> Result<Response, ApiError> {
    let (route, caller) = admit(app, route_name, headers, peer).await?;
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
    // Every event of the batch counts against the rate limits.
    let allowance = route.limits.take(&caller.principal(), items.len())?;
    let ticket = match claim(app, &route, &caller, headers, "batch", &bytes, items.len()).await? {
        Ok(ticket) => ticket,
        Err(replay) => return Ok(replay),
    };
    let event_ids: Vec<Uuid> = match &ticket {
        Some(ticket) => ticket.event_ids.clone(),
        None => items.iter().map(|_| Uuid::now_v7()).collect(),
    };
    let (status, body, unavailable) =
        produce_batch(app, &route, &caller, headers, &items, &event_ids).await;
    if let Some(ticket) = ticket {
        app.idempotency
            .finish(ticket, status, &body, unavailable > 0)
            .await;
    }
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
    if let Some(allowance) = allowance {
        allowance.apply(response.headers_mut());
    }
    Ok(response)
}

/// Validates, encodes and sends every item; the status, the per-item results and how many
/// items the broker could not take.
async fn produce_batch(
    app: &App,
    route: &Route,
    caller: &Caller,
    headers: &HeaderMap,
    items: &[Box<serde_json::value::RawValue>],
    event_ids: &[Uuid],
) -> (StatusCode, Json_, usize) {
    let trace = trace_from(headers.get("traceparent").and_then(|v| v.to_str().ok()));
    let target = target(route);

    // Validate and encode every item first, then send the good ones concurrently so the
    // producer can put them in one broker request.
    let mut prepared: Vec<Result<Encoded, ApiError>> = Vec::with_capacity(items.len());
    for (raw, event_id) in items.iter().zip(event_ids) {
        let item = if raw.get().len() > app.limits.max_event_bytes {
            Err(ApiError::too_large(app.limits.max_event_bytes))
        } else {
            match parse_object(raw.get().as_bytes())
                .and_then(|e| prepare(route, caller.claims(), *event_id, e))
            {
                Ok(event) => app.publisher.encode(&target, *event_id, &event).await,
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
    metrics::histogram!(BATCH_EVENTS, "route" => route.name.clone()).record(outcomes.len() as f64);

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
                metrics::counter!(REJECTED, "route" => route.name.clone(), "reason" => e.body.code)
                    .increment(1);
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
    (status, body, unavailable)
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use axum::routing::post;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    /// A NUL in a claim enriched into the event is refused like one in the body (it was stored,
    /// and the writer dead-lettered the row).
    #[test]
    fn nul_characters_in_enriched_claims_are_refused() {
        let catalog = substrate_avro::Catalog::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../avro"),
        )
        .unwrap();
        let routes = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../routes.yaml"),
        )
        .unwrap();
        let table = crate::routes::RouteTable::parse(&routes, &catalog).unwrap();
        let route = table.get("message").unwrap();
        let event = || match json!({"message": "hi", "visibility": "broadcast"}) {
            Json_::Object(map) => map,
            _ => unreachable!(),
        };
        let claims = |email: &str| match json!({"sub": Uuid::nil(), "email": email}) {
            Json_::Object(map) => map,
            _ => unreachable!(),
        };
        let error = prepare(
            &route,
            Some(&claims("a\u{0}b@example.com")),
            Uuid::nil(),
            event(),
        )
        .unwrap_err();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.body.field.as_deref(), Some("sender_email"));
        let prepared =
            prepare(&route, Some(&claims("a@example.com")), Uuid::nil(), event()).unwrap();
        assert_eq!(prepared["sender_email"], "a@example.com");
    }

    /// A route name that does not decode to UTF-8 (`%FF`) is an unknown route in JSON, not
    /// axum's plain-text 400.
    #[tokio::test]
    async fn undecodable_route_names_are_unknown_routes() {
        let router = Router::new().route(
            "/api/v1/events/{route}",
            post(|route: RoutePath| async move {
                match route {
                    Ok(Path(route)) => route.into_response(),
                    Err(rejection) => unknown_path(&rejection).into_response(),
                }
            }),
        );
        let request = |uri: &str| Request::post(uri).body(Body::empty()).unwrap();
        let response = router
            .clone()
            .oneshot(request("/api/v1/events/%FF%FE"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: Json_ = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "unknown_route", "{body}");
        // A name that decodes is passed on as it is.
        let response = router
            .oneshot(request("/api/v1/events/caf%C3%A9"))
            .await
            .unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], "café".as_bytes());
    }

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
