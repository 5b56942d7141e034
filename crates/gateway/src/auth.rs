//! JWT verification for routes with `auth: jwt`: HS256 with the configured secret, ES256/RS256
//! with keys from a JWKS URL (cached; an unknown `kid` refreshes at most once per interval).
//! Each key is pinned to one algorithm; `exp` is required, `nbf` checked, `iss`/`aud` when set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use tokio::sync::{Mutex, RwLock};

use crate::config::AuthConfig;

pub type Claims = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

struct Keys {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    fetched_at: Option<Instant>,
}

struct Jwks {
    url: String,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    refresh: Mutex<Option<Instant>>,
    min_refresh: Duration,
    max_age: Duration,
}

pub struct Verifier {
    hs256: Option<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Vec<String>,
    leeway: u64,
}

impl Verifier {
    pub fn new(config: &AuthConfig) -> Result<Arc<Self>, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let audience = config
            .audience
            .as_deref()
            .map(|a| {
                a.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Arc::new(Self {
            hs256: config
                .jwt_secret
                .as_deref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks: config.jwks_url.as_ref().map(|url| Jwks {
                url: url.clone(),
                http,
                keys: RwLock::new(Keys {
                    by_kid: HashMap::new(),
                    fetched_at: None,
                }),
                refresh: Mutex::new(None),
                min_refresh: Duration::from_secs(config.jwks_refresh_min_secs),
                max_age: Duration::from_secs(config.jwks_cache_secs),
            }),
            issuer: config.issuer.clone(),
            audience,
            leeway: config.leeway_secs.min(60),
        }))
    }

    /// Verifies `Authorization: Bearer <token>` and returns the claims.
    pub async fn verify_header(&self, header: Option<&str>) -> Result<Claims, AuthError> {
        let header = header.ok_or_else(|| AuthError("missing Authorization header".into()))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthError("Authorization must be `Bearer <token>`".into()))?;
        self.verify(token).await
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = decode_header(token).map_err(|e| {
            AuthError(match declared_algorithm(token) {
                Some(alg) if !matches!(alg.as_str(), "HS256" | "ES256" | "RS256") => {
                    format!("token algorithm `{alg}` is not accepted")
                }
                _ => format!("malformed token: {e}"),
            })
        })?;
        let (key, algorithm) = match header.alg {
            Algorithm::HS256 => {
                let key = self
                    .hs256
                    .clone()
                    .ok_or_else(|| AuthError("HS256 tokens are not accepted".into()))?;
                (key, Algorithm::HS256)
            }
            Algorithm::ES256 | Algorithm::RS256 => {
                let jwks = self.jwks.as_ref().ok_or_else(|| {
                    AuthError(format!("{:?} tokens are not accepted", header.alg))
                })?;
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| AuthError("token has no kid".into()))?;
                let (key, pinned) = jwks.key(kid).await?;
                if pinned != header.alg {
                    return Err(AuthError(format!(
                        "key {kid} is for {pinned:?}, token uses {:?}",
                        header.alg
                    )));
                }
                (key, pinned)
            }
            other => return Err(AuthError(format!("{other:?} tokens are not accepted"))),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audience);
        }
        let data = decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            AuthError(match e.kind() {
                K::ExpiredSignature => "token expired".to_string(),
                K::ImmatureSignature => "token not yet valid (nbf)".to_string(),
                K::InvalidAudience => "token audience not accepted".to_string(),
                K::InvalidIssuer => "token issuer not accepted".to_string(),
                K::InvalidSignature => "token signature is invalid".to_string(),
                K::InvalidAlgorithm => "token algorithm not accepted".to_string(),
                K::MissingRequiredClaim(c) => format!("token lacks the `{c}` claim"),
                _ => format!("invalid token: {e}"),
            })
        })?;
        Ok(data.claims)
    }
}

/// The `alg` a token's header declares, read before any library parsing so that `none` and
/// other unsupported algorithms get a clear refusal.
fn declared_algorithm(token: &str) -> Option<String> {
    use base64::Engine;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str().map(String::from)
}

impl Jwks {
    async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), AuthError> {
        {
            let keys = self.keys.read().await;
            let fresh = keys.fetched_at.is_some_and(|t| t.elapsed() < self.max_age);
            if let (true, Some(found)) = (fresh, keys.by_kid.get(kid)) {
                return Ok(found.clone());
            }
        }
        self.refresh().await;
        let keys = self.keys.read().await;
        keys.by_kid
            .get(kid)
            .cloned()
            .ok_or_else(|| AuthError(format!("unknown signing key (kid {kid})")))
    }

    /// Fetches the key set unless a fetch happened less than `min_refresh` ago.
    async fn refresh(&self) {
        let mut last = self.refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch().await {
            Ok(by_kid) => {
                tracing::info!(url = %self.url, keys = by_kid.len(), "JWKS refreshed");
                *self.keys.write().await = Keys {
                    by_kid,
                    fetched_at: Some(Instant::now()),
                };
            }
            Err(error) => tracing::warn!(url = %self.url, %error, "JWKS fetch failed"),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, (DecodingKey, Algorithm)>, String> {
        let set: JwkSet = self
            .http
            .get(&self.url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
                (AlgorithmParameters::EllipticCurve(_), None | Some(KeyAlgorithm::ES256)) => {
                    Algorithm::ES256
                }
                (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
                _ => continue,
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => {
                    keys.insert(kid, (key, algorithm));
                }
                Err(e) => tracing::warn!(%kid, error = %e, "skipping unusable JWK"),
            }
        }
        Ok(keys)
    }
}
