//! PostgreSQL access for the services: the connection pool, the migration runner for
//! `supabase/migrations`, and the platform's queries, one module per table family. Callers get
//! typed errors that say whether a retry can help.

pub mod api_keys;
pub mod directory;
pub mod dispatch;
pub mod feed;
pub mod idempotency;
pub mod media;
pub mod migrate;
pub mod notifications;
pub mod pool;
pub mod rules;
pub mod secrets;
pub mod tls;

pub use pool::{connect, connect_one, connect_pool, Connection, DbConfig, DbError, Pool};
pub use tls::SslMode;
