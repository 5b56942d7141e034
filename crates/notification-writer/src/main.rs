use substrate_runtime::{telemetry, Shutdown};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match notification_writer::Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("notification-writer: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(&config.telemetry);
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signals();
    match notification_writer::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "notification-writer failed");
            std::process::ExitCode::FAILURE
        }
    }
}
