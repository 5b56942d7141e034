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
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

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

/// The process-wide Prometheus recorder; installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ])
                .expect("static buckets are valid")
                .install_recorder()
                .expect("install the Prometheus recorder")
        })
        .clone()
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
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
