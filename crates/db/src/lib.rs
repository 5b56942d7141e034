//! PostgreSQL access for the services: the connection pool, the migration runner for
//! `supabase/migrations`, and the platform's queries, one module per table family. Callers get
//! typed errors that say whether a retry can help.

pub mod dispatch;
pub mod media;
pub mod migrate;
pub mod notifications;
pub mod pool;
pub mod rules;

pub use pool::{connect_pool, DbConfig, DbError, Pool};
