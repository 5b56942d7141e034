//! Endpoints disabled after answering 410 Gone. The set lives in `dispatch_endpoints`, is cached
//! here and re-read periodically, so `esctl endpoints enable` takes effect without a restart.
//! Endpoints are known by the SHA-256 of their URL (`substrate_secrets::url_hash`), never by the
//! URL, which may be a secret.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use substrate_db::{DbError, Pool};
use substrate_runtime::Shutdown;

#[derive(Clone)]
pub struct Endpoints {
    pool: Pool,
    disabled: Arc<RwLock<HashSet<String>>>,
}

impl Endpoints {
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            disabled: Arc::default(),
        }
    }

    pub fn is_disabled(&self, url_hash: &str) -> bool {
        self.disabled
            .read()
            .expect("endpoints lock")
            .contains(url_hash)
    }

    pub async fn refresh(&self) -> Result<usize, DbError> {
        let client = self.pool.get().await?;
        let hashes = substrate_db::dispatch::disabled_endpoints(&**client).await?;
        let n = hashes.len();
        *self.disabled.write().expect("endpoints lock") = hashes.into_iter().collect();
        Ok(n)
    }

    /// Disables the endpoint in Postgres and at once in this process; `endpoint` is its
    /// redacted form.
    pub async fn disable(
        &self,
        url_hash: &str,
        endpoint: &str,
        reason: &str,
    ) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        substrate_db::dispatch::disable_endpoint(&**client, url_hash, endpoint, reason).await?;
        self.disabled
            .write()
            .expect("endpoints lock")
            .insert(url_hash.to_string());
        Ok(())
    }

    pub fn spawn_refresh(&self, every: Duration, shutdown: &Shutdown) {
        let this = self.clone();
        let token = shutdown.token();
        shutdown.spawn("endpoint refresh", async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = this.refresh().await {
                    tracing::warn!(error = %e, "re-reading disabled endpoints failed");
                }
            }
        });
    }
}
