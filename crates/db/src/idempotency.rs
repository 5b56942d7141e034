//! `Idempotency-Key` records of the gateway (`substrate_private.idempotency_keys`): the first
//! answer to a (principal, key) pair, kept for a retention window (24 h in the gateway).
//!
//! A request claims its key before producing anything, with the event ids it will use. A claim
//! that was never finished (the gateway died, or the broker was unavailable and the claim was
//! released) is taken over by the next request with the same body, which reuses those event
//! ids: consumers deduplicate by event id, so a retried request never yields a second event.

use std::time::Duration;

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::DbError;

/// What a request may do with its key.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The request owns the key: process it with these event ids, then [`complete`] or
    /// [`release`].
    Owned { event_ids: Vec<Uuid> },
    /// The key's request finished with the same body: answer with this.
    Replay {
        status: u16,
        response: serde_json::Value,
    },
    /// The key was used with a different body.
    Mismatch,
    /// A request with this key is in progress.
    InProgress,
}

/// Claims `key` for `principal`. `event_ids` are used when the claim is new; `retention` is how
/// long a finished answer is replayed; `stale` is how long an unfinished claim blocks others.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "INSERT idempotency_keys", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "INSERT", db.collection.name = "idempotency_keys"))]
pub async fn claim<C: GenericClient>(
    client: &C,
    principal: &str,
    key: &str,
    request_hash: &[u8],
    event_ids: &[Uuid],
    retention: Duration,
    stale: Duration,
) -> Result<Claim, DbError> {
    let retention = retention.as_secs_f64();
    let stale = stale.as_secs_f64();
    // Two passes at most: a row purged between the statements is claimed on the second.
    for _ in 0..2 {
        let fresh = client
            .query_opt(
                "INSERT INTO substrate_private.idempotency_keys
                   (principal, key, request_hash, event_ids)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (principal, key) DO UPDATE
                   SET request_hash = EXCLUDED.request_hash, event_ids = EXCLUDED.event_ids,
                       status = NULL, response = NULL, created_at = now(), updated_at = now()
                   WHERE idempotency_keys.created_at < now() - make_interval(secs => $5)
                 RETURNING event_ids",
                &[&principal, &key, &request_hash, &event_ids, &retention],
            )
            .await?;
        if let Some(row) = fresh {
            return Ok(Claim::Owned {
                event_ids: row.get(0),
            });
        }
        let taken_over = client
            .query_opt(
                "UPDATE substrate_private.idempotency_keys SET updated_at = now()
                 WHERE principal = $1 AND key = $2 AND request_hash = $3 AND status IS NULL
                   AND updated_at < now() - make_interval(secs => $4)
                 RETURNING event_ids",
                &[&principal, &key, &request_hash, &stale],
            )
            .await?;
        if let Some(row) = taken_over {
            return Ok(Claim::Owned {
                event_ids: row.get(0),
            });
        }
        let existing = client
            .query_opt(
                "SELECT request_hash, status, response FROM substrate_private.idempotency_keys
                 WHERE principal = $1 AND key = $2",
                &[&principal, &key],
            )
            .await?;
        let Some(row) = existing else { continue };
        let hash: Vec<u8> = row.get(0);
        if hash != request_hash {
            return Ok(Claim::Mismatch);
        }
        let status: Option<i32> = row.get(1);
        return Ok(match status {
            Some(status) => Claim::Replay {
                status: u16::try_from(status).unwrap_or(500),
                response: row
                    .get::<_, Option<serde_json::Value>>(2)
                    .unwrap_or_default(),
            },
            None => Claim::InProgress,
        });
    }
    Ok(Claim::InProgress)
}

/// Stores the answer of an owned claim.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "UPDATE idempotency_keys", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE", db.collection.name = "idempotency_keys"))]
pub async fn complete<C: GenericClient>(
    client: &C,
    principal: &str,
    key: &str,
    status: u16,
    response: &serde_json::Value,
) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE substrate_private.idempotency_keys
             SET status = $3, response = $4, updated_at = now()
             WHERE principal = $1 AND key = $2",
            &[&principal, &key, &i32::from(status), response],
        )
        .await?;
    Ok(())
}

/// Gives an owned claim up without an answer (the request may be retried): the next request
/// with the same body takes it over at once, with the same event ids.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "UPDATE idempotency_keys", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE", db.collection.name = "idempotency_keys"))]
pub async fn release<C: GenericClient>(
    client: &C,
    principal: &str,
    key: &str,
) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE substrate_private.idempotency_keys SET updated_at = '-infinity'
             WHERE principal = $1 AND key = $2 AND status IS NULL",
            &[&principal, &key],
        )
        .await?;
    Ok(())
}

/// Deletes records older than `retention`; returns how many.
pub async fn purge<C: GenericClient>(client: &C, retention: Duration) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM substrate_private.idempotency_keys
             WHERE created_at < now() - make_interval(secs => $1)",
            &[&retention.as_secs_f64()],
        )
        .await?)
}
