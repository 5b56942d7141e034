//! The dispatcher's tables: `dispatch_attempts` (audit, batched inserts) and
//! `dispatch_endpoints` (endpoints disabled after a 410). Neither holds a URL in clear: targets
//! and endpoints are redacted by the caller, endpoints keyed by the URL's SHA-256.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::DbError;

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub request_id: Uuid,
    pub event_id: String,
    pub rule_id: Uuid,
    pub rule_version: i32,
    pub sink: String,
    pub target: String,
    pub attempt: i32,
    /// `delivered`, `retry`, `failed`, `disabled` (410) or `skipped` (endpoint disabled).
    pub outcome: &'static str,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub latency_ms: i32,
    pub attempted_at: DateTime<Utc>,
}

/// Inserts the attempts in one statement.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "INSERT dispatch_attempts", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "INSERT", db.collection.name = "dispatch_attempts"))]
pub async fn insert_attempts<C: GenericClient>(
    client: &C,
    rows: &[Attempt],
) -> Result<u64, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let n = rows.len();
    let (mut requests, mut events, mut rules, mut versions) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut sinks, mut targets, mut attempts, mut outcomes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut statuses, mut errors, mut latencies, mut times) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for row in rows {
        requests.push(row.request_id);
        events.push(row.event_id.as_str());
        rules.push(row.rule_id);
        versions.push(row.rule_version);
        sinks.push(row.sink.as_str());
        targets.push(row.target.as_str());
        attempts.push(row.attempt);
        outcomes.push(row.outcome);
        statuses.push(row.http_status);
        errors.push(row.error.as_deref());
        latencies.push(row.latency_ms);
        times.push(row.attempted_at);
    }
    let inserted = client
        .execute(
            "INSERT INTO public.dispatch_attempts
                 (request_id, event_id, rule_id, rule_version, sink, target, attempt, outcome,
                  http_status, error, latency_ms, attempted_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::int[], $5::text[],
                                  $6::text[], $7::int[], $8::text[], $9::int[], $10::text[],
                                  $11::int[], $12::timestamptz[])",
            &[
                &requests, &events, &rules, &versions, &sinks, &targets, &attempts, &outcomes,
                &statuses, &errors, &latencies, &times,
            ],
        )
        .await?;
    Ok(inserted)
}

/// An endpoint's state. Endpoints are known by the SHA-256 of their URL and shown redacted
/// (`substrate_secrets::redact_url`): the URL itself may be a secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub url_hash: String,
    pub endpoint: String,
    pub disabled: bool,
    pub reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// Marks the endpoint whose URL hashes to `url_hash` disabled (idempotent); `endpoint` is its
/// redacted form.
pub async fn disable_endpoint<C: GenericClient>(
    client: &C,
    url_hash: &str,
    endpoint: &str,
    reason: &str,
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO public.dispatch_endpoints (url_hash, endpoint, disabled, reason, disabled_at)
             VALUES ($1, $2, true, $3, now())
             ON CONFLICT (url_hash) DO UPDATE
               SET disabled = true, reason = EXCLUDED.reason, endpoint = EXCLUDED.endpoint,
                   disabled_at = COALESCE(CASE WHEN dispatch_endpoints.disabled
                                               THEN dispatch_endpoints.disabled_at END, now()),
                   updated_at = now()",
            &[&url_hash, &endpoint, &reason],
        )
        .await?;
    Ok(())
}

/// Re-enables the endpoint whose URL hashes to `url_hash`; false when it was not disabled.
pub async fn enable_endpoint<C: GenericClient>(
    client: &C,
    url_hash: &str,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE public.dispatch_endpoints SET disabled = false, updated_at = now()
             WHERE url_hash = $1 AND disabled",
            &[&url_hash],
        )
        .await?;
    Ok(n > 0)
}

/// The URL hashes of the endpoints currently disabled.
pub async fn disabled_endpoints<C: GenericClient>(client: &C) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "SELECT url_hash FROM public.dispatch_endpoints WHERE disabled ORDER BY url_hash",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Every endpoint the dispatcher knows about.
pub async fn list_endpoints<C: GenericClient>(client: &C) -> Result<Vec<Endpoint>, DbError> {
    let rows = client
        .query(
            "SELECT url_hash, endpoint, disabled, reason, disabled_at
             FROM public.dispatch_endpoints ORDER BY endpoint, url_hash",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Endpoint {
            url_hash: r.get(0),
            endpoint: r.get(1),
            disabled: r.get(2),
            reason: r.get(3),
            disabled_at: r.get(4),
        })
        .collect())
}

/// The attempts logged for one request, oldest first: (attempt, outcome, http status).
pub async fn attempts_of<C: GenericClient>(
    client: &C,
    request_id: Uuid,
) -> Result<Vec<(i32, String, Option<i32>)>, DbError> {
    let rows = client
        .query(
            "SELECT attempt, outcome, http_status FROM public.dispatch_attempts
             WHERE request_id = $1 ORDER BY id",
            &[&request_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}
