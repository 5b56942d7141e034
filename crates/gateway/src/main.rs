use substrate_runtime::{telemetry, Shutdown};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match gateway::Config::load() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("gateway: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    telemetry::init(&config.telemetry);
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signals();
    match gateway::run(config, shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            std::process::ExitCode::FAILURE
        }
    }
}
