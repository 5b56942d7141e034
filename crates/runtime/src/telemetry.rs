//! One place that sets up a process's telemetry: logs (an `EnvFilter` from `RUST_LOG`, default
//! `info`; plain or JSON lines on stderr, JSON carrying `trace_id`/`span_id`) and, when an OTLP
//! endpoint is configured, spans exported over OTLP/HTTP by a batch processor. Configured by the
//! standard `OTEL_*` variables, the `telemetry` section filling in what they leave unset. Tests
//! may call `init` repeatedly; only the first call wins.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::Deserialize;
use tracing::dispatcher::WeakDispatch;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{dynamic_filter_fn, FilterExt as _, LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `plain` or `json`.
    #[serde(default = "default_format")]
    pub log_format: String,
    /// Filter directives used when `RUST_LOG` is unset.
    #[serde(default = "default_filter")]
    pub log_filter: String,
    /// OTLP/HTTP base URL spans are exported to (`/v1/traces` is appended) when neither
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` nor `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Unset
    /// everywhere: no spans are recorded.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded (parent-based: a caller's sampled flag is followed)
    /// when `OTEL_TRACES_SAMPLER` is unset; default 1.0.
    #[serde(default)]
    pub trace_sample_ratio: Option<f64>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: default_format(),
            log_filter: default_filter(),
            otlp_endpoint: None,
            trace_sample_ratio: None,
        }
    }
}

impl TelemetryConfig {
    /// The first key that cannot work.
    pub fn check(&self) -> Result<(), crate::ConfigError> {
        if !matches!(self.log_format.as_str(), "plain" | "json") {
            return Err(crate::ConfigError::invalid(
                "telemetry.log_format",
                "must be plain or json",
            ));
        }
        if let Some(ratio) = self.trace_sample_ratio {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(crate::ConfigError::invalid(
                    "telemetry.trace_sample_ratio",
                    "must be between 0.0 and 1.0",
                ));
            }
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(crate::ConfigError::invalid(
                    "telemetry.otlp_endpoint",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        Ok(())
    }
}

fn default_format() -> String {
    "plain".into()
}

fn default_filter() -> String {
    "info,rdkafka=warn".into()
}

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The crates whose spans are exported; other libraries' spans (the AWS SDK's, hyper's) stay
/// out of traces, whatever `RUST_LOG` says about their logs. The platform's spans are at DEBUG
/// level: the default log filter (`info`) leaves them out of log lines, and without an exporter
/// no layer wants them, so they cost nothing.
const TRACED_CRATES: &[&str] = &[
    "substrate_runtime",
    "substrate_kafka",
    "substrate_db",
    "substrate_s3",
    "gateway",
    "notification_writer",
    "rule_evaluator",
    "dispatcher",
    "media_saga",
];

/// Whether the span `id` belongs to a sampled trace. The exporter's layer takes a span or an
/// event only below a sampled span, or a span that `trace::continuing` makes (a trace's root
/// or its continuation of a remote context): a trace sampled out costs no span below its root,
/// and a client span (a database statement, an S3 call) never starts a trace of its own.
fn sampled(id: &tracing::span::Id, dispatch: &OnceLock<WeakDispatch>) -> bool {
    dispatch
        .get()
        .and_then(WeakDispatch::upgrade)
        .and_then(|dispatch| tracing_opentelemetry::get_otel_context(id, &dispatch))
        .is_some_and(|context| context.span().span_context().is_sampled())
}

/// The layer that hands the platform's spans to `tracer`: only the traced crates' spans, and
/// only those in a sampled trace (see [`sampled`]). `dispatch` is the subscriber it is part of.
fn exporter_layer<S>(
    tracer: opentelemetry_sdk::trace::Tracer,
    dispatch: Arc<OnceLock<WeakDispatch>>,
) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let targets = TRACED_CRATES.iter().fold(Targets::new(), |t, name| {
        t.with_target(*name, LevelFilter::DEBUG)
    });
    let below_sampled = dynamic_filter_fn(move |meta, cx| match cx.lookup_current() {
        Some(current) => sampled(&current.id(), &dispatch),
        None => meta.is_span() && crate::trace::may_start(),
    });
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_filter(targets.and(below_sampled))
}

/// Installs the global subscriber for the service `service` (its default `service.name`),
/// exporting spans when an OTLP endpoint is configured. Returns false when one was already
/// installed.
pub fn init_service(config: &TelemetryConfig, service: &str) -> bool {
    install(config, Some(service))
}

/// Installs the global subscriber of a tool or a test binary: logs only, never spans (a test's
/// in-process services must not report as the stack's). Returns false when one was already
/// installed.
pub fn init(config: &TelemetryConfig) -> bool {
    install(config, None)
}

fn install(config: &TelemetryConfig, service: Option<&str>) -> bool {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_filter));
    let json = config.log_format == "json";
    let dispatch_slot = Arc::new(OnceLock::new());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json()
            .flatten_event(true)
            .event_format(WithTraceIds::new(dispatch_slot.clone()))
            .boxed()
    } else {
        fmt.boxed()
    };
    let provider = match service.map(|service| (service, tracer_provider(config, service))) {
        None => None,
        Some((_, Ok(provider))) => provider,
        Some((service, Err(e))) => {
            eprintln!("{service}: traces are off: {e}");
            None
        }
    };
    let otel = provider.as_ref().map(|provider| {
        exporter_layer(
            provider.tracer(service.unwrap_or_default().to_string()),
            dispatch_slot.clone(),
        )
    });
    let dispatch = tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .with(otel),
    );
    let _ = dispatch_slot.set(dispatch.downgrade());
    let installed = dispatch.try_init().is_ok();
    if installed {
        if let Some(provider) = provider {
            crate::trace::set_enabled();
            let _ = PROVIDER.set(provider);
        }
    }
    installed
}

