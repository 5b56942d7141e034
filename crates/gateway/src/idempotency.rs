//! `Idempotency-Key` on event posts. The first answer to a key of a principal is kept in
//! PostgreSQL (`substrate_private.idempotency_keys`) for `gateway.idempotency_retention_secs`
//! and replayed to every repeat with the same body, on any gateway instance, across restarts;
//! the same key with another body is refused with 422. Event ids are fixed when the key is first
//! claimed, so a request retried after a crash or a broker outage produces the same event ids.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use substrate_db::idempotency::{self, Claim};
use substrate_runtime::Shutdown;
use uuid::Uuid;

use crate::error::ApiError;

pub const HEADER: &str = "idempotency-key";
/// Set on answers replayed from a record.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
const MAX_KEY_LEN: usize = 255;

pub struct Idempotency {
    pub db: substrate_db::Pool,
    pub retention: Duration,
    pub stale: Duration,
}

/// A claimed key: the request produces with `event_ids`, then [`Idempotency::finish`]es.
#[derive(Debug)]
pub struct Ticket {
    scope: String,
    key: String,
    pub event_ids: Vec<Uuid>,
}

/// What to do with a request that carries a key.
pub enum Start {
    Owned(Ticket),
    Replay { status: StatusCode, body: Json },
}

/// The request's `Idempotency-Key`, checked: 1–255 visible ASCII characters.
pub fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bad =
        |message: &str| ApiError::new(StatusCode::BAD_REQUEST, "invalid_idempotency_key", message);
    if values.next().is_some() {
        return Err(bad("send one Idempotency-Key header"));
    }
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=MAX_KEY_LEN).contains(&k.len()))
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            bad("Idempotency-Key must be 1 to 255 visible ASCII characters (a UUID is typical)")
        })?;
    Ok(Some(key.to_string()))
}

/// What identifies "the same request": route, single or batch, and the body's bytes.
pub fn fingerprint(route: &str, kind: &str, body: &[u8]) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(route.as_bytes());
    hash.update(b"\n");
    hash.update(kind.as_bytes());
    hash.update(b"\n");
    hash.update(body);
    hash.finalize().to_vec()
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "idempotency records unavailable");
    ApiError::unavailable(
        "idempotency records are unavailable; retry later with the same Idempotency-Key",
        2,
    )
}

impl Idempotency {
    /// Claims `key` for `scope` (the principal) with `events` fresh event ids, or says how to
    /// answer instead.
    pub async fn start(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &[u8],
        events: usize,
    ) -> Result<Start, ApiError> {
        let fresh: Vec<Uuid> = (0..events.max(1)).map(|_| Uuid::now_v7()).collect();
        let client = self.db.get().await.map_err(unavailable)?;
        let claim = idempotency::claim(
            &**client,
            scope,
            key,
            fingerprint,
            &fresh,
            self.retention,
            self.stale,
        )
        .await
        .map_err(unavailable)?;
        match claim {
            Claim::Owned { event_ids } => Ok(Start::Owned(Ticket {
                scope: scope.to_string(),
                key: key.to_string(),
                event_ids,
            })),
            Claim::Replay { status, response } => Ok(Start::Replay {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                body: response,
            }),
            Claim::Mismatch => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request body; use a new key",
            )),
            Claim::InProgress => Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_progress",
                "a request with this Idempotency-Key is in progress; retry shortly",
            )
            .retry_after(1)),
        }
    }

    /// Records the answer, or gives the claim up when the answer says "retry" (a 5xx, or a
    /// batch with items the broker could not take), so the retry runs with the same event ids.
    pub async fn finish(&self, ticket: Ticket, status: StatusCode, body: &Json, retryable: bool) {
        let result = match self.db.get().await {
            Ok(client) => {
                if retryable || status.is_server_error() {
                    idempotency::release(&**client, &ticket.scope, &ticket.key).await
                } else {
                    idempotency::complete(
                        &**client,
                        &ticket.scope,
                        &ticket.key,
                        status.as_u16(),
                        body,
                    )
                    .await
                }
            }
            Err(e) => Err(e.into()),
        };
        if let Err(error) = result {
            // The claim stays unfinished: a retry takes it over after `stale` with the same ids.
            tracing::warn!(%error, "recording an idempotent answer failed");
        }
    }

    /// Deletes expired records every ten minutes.
    pub fn spawn_purge(&self, lifecycle: &Shutdown) {
        let (db, retention) = (self.db.clone(), self.retention);
        let shutdown = lifecycle.token();
        lifecycle.spawn("idempotency purge", async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(600));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                let purged = match db.get().await {
                    Ok(client) => idempotency::purge(&**client, retention).await,
                    Err(e) => Err(e.into()),
                };
                match purged {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(records = n, "expired idempotency records deleted"),
                    Err(error) => tracing::debug!(%error, "purging idempotency records failed"),
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        let mut headers = HeaderMap::new();
        assert_eq!(key_of(&headers).unwrap(), None);
        headers.insert(HEADER, "order-42/attempt".parse().unwrap());
        assert_eq!(
            key_of(&headers).unwrap().as_deref(),
            Some("order-42/attempt")
        );
        for bad in ["", "has space", &"x".repeat(256)] {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER, bad.parse().unwrap());
            assert_eq!(
                key_of(&headers).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad:?}"
            );
        }
        let mut headers = HeaderMap::new();
        headers.append(HEADER, "a".parse().unwrap());
        headers.append(HEADER, "b".parse().unwrap());
        assert!(key_of(&headers).is_err());
    }

    #[test]
    fn fingerprints_separate_routes_kinds_and_bodies() {
        let a = fingerprint("message", "single", b"{}");
        assert_eq!(a, fingerprint("message", "single", b"{}"));
        assert_ne!(a, fingerprint("purchase", "single", b"{}"));
        assert_ne!(a, fingerprint("message", "batch", b"{}"));
        assert_ne!(a, fingerprint("message", "single", b"{ }"));
    }
}
