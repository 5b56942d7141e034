//! API keys of server-to-server sources, for `auth: api_key` routes. The gateway holds the
//! active keys in memory and re-reads them every `api_keys.refresh_secs`, so a key created,
//! rotated or revoked with `esctl keys` takes effect on every instance within that interval.
//! While the database is unreachable the last table stays in use.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::http::StatusCode;
use chrono::Utc;
use serde::Deserialize;
use substrate_db::api_keys::{self, ApiKey};
use substrate_runtime::Shutdown;

use crate::error::ApiError;
use crate::metrics::API_KEYS_REFRESH_FAILURES;

/// `api_keys:` of the gateway's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// The server-side secret mixed into every key's hash (at least 32 characters); the same
    /// value `esctl keys` is given. Without it `auth: api_key` routes answer 503.
    #[serde(default)]
    pub pepper: Option<String>,
    /// How often the active keys are re-read (revocations take effect within this).
    pub refresh_secs: u64,
}

/// The caller an API key identifies.
#[derive(Debug, Clone)]
pub struct Source {
    /// `esk_<id>`: safe to log.
    pub label: String,
    pub source: String,
}

pub struct KeyStore {
    pepper: Option<Vec<u8>>,
    /// `None` until the first successful read.
    keys: RwLock<Option<HashMap<String, Arc<ApiKey>>>>,
}

impl KeyStore {
    pub fn new(config: &ApiKeysConfig) -> Arc<Self> {
        Arc::new(Self {
            pepper: config.pepper.as_ref().map(|p| p.as_bytes().to_vec()),
            keys: RwLock::new(None),
        })
    }

    /// Replaces the table with `keys`.
    pub fn replace(&self, keys: Vec<ApiKey>) {
        let table = keys
            .into_iter()
            .map(|k| (k.id.clone(), Arc::new(k)))
            .collect();
        *self.keys.write().expect("api key table lock") = Some(table);
    }

    /// Reads the active keys now.
    pub async fn refresh(&self, db: &substrate_db::Pool) -> Result<usize, String> {
        let client = db.get().await.map_err(|e| e.to_string())?;
        let keys = api_keys::active(&**client)
            .await
            .map_err(|e| e.to_string())?;
        let n = keys.len();
        self.replace(keys);
        Ok(n)
    }

    /// Refreshes every `every` until shutdown (the first read at once).
    pub fn spawn_refresh(
        self: Arc<Self>,
        db: substrate_db::Pool,
        every: Duration,
        lifecycle: &Shutdown,
    ) {
        let shutdown = lifecycle.token();
        lifecycle.spawn("api key refresh", async move {
            let mut ticker = tokio::time::interval(every.max(Duration::from_millis(100)));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick() => {}
                }
                match self.refresh(&db).await {
                    Ok(n) => {
                        if failing {
                            tracing::info!(keys = n, "API keys read again");
                        }
                        failing = false;
                    }
                    Err(error) => {
                        metrics::counter!(API_KEYS_REFRESH_FAILURES).increment(1);
                        if !failing {
                            tracing::warn!(%error, "reading API keys failed; keeping the last table");
                        }
                        failing = true;
                    }
                }
            }
            Ok(())
        });
    }

    /// Checks a presented key for `route`.
    pub fn verify(&self, presented: &str, route: &str) -> Result<Source, ApiError> {
        let Some(pepper) = &self.pepper else {
            return Err(ApiError::unavailable(
                "API keys are not configured on this gateway (api_keys.pepper)",
                5,
            ));
        };
        let unknown = || ApiError::unauthorized("the API key is not valid");
        let id = api_keys::parse_id(presented).ok_or_else(unknown)?;
        let key = {
            let table = self.keys.read().expect("api key table lock");
            let Some(table) = table.as_ref() else {
                return Err(ApiError::unavailable("API keys are not loaded yet", 1));
            };
            table.get(id).cloned()
        };
        // Revoked, expired and unknown keys get the same answer.
        let key = key
            .filter(|k| k.active_at(Utc::now()) && k.matches(pepper, presented))
            .ok_or_else(unknown)?;
        if !key.allows(route) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "API key {} (source `{}`) may not post to route `{route}`",
                    key.label(),
                    key.source
                ),
            ));
        }
        Ok(Source {
            label: key.label(),
            source: key.source.clone(),
        })
    }
}
