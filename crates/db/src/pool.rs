//! Connection pool construction, single connections outside the pool (both with the TLS of
//! [`crate::tls`]), and the crate's error type.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use serde::Deserialize;
use substrate_runtime::failure::{Class, Classify};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{split_url, SslMode, TlsSettings};

pub use deadpool_postgres::Pool;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// `postgres://user:password@host:port/database`; libpq's `sslmode` and `sslrootcert` query
    /// parameters are understood (the keys below win over them).
    pub url: String,
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full` (libpq's meanings). Unset:
    /// the URL's `sslmode`, else `prefer` (`verify-full` when `ca_file` is `system`). Without a
    /// CA, `prefer` and `require` encrypt but do not verify the certificate.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// PEM file of the CA certificate(s) that verify the server, or `system` for the platform's
    /// trust store. Unset: the URL's `sslrootcert`. Needed by `verify-ca` and `verify-full`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Longest a statement may run before the server cancels it (`statement_timeout`); 0 = none.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Longest a caller waits for a free pooled connection before the pool reports it unavailable.
    #[serde(default = "default_pool_wait_timeout_ms")]
    pub pool_wait_timeout_ms: u64,
    /// Longest opening a new connection may take.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_pool_size() -> usize {
    8
}

fn default_statement_timeout_ms() -> u64 {
    30_000
}

fn default_pool_wait_timeout_ms() -> u64 {
    10_000
}

fn default_connect_timeout_ms() -> u64 {
    5_000
}

impl DbConfig {
    /// A config for `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            sslmode: None,
            ca_file: None,
            pool_size: default_pool_size(),
            statement_timeout_ms: default_statement_timeout_ms(),
            pool_wait_timeout_ms: default_pool_wait_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
        }
    }

    /// A config for a single connection ([`connect_one`]) from a URL alone: TLS as its
    /// `sslmode`/`sslrootcert` say, no statement timeout beyond what its `options` say.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            statement_timeout_ms: 0,
            ..Self::new(url)
        }
    }

    /// The tokio-postgres settings and the TLS connector this config describes. Every error
    /// names the setting at fault.
    fn target(&self) -> Result<(tokio_postgres::Config, MakeRustlsConnect), DbError> {
        let (url, mut url_tls) = split_url(&self.url);
        let mut pg = tokio_postgres::Config::from_str(&url)
            .map_err(|e| DbError::Config(format!("database.url: {e}")))?;
        if url_tls.sslmode.is_none() {
            // A `key=value` string keeps its own sslmode (tokio-postgres read the three it knows).
            url_tls.sslmode = match pg.get_ssl_mode() {
                tokio_postgres::config::SslMode::Disable => Some("disable".into()),
                tokio_postgres::config::SslMode::Require => Some("require".into()),
                _ => None,
            };
        }
        let tls = TlsSettings::resolve(self.sslmode, self.ca_file.as_deref(), &url_tls)
            .map_err(DbError::Config)?;
        pg.ssl_mode(tls.negotiation());
        if self.statement_timeout_ms > 0 {
            // Appended to what the URL's `options` already say; a later `-c` wins in Postgres.
            let mut options = pg.get_options().unwrap_or_default().to_string();
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&format!(
                "-c statement_timeout={}",
                self.statement_timeout_ms
            ));
            pg.options(&options);
        }
        pg.connect_timeout(Duration::from_millis(self.connect_timeout_ms));
        Ok((pg, tls.connector().map_err(DbError::Config)?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database settings: {0}")]
    Config(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {}", describe(.0))]
    /// Not a `#[source]`: [`describe`] prints the cause already, and error chains would repeat it.
    Query(tokio_postgres::Error),
    #[error("migration {file}: {message}")]
    Migration { file: String, message: String },
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Query(e)
    }
}

/// What the database said (`ERROR 22P05: unsupported Unicode escape sequence (detail: …)`), or
/// the client's own error with its cause: tokio-postgres alone prints only `db error`.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
        for (label, value) in [
            ("detail", db.detail()),
            ("hint", db.hint()),
            ("table", db.table()),
            ("column", db.column()),
            ("constraint", db.constraint()),
        ] {
            if let Some(value) = value {
                text.push_str(&format!("; {label}: {value}"));
            }
        }
        return text;
    }
    let mut text = e.to_string();
    if let Some(source) = std::error::Error::source(e) {
        text.push_str(": ");
        text.push_str(&substrate_runtime::failure::chain(source));
    }
    text
}

