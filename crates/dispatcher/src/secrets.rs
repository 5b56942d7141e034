//! The sealed part of HTTP actions (URL, signing secrets, headers), resolved per request from
//! `substrate_private.action_secrets` by (rule, version, action index), opened with the
//! configured keyring and cached (bounded, each entry for at most a TTL). A missing or
//! unopenable secret is permanent for the request; a database outage is transient. Errors and
//! logs name the rule, version and action, never a secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use substrate_db::{DbError, Pool};
use substrate_rules::{ActionSecret, JoinError};
use substrate_runtime::{Class, Classify};
use substrate_secrets::{Keyring, OpenError};
use uuid::Uuid;

use crate::metrics::SECRET_LOOKUPS;
use crate::request::Request;

/// Why a request's secret cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("reading the sealed secret of {0}: {1}")]
    Db(Binding, DbError),
    #[error(
        "no sealed secret for {0} (saved without its secrets, or pruned by esctl secrets prune)"
    )]
    Missing(Binding),
    #[error("the sealed secret of {0} does not open: {1}")]
    Unopenable(Binding, OpenError),
    #[error("the sealed secret of {0} is not an action secret")]
    Malformed(Binding),
    #[error("the sealed secret of {0} does not fit its action: {1}")]
    Mismatch(Binding, JoinError),
}

impl Classify for ResolveError {
    fn class(&self) -> Class {
        match self {
            Self::Db(_, e) => e.class(),
            _ => Class::Permanent,
        }
    }
}

/// What a secret is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Binding {
    pub rule_id: Uuid,
    pub rule_version: i32,
    pub action_index: i32,
}

impl std::fmt::Display for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rule {} version {} action {}",
            self.rule_id, self.rule_version, self.action_index
        )
    }
}

/// Bounds of the cache of opened secrets.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub ttl: Duration,
    pub max_entries: usize,
}

pub struct SecretStore {
    pool: Pool,
    keyring: Keyring,
    limits: CacheLimits,
    cache: Mutex<HashMap<Binding, (Instant, Arc<ActionSecret>)>>,
}

impl SecretStore {
    pub fn new(pool: Pool, keyring: Keyring, limits: CacheLimits) -> Self {
        Self {
            pool,
            keyring,
            limits,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The secret `request` needs, checked against its action; `None` for actions without one.
    pub async fn resolve(
        &self,
        request: &Request,
    ) -> Result<Option<Arc<ActionSecret>>, ResolveError> {
        if !request.action.needs_secret() {
            return Ok(None);
        }
        let binding = Binding {
            rule_id: request.rule_id,
            rule_version: request.rule_version,
            action_index: request.action_index,
        };
        let secret = match &request.inline_secret {
            // Written before secrets were sealed: the record carries it already.
            Some(inline) => {
                metrics::counter!(SECRET_LOOKUPS, "outcome" => "inline").increment(1);
                Arc::new(inline.clone())
            }
            None => self.lookup(binding).await?,
        };
        request
            .action
            .check(Some(&secret))
            .map_err(|e| ResolveError::Mismatch(binding, e))?;
        Ok(Some(secret))
    }

    async fn lookup(&self, binding: Binding) -> Result<Arc<ActionSecret>, ResolveError> {
        if let Some(secret) = self.cached(&binding) {
            metrics::counter!(SECRET_LOOKUPS, "outcome" => "cache").increment(1);
            return Ok(secret);
        }
        let found = async {
            let client = self.pool.get().await?;
            substrate_db::secrets::for_request(
                &**client,
                binding.rule_id,
                binding.rule_version,
                binding.action_index,
            )
            .await
        }
        .await
        .map_err(|e| ResolveError::Db(binding, e))?;
        let Some(row) = found else {
            metrics::counter!(SECRET_LOOKUPS, "outcome" => "missing").increment(1);
            return Err(ResolveError::Missing(binding));
        };
        let plaintext = self.keyring.open(&row.sealed, &row.aad()).map_err(|e| {
            metrics::counter!(SECRET_LOOKUPS, "outcome" => "unopenable").increment(1);
            ResolveError::Unopenable(binding, e)
        })?;
        let secret = Arc::new(
            ActionSecret::from_bytes(&plaintext).map_err(|_| ResolveError::Malformed(binding))?,
        );
        metrics::counter!(SECRET_LOOKUPS, "outcome" => "database").increment(1);
        self.remember(binding, secret.clone());
        Ok(secret)
    }

    fn cached(&self, binding: &Binding) -> Option<Arc<ActionSecret>> {
        let mut cache = self.cache.lock().expect("secret cache lock");
        match cache.get(binding) {
            Some((at, secret)) if at.elapsed() < self.limits.ttl => Some(secret.clone()),
            Some(_) => {
                cache.remove(binding);
                None
            }
            None => None,
        }
    }

    fn remember(&self, binding: Binding, secret: Arc<ActionSecret>) {
        let mut cache = self.cache.lock().expect("secret cache lock");
        if cache.len() >= self.limits.max_entries && !cache.contains_key(&binding) {
            let ttl = self.limits.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= self.limits.max_entries {
                let oldest = cache
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(key, _)| *key);
                if let Some(oldest) = oldest {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(binding, (Instant::now(), secret));
    }
}
