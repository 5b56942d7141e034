#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    substrate_runtime::run_service("dispatcher", dispatcher::Config::load(), dispatcher::run).await
}
