#[tokio::main]
async fn main() -> std::process::ExitCode {
    substrate_runtime::run_service(
        "gateway",
        gateway::Config::load(),
        |c| &c.telemetry,
        gateway::run,
    )
    .await
}