/// Flushes and stops the span exporter (at exit); waits at most `timeout`.
pub async fn shutdown(timeout: Duration) {
    let Some(provider) = PROVIDER.get().cloned() else {
        return;
    };
    // The batch processor's shutdown blocks until its thread has exported what it holds.
    let flush = tokio::task::spawn_blocking(move || provider.shutdown());
    match tokio::time::timeout(timeout, flush).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "flushing spans at exit failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "flushing spans at exit failed"),
        Err(_) => tracing::warn!(?timeout, "flushing spans at exit timed out"),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The provider when an endpoint is configured and traces are not switched off
/// (`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`).
fn tracer_provider(
    config: &TelemetryConfig,
    service: &str,
) -> Result<Option<SdkTracerProvider>, String> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let from_env = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    if !from_env && config.otlp_endpoint.is_none() {
        return Ok(None);
    }
    let protocol =
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    if let Some(protocol) = protocol.filter(|p| p != "http/protobuf") {
        return Err(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported (use http/protobuf)"
        ));
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    if !from_env {
        let base = config.otlp_endpoint.as_deref().unwrap_or_default();
        exporter = exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    let exporter = exporter.build().map_err(|e| e.to_string())?;
    let mut resource = Resource::builder();
    let named_by_env = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    if !named_by_env {
        resource = resource.with_service_name(service.to_string());
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource);
    if env("OTEL_TRACES_SAMPLER").is_none() {
        let ratio = config.trace_sample_ratio.unwrap_or(1.0);
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    Ok(Some(builder.build()))
}

/// JSON log lines that also name the current span's `trace_id` and `span_id`, so a line found
/// in the logs leads to its trace (and a trace to its lines). The ids come from the subscriber
/// itself (`dispatch`, set once it is built): while an event is dispatched, `Span::current()`
/// cannot be asked.
struct WithTraceIds {
    inner: tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl WithTraceIds {
    fn new(dispatch: Arc<OnceLock<WeakDispatch>>) -> Self {
        Self {
            inner: tracing_subscriber::fmt::format().json().flatten_event(true),
            dispatch,
        }
    }

    fn ids<S, N>(&self, ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        let span = ctx.lookup_current()?;
        let dispatch = self.dispatch.get()?.upgrade()?;
        let context = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
        let otel_span = context.span();
        let span_context = otel_span.span_context();
        span_context.is_valid().then(|| {
            (
                span_context.trace_id().to_string(),
                span_context.span_id().to_string(),
            )
        })
    }
}

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = self.ids(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A log sink the test reads back.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_name_the_trace_and_span_of_the_current_span() {
        crate::trace::set_enabled();
        // A provider without an exporter still gives every span real ids.
        let provider = SdkTracerProvider::builder().build();
        let lines = Lines::default();
        let writer = lines.clone();
        let slot = Arc::new(OnceLock::new());
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::registry()
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .flatten_event(true)
                        .event_format(WithTraceIds::new(slot.clone()))
                        .with_writer(move || writer.clone()),
                )
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test"))),
        );
        let _ = slot.set(dispatch.downgrade());
        let parent = crate::TraceParent::new_root();
        let ids = tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!("outside any span");
            let span = tracing::info_span!("work");
            crate::trace::set_parent(&span, Some(parent));
            let _entered = span.enter();
            tracing::info!(answer = 42, "inside");
            crate::TraceParent::current().unwrap()
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let parsed: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(parsed.len(), 2, "{text}");
        assert!(parsed[0].get("trace_id").is_none(), "{text}");
        assert_eq!(parsed[1]["message"], "inside");
        assert_eq!(parsed[1]["answer"], 42);
        // The span continues the remote parent's trace and has an id of its own.
        assert_eq!(ids.trace_id, parent.trace_id);
        assert_ne!(ids.parent_id, parent.parent_id);
        assert_eq!(parsed[1]["trace_id"], format!("{:032x}", parent.trace_id));
        assert_eq!(parsed[1]["span_id"], format!("{:016x}", ids.parent_id));
    }

    /// Samples a root only when its name says so (children follow their parent), and remembers
    /// the name of every span the tracer was asked to start.
    #[derive(Debug, Clone, Default)]
    struct ByName(Arc<Mutex<Vec<String>>>);

    impl opentelemetry_sdk::trace::ShouldSample for ByName {
        fn should_sample(
            &self,
            parent: Option<&opentelemetry::Context>,
            _trace_id: opentelemetry::trace::TraceId,
            name: &str,
            _kind: &opentelemetry::trace::SpanKind,
            _attributes: &[KeyValue],
            _links: &[opentelemetry::trace::Link],
        ) -> opentelemetry_sdk::trace::SamplingResult {
            use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult};
            self.0.lock().unwrap().push(name.to_string());
            let parent_sampled = parent
                .map(|p| p.span().span_context().clone())
                .filter(|c| c.is_valid())
                .map(|c| c.is_sampled());
            let keep = parent_sampled.unwrap_or_else(|| name.starts_with("keep"));
            SamplingResult {
                decision: if keep {
                    SamplingDecision::RecordAndSample
                } else {
                    SamplingDecision::Drop
                },
                attributes: Vec::new(),
                trace_state: Default::default(),
            }
        }
    }

    #[test]
    fn no_span_is_made_below_a_sampled_out_parent_nor_outside_a_trace() {
        use crate::trace::{self, TraceParent};
        trace::set_enabled();
        let asked = ByName::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(asked.clone())
            .build();
        let slot = Arc::new(OnceLock::new());
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::registry()
                .with(exporter_layer(provider.tracer("test"), slot.clone())),
        );
        let _ = slot.set(dispatch.downgrade());
        let unsampled = TraceParent {
            sampled: false,
            ..TraceParent::new_root()
        };
        let sampled = TraceParent::new_root();
        let handed_on = tracing::dispatcher::with_default(&dispatch, || {
            let root = trace::continuing(None, || tracing::debug_span!("keep root"));
            root.in_scope(|| {
                tracing::debug_span!("child").in_scope(|| {});
                tracing::debug_span!("db").in_scope(|| {});
            });
            let dropped = trace::continuing(None, || tracing::debug_span!("drop root"));
            let handed_on = dropped.in_scope(|| {
                tracing::debug_span!("below dropped").in_scope(|| {});
                TraceParent::outgoing(None)
            });
            // A client span outside any trace does not start one.
            tracing::debug_span!("db").in_scope(|| {});
            // A remote context sampled out: no span, the context is handed on.
            let remote = trace::continuing(Some(unsampled), || tracing::debug_span!("remote"));
            assert!(remote.is_disabled());
            let handed = remote.in_scope(|| TraceParent::outgoing(Some(unsampled)));
            assert_eq!(handed.trace_id, unsampled.trace_id);
            assert!(!handed.sampled);
            // A batch follows its sampled members only.
            let none = trace::batch(&[unsampled], || tracing::debug_span!("keep batch"));
            assert!(none.is_disabled());
            let batch = trace::batch(&[unsampled, sampled], || tracing::debug_span!("batch"));
            assert_eq!(
                TraceParent::of(&batch).map(|t| t.trace_id),
                Some(sampled.trace_id)
            );
            handed_on
        });
        assert!(
            !handed_on.sampled,
            "a sampled-out root hands on its decision"
        );
        assert_eq!(
            *asked.0.lock().unwrap(),
            ["keep root", "child", "db", "drop root", "batch"]
        );
    }

    #[test]
    fn check_names_the_bad_key() {
        let mut config = TelemetryConfig {
            trace_sample_ratio: Some(1.5),
            ..TelemetryConfig::default()
        };
        let e = config.check().unwrap_err().to_string();
        assert!(e.contains("telemetry.trace_sample_ratio"), "{e}");
        config.trace_sample_ratio = Some(0.1);
        config.otlp_endpoint = Some("127.0.0.1:4318".into());
        let e = config.check().unwrap_err().to_string();
        assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
        config.otlp_endpoint = Some("http://127.0.0.1:4318".into());
        config.check().unwrap();
    }
}
