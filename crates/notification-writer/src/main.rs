#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    substrate_runtime::run_service(
        "notification-writer",
        notification_writer::Config::load(),
        notification_writer::run,
    )
    .await
}
