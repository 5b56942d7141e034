#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    substrate_runtime::run_service(
        "rule-evaluator",
        rule_evaluator::Config::load(),
        rule_evaluator::run,
    )
    .await
}
