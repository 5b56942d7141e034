//! The operational HTTP surface every service exposes: `/healthz` (the process is alive),
//! `/readyz` (its dependencies answer) and `/metrics` (Prometheus text). Readiness checks are
//! supplied by the service; this module only shapes the answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// A named dependency check, e.g. "kafka" or "postgres".
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
pub type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()) as CheckFuture)));
        self
    }

    /// Runs every check concurrently; the answer lists each dependency's state.
    pub async fn evaluate(&self) -> (bool, serde_json::Value) {
        let results = futures_join(self.checks.iter().map(|(name, check)| (*name, check()))).await;
        let mut ok = true;
        let mut body = serde_json::Map::new();
        for (name, result) in results {
            let value = match result {
                Ok(()) => serde_json::json!({"status": "ok"}),
                Err(error) => {
                    ok = false;
                    serde_json::json!({"status": "unavailable", "error": error})
                }
            };
            body.insert(name.to_string(), value);
        }
        (ok, serde_json::Value::Object(body))
    }
}

async fn futures_join(
    checks: impl Iterator<Item = (&'static str, CheckFuture)>,
) -> Vec<(&'static str, Result<(), String>)> {
    let handles: Vec<_> = checks
        .map(|(name, fut)| (name, tokio::spawn(fut)))
        .collect();
    let mut out = Vec::with_capacity(handles.len());
    for (name, handle) in handles {
        let result = handle
            .await
            .unwrap_or_else(|e| Err(format!("check panicked: {e}")));
        out.push((name, result));
    }
    out
}

/// Buckets of durations (`_seconds`): 0.5 ms … 5 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Buckets of durations that can take minutes (an outbound HTTP call with a long timeout, a
/// saga from intent to confirmation): 5 ms … 1 h.
pub const LONG_SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
];
/// Buckets of counts per batch (`_rows`, `_events`): 1 … 5,000.
pub const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];
/// Buckets of sizes (`_bytes`): 64 B … 1 GiB, by powers of four.
pub const BYTES_BUCKETS: &[f64] = &[
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
];

/// Histograms whose durations can take minutes (see [`LONG_SECONDS_BUCKETS`]).
const LONG_HISTOGRAMS: &[&str] = &[
    "dispatcher_attempt_seconds",
    "media_saga_upload_duration_seconds",
    "substrate_kafka_record_age_seconds",
];

/// Gauge: 1, labelled with the running build's `version`.
pub const BUILD_INFO: &str = "substrate_build_info";

/// The process-wide Prometheus recorder; installed on first use, with each histogram's buckets
/// chosen by its unit (the name's suffix), the shared metrics described and the build info set.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new()
                .set_buckets(SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_rows".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_events".into()), COUNT_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS)
                })
                .expect("static buckets are valid");
            for name in LONG_HISTOGRAMS {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full((*name).into()), LONG_SECONDS_BUCKETS)
                    .expect("static buckets are valid");
            }
            let handle = builder
                .install_recorder()
                .expect("install the Prometheus recorder");
            describe_shared();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// The process's CPU, memory, open files and threads (`process_*`), read at each scrape.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let collector = metrics_process::Collector::default();
        collector.describe();
        collector
    })
}

/// `HELP` and units of the metrics this crate records for every service.
fn describe_shared() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(BUILD_INFO, "1, labelled with the running build's version");
    describe_counter!(
        crate::failure::TRANSIENT_RETRIES,
        "Transient failures retried, by operation"
    );
    describe_gauge!(
        crate::failure::BACKOFF_SECONDS,
        Unit::Seconds,
        "The wait before the next try of an operation; 0 once it succeeded"
    );
    describe_counter!(
        crate::failure::BATCH_SPLITS,
        "Batches refused for a permanent reason and split, by operation"
    );
    describe_counter!(
        crate::http::HTTP_SHED,
        "Requests answered 503 by a listener's load shedding, by reason"
    );
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// Router with `/healthz`, `/readyz` and `/metrics`, to be merged into a service's router or
/// served on its own listener.
pub fn router(readiness: Readiness) -> Router {
    let state = OpsState {
        readiness,
        metrics: metrics_handle(),
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

/// Serves [`router`] on `listener` as a tracked background task until shutdown (services whose
/// only HTTP surface is the operational one).
pub fn spawn(
    listener: tokio::net::TcpListener,
    readiness: Readiness,
    shutdown: &crate::Shutdown,
) -> tokio::task::JoinHandle<()> {
    let token = shutdown.token();
    shutdown.spawn("ops http", async move {
        crate::http::serve(
            listener,
            router(readiness),
            &crate::http::HttpLimits::default(),
            token,
        )
        .await?;
        Ok(())
    })
}

/// `{"status": "ok"}` while the process serves (liveness).
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<OpsState>) -> Response {
    let (ok, checks) = state.readiness.evaluate().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body =
        serde_json::json!({"status": if ok { "ready" } else { "not_ready" }, "checks": checks});
    (status, Json(body)).into_response()
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    process_collector().collect();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