impl DbError {
    /// The SQLSTATE the database answered with, if it answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Query(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// Permanent: errors about the row itself — data exceptions (class 22: an untranslatable
/// character, a value out of range), integrity violations (23: a CHECK, NOT NULL or foreign
/// key), program limits (54: a row too large) — and a parameter the client could not encode.
/// Transient: everything about the database rather than the row — connection loss, timeouts
/// and cancellations (57), resources (53), serialization failures and deadlocks (40), lock
/// waits (55), read-only failover (25006), and errors such as a missing table or privilege (42,
/// 28, 3D), which no single row causes and an operator fixes: retrying them holds the input
/// instead of dead-lettering every record that meets a broken deployment.
impl Classify for DbError {
    fn class(&self) -> Class {
        match self {
            Self::Unavailable(_) => Class::Transient,
            Self::Config(_) | Self::Migration { .. } => Class::Permanent,
            Self::Query(e) => match e.code().map(|c| c.code()) {
                Some(code) if matches!(&code[..2], "22" | "23" | "54") => Class::Permanent,
                Some(_) => Class::Transient,
                None if e.is_closed() => Class::Transient,
                // Encoding a parameter or decoding a column fails the same way every time.
                None if e.to_string().starts_with("error serializing")
                    || e.to_string().starts_with("error deserializing") =>
                {
                    Class::Permanent
                }
                None => Class::Transient,
            },
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            // With the cause: deadpool prints only the first line ("error performing TLS
            // handshake"), not why (the certificate's issuer unknown, a name mismatch...).
            deadpool_postgres::PoolError::Backend(e) => {
                Self::Unavailable(format!("opening a connection: {}", describe(&e)))
            }
            e => Self::Unavailable(e.to_string()),
        }
    }
}

/// Builds a pool; connections are opened lazily, so this succeeds while the database is down.
/// Fails at once on bad settings (URL, `sslmode`, an unreadable CA file), naming the key.
pub fn connect_pool(config: &DbConfig) -> Result<Pool, DbError> {
    let (pg, tls) = config.target()?;
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .wait_timeout(Some(Duration::from_millis(config.pool_wait_timeout_ms)))
        .build()
        .map_err(|e| DbError::Config(e.to_string()))
}

/// The connection half of [`connect`]: drive it (await it, or poll its messages for LISTEN).
pub type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

/// One connection outside the pool, with the pool's TLS and timeouts; the caller drives the
/// [`Connection`] (as a LISTEN loop must, to see notifications).
pub async fn connect(config: &DbConfig) -> Result<(tokio_postgres::Client, Connection), DbError> {
    let (pg, tls) = config.target()?;
    Ok(pg.connect(tls).await?)
}

/// One connection outside the pool, driven by a spawned task that logs how it failed, if it did.
pub async fn connect_one(config: &DbConfig) -> Result<tokio_postgres::Client, DbError> {
    let (client, connection) = connect(config).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(error = %describe(&error), "database connection ended");
        }
    });
    Ok(client)
}

/// `SELECT 1` through the pool: proves the database answers.
pub async fn ping(pool: &Pool) -> Result<(), String> {
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client
        .simple_query("SELECT 1")
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A readiness check for `/readyz`: pings through a clone of the pool on every call.
pub fn ready_check(
    pool: &Pool,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
       + Send
       + Sync
       + 'static {
    let pool = pool.clone();
    move || {
        let pool = pool.clone();
        Box::pin(async move { ping(&pool).await })
    }
}

#[cfg(test)]
mod tests {
    use tokio_postgres::config::SslMode as Negotiation;

    use super::*;

    #[test]
    fn url_tls_parameters_reach_the_connection_settings() {
        let (pg, _) = DbConfig::from_url("postgres://u@h/db?sslmode=require&application_name=a")
            .target()
            .unwrap();
        assert_eq!(pg.get_ssl_mode(), Negotiation::Require);
        assert_eq!(pg.get_application_name(), Some("a"));
        let error = DbConfig::from_url("postgres://u@h/db?sslmode=verify-full&sslrootcert=/none")
            .target()
            .err()
            .unwrap();
        assert!(
            error.to_string().contains("sslrootcert in database.url"),
            "{error}"
        );
    }

    #[test]
    fn a_key_value_string_keeps_its_sslmode_unless_the_key_says_otherwise() {
        let (pg, _) = DbConfig::from_url("host=h user=u sslmode=require")
            .target()
            .unwrap();
        assert_eq!(pg.get_ssl_mode(), Negotiation::Require);
        let config = DbConfig {
            sslmode: Some(SslMode::Disable),
            ..DbConfig::from_url("host=h user=u sslmode=require")
        };
        assert_eq!(
            config.target().unwrap().0.get_ssl_mode(),
            Negotiation::Disable
        );
        let (pg, _) = DbConfig::from_url("host=h user=u").target().unwrap();
        assert_eq!(pg.get_ssl_mode(), Negotiation::Prefer);
    }

    #[test]
    fn only_pools_get_the_statement_timeout_by_default() {
        let (pooled, _) = DbConfig::new("postgres://u@h/db").target().unwrap();
        assert_eq!(pooled.get_options(), Some("-c statement_timeout=30000"));
        let (single, _) = DbConfig::from_url("postgres://u@h/db").target().unwrap();
        assert_eq!(single.get_options(), None);
    }
}
