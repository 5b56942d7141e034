//! API keys of server-to-server sources (`substrate_private.api_keys`): minted and managed by
//! `esctl keys`, verified by the gateway.
//!
//! A key reads `esk_<id>_<secret>`: `id` (12 characters) is public and names the key in logs;
//! `secret` (32 characters) is shown once. The table holds only
//! `HMAC-SHA256(pepper, salt || key)` with a random 16-byte salt per key; the pepper is part of
//! the gateway's configuration, so a copy of the database alone cannot test guesses.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::distr::{Alphanumeric, SampleString};
use rand::RngCore;
use sha2::Sha256;
use tokio_postgres::GenericClient;

use crate::DbError;

/// Every key starts with this.
pub const PREFIX: &str = "esk_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;

/// A key as stored (no secret).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub source: String,
    pub routes: Vec<String>,
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub replaced_by: Option<String>,
}

impl ApiKey {
    /// What logs show: `esk_<id>`.
    pub fn label(&self) -> String {
        format!("{PREFIX}{}", self.id)
    }

    /// Not revoked and not past its expiry at `now`.
    pub fn active_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|t| t > now)
    }

    /// Whether `key` (the whole presented string) is this key, in constant time.
    pub fn matches(&self, pepper: &[u8], key: &str) -> bool {
        mac(pepper, &self.salt, key)
            .verify_slice(&self.hash)
            .is_ok()
    }

    /// Whether the key may post to `route` (`*` allows every `auth: api_key` route).
    pub fn allows(&self, route: &str) -> bool {
        self.routes.iter().any(|r| r == route || r == "*")
    }
}

fn mac(pepper: &[u8], salt: &[u8], key: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(pepper).expect("HMAC takes keys of any length");
    mac.update(salt);
    mac.update(key.as_bytes());
    mac
}

/// The hash stored for `key`.
pub fn hash(pepper: &[u8], salt: &[u8], key: &str) -> Vec<u8> {
    mac(pepper, salt, key).finalize().into_bytes().to_vec()
}

/// The public id of a presented key, when it has the shape of one.
pub fn parse_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let alnum = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    (id.len() == ID_LEN && secret.len() == SECRET_LEN && alnum(id) && alnum(secret)).then_some(id)
}

/// Whether `text` looks like one of these keys (rather than a JWT): for "wrong credential"
/// answers.
pub fn looks_like_key(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// A freshly minted key: `key` is shown to the operator once and never stored.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: String,
    pub key: String,
}

/// Source names: a letter or digit, then letters, digits, `.`, `_`, `-` (at most 64).
pub fn check_source(source: &str) -> Result<(), String> {
    let mut chars = source.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if first_ok && rest_ok && source.len() <= 64 {
        Ok(())
    } else {
        Err(format!(
            "source `{source}`: use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)"
        ))
    }
}

fn mint(pepper: &[u8]) -> (NewKey, Vec<u8>, Vec<u8>) {
    let mut rng = rand::rng();
    let id = Alphanumeric.sample_string(&mut rng, ID_LEN);
    let secret = Alphanumeric.sample_string(&mut rng, SECRET_LEN);
    let key = format!("{PREFIX}{id}_{secret}");
    let mut salt = vec![0u8; 16];
    rng.fill_bytes(&mut salt);
    let hash = hash(pepper, &salt, &key);
    (NewKey { id, key }, salt, hash)
}

/// Mints and stores a key for `source`, allowed on `routes`.
pub async fn create<C: GenericClient>(
    client: &C,
    pepper: &[u8],
    source: &str,
    routes: &[String],
    description: Option<&str>,
) -> Result<NewKey, DbError> {
    let (new, salt, hash) = mint(pepper);
    client
        .execute(
            "INSERT INTO substrate_private.api_keys (id, source, routes, salt, hash, description)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&new.id, &source, &routes, &salt, &hash, &description],
        )
        .await?;
    Ok(new)
}

const COLUMNS: &str = "id, source, routes, salt, hash, description, created_at, expires_at, \
                       revoked_at, replaced_by";

fn row(r: &tokio_postgres::Row) -> ApiKey {
    ApiKey {
        id: r.get(0),
        source: r.get(1),
        routes: r.get(2),
        salt: r.get(3),
        hash: r.get(4),
        description: r.get(5),
        created_at: r.get(6),
        expires_at: r.get(7),
        revoked_at: r.get(8),
        replaced_by: r.get(9),
    }
}

