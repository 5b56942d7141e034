//! dispatcher configuration: defaults below, then `SUBSTRATE_CONFIG`, then `SUBSTRATE_*`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use substrate_avro::RegistryConfig;
use substrate_db::DbConfig;
use substrate_kafka::delay_topics::Schedule;
use substrate_kafka::KafkaConfig;
use substrate_runtime::config::{require_listen, require_positive, ConfigError, Validate};
use substrate_runtime::telemetry::TelemetryConfig;
use substrate_runtime::LifecycleConfig;
use substrate_s3::S3Config;
use substrate_secrets::SecretsConfig;

pub const DEFAULTS: &str = r#"
dispatcher:
  listen: 127.0.0.1:8093
  group_id: dispatcher
  requests_topic: internal.dispatch.requests
  dead_letter_topic: internal.dispatch.dead-letter
  notification_topic: internal.dispatch.notifications
  avro_dir: avro
  max_in_flight: 4096
  endpoint_refresh_secs: 5
  secret_cache:
    ttl_secs: 300
    max_entries: 10000
  retry:
    topic_prefix: internal.dispatch.retry
    delays: [5s, 30s, 2m, 10m, 1h]
  http:
    timeout_ms: 15000
    connect_timeout_ms: 5000
    per_endpoint_concurrency: 64
    per_endpoint_queue: 256
    max_queue_wait_ms: 10000
    allow_private_targets: false
  archive:
    max_records: 1000
    max_bytes: 4194304
    max_wait_ms: 1000
kafka:
  bootstrap_servers: 127.0.0.1:9092
  client_id: dispatcher
  linger_ms: 1
schema_registry:
  url: http://127.0.0.1:8081/apis/ccompat/v7
database:
  url: postgres://postgres:postgres@127.0.0.1:54322/postgres
  pool_size: 4
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub dispatcher: DispatcherConfig,
    pub kafka: KafkaConfig,
    pub schema_registry: RegistryConfig,
    pub database: DbConfig,
    /// The object store of `s3` actions; without it they fail permanently.
    #[serde(default)]
    pub s3: Option<S3Config>,
    /// Keys that open the sealed secrets of HTTP actions (required).
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
}

substrate_runtime::service_config!(Config);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: String,
    pub group_id: String,
    /// Dispatch requests (the rule-evaluator's output, and where replays go).
    pub requests_topic: String,
    pub dead_letter_topic: String,
    /// Where `notification` actions go (the notification-writer's input).
    pub notification_topic: String,
    /// Schemas of the topics produced (notifications, Kafka forwards to Avro topics).
    pub avro_dir: PathBuf,
    /// Requests being delivered at once, across endpoints.
    pub max_in_flight: usize,
    /// How often the set of disabled endpoints is re-read (re-enabling takes effect).
    pub endpoint_refresh_secs: u64,
    pub secret_cache: SecretCacheConfig,
    pub retry: RetryConfig,
    pub http: HttpConfig,
    pub archive: ArchiveConfig,
}

/// Opened secrets of HTTP actions kept in memory, so a burst for one rule reads Postgres once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretCacheConfig {
    /// How long an opened secret is used before it is read again (a pruned secret stops
    /// working within this long).
    pub ttl_secs: u64,
    pub max_entries: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay topics are `<topic_prefix>.<delay>`.
    pub topic_prefix: String,
    /// One delay per retry (`250ms`, `5s`, `2m`, `1h`); attempts = delays + 1.
    pub delays: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Whole-request timeout of one delivery.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Deliveries in flight to one endpoint (scheme, host and port).
    pub per_endpoint_concurrency: usize,
    /// Requests one endpoint may always have in flight or waiting for a slot.
    pub per_endpoint_queue: usize,
    /// Beyond `per_endpoint_queue`, a request is held only if the endpoint, at the rate it has
    /// been answering, would reach it within this long; otherwise it is deferred to the first
    /// delay topic (not counted as an attempt). A hanging endpoint holds at most
    /// `per_endpoint_queue` of the `max_in_flight` slots; a fast one keeps its backlog.
    pub max_queue_wait_ms: u64,
    /// Allow loopback, private and link-local targets (the local stack; never in production).
    pub allow_private_targets: bool,
    /// Proxy for webhook, Slack and Discord deliveries (`http://host:port`). Unset: none, and
    /// `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` are ignored (an environment variable must not
    /// reroute signed deliveries). With a proxy, names are resolved by the proxy: it must enforce
    /// the egress rules the resolver would (literal IP targets are still checked here).
    #[serde(default)]
    pub proxy: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// An NDJSON object is written when it holds this many events…
    pub max_records: usize,
    /// …or this many bytes…
    pub max_bytes: usize,
    /// …or its first event waited this long.
    pub max_wait_ms: u64,
}

