#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    substrate_runtime::run_service("media-saga", media_saga::Config::load(), media_saga::run).await
}