/// Every key, newest first (revoked and expired ones included).
pub async fn list<C: GenericClient>(client: &C) -> Result<Vec<ApiKey>, DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM substrate_private.api_keys ORDER BY created_at DESC, id"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(row).collect())
}

/// Keys usable now (what a gateway holds in memory).
pub async fn active<C: GenericClient>(client: &C) -> Result<Vec<ApiKey>, DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM substrate_private.api_keys
                 WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(row).collect())
}

/// Why a key could not be rotated or revoked.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no key {0}")]
    Unknown(String),
    #[error("key {0} is revoked or expired")]
    Inactive(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for ChangeError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(DbError::Query(e))
    }
}

/// Replaces key `id` with a new key for the same source and routes. The old key keeps working
/// for `overlap` (both are active meanwhile), then expires.
pub async fn rotate(
    client: &mut tokio_postgres::Client,
    pepper: &[u8],
    id: &str,
    overlap: std::time::Duration,
) -> Result<NewKey, ChangeError> {
    let tx = client.transaction().await?;
    let old = tx
        .query_opt(
            &format!("SELECT {COLUMNS} FROM substrate_private.api_keys WHERE id = $1 FOR UPDATE"),
            &[&id],
        )
        .await?
        .map(|r| row(&r))
        .ok_or_else(|| ChangeError::Unknown(id.to_string()))?;
    if !old.active_at(Utc::now()) {
        return Err(ChangeError::Inactive(id.to_string()));
    }
    let new = create(
        &tx,
        pepper,
        &old.source,
        &old.routes,
        old.description.as_deref(),
    )
    .await?;
    let overlap_secs = overlap.as_secs_f64();
    tx.execute(
        "UPDATE substrate_private.api_keys
         SET expires_at = least(coalesce(expires_at, 'infinity'),
                               now() + make_interval(secs => $2)),
             replaced_by = $3
         WHERE id = $1",
        &[&id, &overlap_secs, &new.id],
    )
    .await?;
    tx.commit().await?;
    Ok(new)
}

/// Revokes key `id` at once (gateways stop accepting it at their next refresh).
pub async fn revoke<C: GenericClient>(client: &C, id: &str) -> Result<(), ChangeError> {
    let updated = client
        .execute(
            "UPDATE substrate_private.api_keys SET revoked_at = coalesce(revoked_at, now())
             WHERE id = $1",
            &[&id],
        )
        .await?;
    if updated == 0 {
        return Err(ChangeError::Unknown(id.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_parse_and_match_only_themselves() {
        let pepper = b"pepper-of-this-gateway";
        let (new, salt, hash) = mint(pepper);
        assert_eq!(parse_id(&new.key), Some(new.id.as_str()));
        let key = ApiKey {
            id: new.id.clone(),
            source: "shop".into(),
            routes: vec!["purchase".into()],
            salt,
            hash,
            description: None,
            created_at: Utc::now(),
            expires_at: None,
            revoked_at: None,
            replaced_by: None,
        };
        assert!(key.matches(pepper, &new.key));
        assert!(!key.matches(b"another pepper", &new.key));
        let mut other = new.key.clone();
        other.pop();
        other.push(if new.key.ends_with('A') { 'B' } else { 'A' });
        assert!(!key.matches(pepper, &other));
        assert!(key.allows("purchase") && !key.allows("message"));
        assert_eq!(key.label(), format!("esk_{}", new.id));
    }

    #[test]
    fn only_well_formed_keys_have_an_id() {
        for bad in [
            "",
            "esk_",
            "esk_short_secret",
            "eyJhbGciOiJIUzI1NiJ9.e30.sig",
            "esk_abcdefghijkl_tooshort",
            "esk_abcdefghijk!_0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
        assert_eq!(
            parse_id("esk_abcdefghijkl_0123456789abcdef0123456789abcdef"),
            Some("abcdefghijkl")
        );
    }

    #[test]
    fn source_names_are_checked() {
        assert!(check_source("shop").is_ok());
        assert!(check_source("billing-eu.v2").is_ok());
        for bad in ["", "-x", "a b", &"x".repeat(65)] {
            assert!(check_source(bad).is_err(), "{bad}");
        }
    }
}