impl DispatcherConfig {
    pub fn endpoint_limits(&self) -> crate::sinks::http::EndpointLimits {
        crate::sinks::http::EndpointLimits {
            concurrency: self.http.per_endpoint_concurrency,
            queue: self.http.per_endpoint_queue,
            max_wait: Duration::from_millis(self.http.max_queue_wait_ms),
            max: (self.max_in_flight / 2).max(self.http.per_endpoint_queue),
        }
    }

    pub fn schedule(&self) -> Result<Schedule, String> {
        Schedule::parse(&self.retry.topic_prefix, &self.retry.delays)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.http.timeout_ms)
    }

    pub fn secret_cache(&self) -> crate::secrets::CacheLimits {
        crate::secrets::CacheLimits {
            ttl: Duration::from_secs(self.secret_cache.ttl_secs),
            max_entries: self.secret_cache.max_entries,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka
            .check()
            .map_err(|(key, message)| ConfigError::invalid(key, message))?;
        let c = &self.dispatcher;
        require_listen("dispatcher.listen", &c.listen)?;
        c.schedule()
            .map_err(|m| ConfigError::invalid("dispatcher.retry.delays", m))?;
        require_positive(&[
            ("dispatcher.max_in_flight", c.max_in_flight as u64),
            ("dispatcher.endpoint_refresh_secs", c.endpoint_refresh_secs),
            ("dispatcher.secret_cache.ttl_secs", c.secret_cache.ttl_secs),
            (
                "dispatcher.secret_cache.max_entries",
                c.secret_cache.max_entries as u64,
            ),
            ("dispatcher.http.timeout_ms", c.http.timeout_ms),
            (
                "dispatcher.http.connect_timeout_ms",
                c.http.connect_timeout_ms,
            ),
            (
                "dispatcher.http.per_endpoint_concurrency",
                c.http.per_endpoint_concurrency as u64,
            ),
            (
                "dispatcher.http.per_endpoint_queue",
                c.http.per_endpoint_queue as u64,
            ),
            (
                "dispatcher.http.max_queue_wait_ms",
                c.http.max_queue_wait_ms,
            ),
            (
                "dispatcher.archive.max_records",
                c.archive.max_records as u64,
            ),
            ("dispatcher.archive.max_bytes", c.archive.max_bytes as u64),
            ("dispatcher.archive.max_wait_ms", c.archive.max_wait_ms),
        ])?;
        if c.http.per_endpoint_queue < c.http.per_endpoint_concurrency
            || c.http.per_endpoint_queue >= c.max_in_flight
        {
            return Err(ConfigError::invalid(
                "dispatcher.http.per_endpoint_queue",
                "must be at least per_endpoint_concurrency and below max_in_flight",
            ));
        }
        self.secrets
            .keyring("secrets")
            .map_err(|e| ConfigError::invalid(e.key, e.message))?;
        if let Some(s3) = &self.s3 {
            s3.check("s3")
                .map_err(|(key, m)| ConfigError::invalid(key, m))?;
        }
        Ok(())
    }
}

impl Config {
    pub fn load() -> Result<Self, ConfigError> {
        substrate_runtime::load_config(DEFAULTS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = "secrets:\n  keys: [\"k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"]\n";

    #[test]
    fn defaults_are_valid_and_errors_name_the_key() {
        let config: Config = substrate_runtime::config::load_config_from(DEFAULTS, KEYS).unwrap();
        assert_eq!(config.dispatcher.schedule().unwrap().max_attempts(), 6);
        let err = substrate_runtime::config::load_config_from::<Config>(
            DEFAULTS,
            &format!("{KEYS}dispatcher:\n  retry:\n    topic_prefix: p\n    delays: [5x]\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("dispatcher.retry.delays"), "{err}");
    }

    #[test]
    fn the_secrets_keys_are_required_and_checked() {
        let err = substrate_runtime::config::load_config_from::<Config>(DEFAULTS, "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`secrets.keys`: no key configured"), "{err}");
        let err = substrate_runtime::config::load_config_from::<Config>(
            DEFAULTS,
            &format!("{KEYS}  active_key_id: k2\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`secrets.active_key_id`"), "{err}");
    }
}
