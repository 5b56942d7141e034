//! Process plumbing shared by every service: layered configuration, telemetry, shutdown and the
//! health/metrics HTTP endpoints. It knows nothing about Kafka, Avro or Postgres.

pub mod config;
pub mod ops;
pub mod shutdown;
pub mod telemetry;

pub use config::{load_config, ConfigError, Validate};
pub use shutdown::Shutdown;
