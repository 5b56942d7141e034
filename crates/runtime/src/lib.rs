//! Process plumbing shared by every service: layered configuration, telemetry, shutdown and the
//! health/metrics HTTP endpoints. It knows nothing about Kafka, Avro or Postgres.

pub mod config;
pub mod ops;
pub mod retry;
pub mod shutdown;
pub mod telemetry;

pub use config::{load_config, ConfigError, Validate};
pub use shutdown::Shutdown;

use std::future::Future;
use std::process::ExitCode;

/// The body of every service's `main`: report a configuration error (exit 2), set up logging,
/// cancel on SIGTERM/SIGINT, run, and exit 0 after a clean drain or 1 after a failure.
pub async fn run_service<C, Fut>(
    name: &'static str,
    config: Result<C, ConfigError>,
    telemetry_of: impl FnOnce(&C) -> &telemetry::TelemetryConfig,
    run: impl FnOnce(C, Shutdown) -> Fut,
) -> ExitCode
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(telemetry_of(&config));
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signals();
    match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{name} failed");
            ExitCode::FAILURE
        }
    }
}
