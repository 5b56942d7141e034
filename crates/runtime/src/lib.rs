//! Process plumbing shared by every service: layered configuration, telemetry, shutdown and the
//! health/metrics HTTP endpoints, and the failure model (transient or permanent) every consumer
//! uses. It knows nothing about Kafka, Avro or Postgres.

pub mod config;
pub mod failure;
pub mod http;
pub mod ops;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use config::{load_config, ConfigError, Validate};
pub use failure::{Backoff, Class, Classify, Failure};
pub use shutdown::{LifecycleConfig, Shutdown};
pub use trace::TraceParent;

use std::future::Future;
use std::process::ExitCode;

/// What every service's configuration has besides its own settings.
pub trait ServiceConfig {
    fn telemetry(&self) -> &telemetry::TelemetryConfig;
    fn lifecycle(&self) -> &shutdown::LifecycleConfig;
}

/// Implements [`ServiceConfig`] for a configuration struct with `telemetry` and `lifecycle`
/// fields.
#[macro_export]
macro_rules! service_config {
    ($config:ty) => {
        impl $crate::ServiceConfig for $config {
            fn telemetry(&self) -> &$crate::telemetry::TelemetryConfig {
                &self.telemetry
            }

            fn lifecycle(&self) -> &$crate::LifecycleConfig {
                &self.lifecycle
            }
        }
    };
}

/// The body of every service's `main`: report a configuration error (exit 2), set up logging,
/// cancel on SIGTERM/SIGINT (a second signal exits at once), run, drain the tracked background
/// tasks within the configured grace, and exit 0 after a clean stop or 1 after a failure (of
/// `run` or of any background task). Spans still held are exported before the exit.
pub async fn run_service<C, Fut>(
    name: &'static str,
    config: Result<C, ConfigError>,
    run: impl FnOnce(C, Shutdown) -> Fut,
) -> ExitCode
where
    C: ServiceConfig,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = match config.and_then(|c| c.telemetry().check().map(|()| c)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_service(config.telemetry(), name);
    let shutdown = Shutdown::new(config.lifecycle().grace());
    shutdown.cancel_on_signals();
    let result = run(config, shutdown.clone()).await;
    shutdown.cancel();
    shutdown.drain().await;
    telemetry::shutdown(std::time::Duration::from_secs(5)).await;
    match result {
        Ok(()) if !shutdown.failed() => {
            tracing::info!("{name} stopped");
            ExitCode::SUCCESS
        }
        Ok(()) => ExitCode::FAILURE,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{name} failed");
            ExitCode::FAILURE
        }
    }
}
