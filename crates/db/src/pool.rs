//! Connection pool construction and the crate's error type.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use serde::Deserialize;
use substrate_runtime::failure::{Class, Classify};
use tokio_postgres::NoTls;

pub use deadpool_postgres::Pool;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {
    /// `postgres://user:password@host:port/database`
    pub url: String,
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
            pool_size: default_pool_size(),
            statement_timeout_ms: default_statement_timeout_ms(),
            pool_wait_timeout_ms: default_pool_wait_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database url: {0}")]
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
        Self::Unavailable(e.to_string())
    }
}

/// Builds a pool; connections are opened lazily, so this succeeds while the database is down.
pub fn connect_pool(config: &DbConfig) -> Result<Pool, DbError> {
    let mut pg = tokio_postgres::Config::from_str(&config.url)
        .map_err(|e| DbError::Config(e.to_string()))?;
    if config.statement_timeout_ms > 0 {
        // Appended to what the URL's `options` already say; a later `-c` wins in Postgres.
        let mut options = pg.get_options().unwrap_or_default().to_string();
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str(&format!(
            "-c statement_timeout={}",
            config.statement_timeout_ms
        ));
        pg.options(&options);
    }
    pg.connect_timeout(Duration::from_millis(config.connect_timeout_ms));
    let manager = Manager::from_config(
        pg,
        NoTls,
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
