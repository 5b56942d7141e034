//! rule-evaluator configuration: defaults below, then `SUBSTRATE_CONFIG`, then `SUBSTRATE_*`.

use std::path::PathBuf;

use serde::Deserialize;
use substrate_avro::RegistryConfig;
use substrate_db::DbConfig;
use substrate_kafka::KafkaConfig;
use substrate_runtime::config::{require_listen, ConfigError, Validate};
use substrate_runtime::telemetry::TelemetryConfig;
use substrate_runtime::LifecycleConfig;

pub const DEFAULTS: &str = r#"
rule_evaluator:
  listen: 127.0.0.1:8092
  group_id: rule-evaluator
  topics:
    - public.identity.login.events
    - public.user.message.events
    - public.commerce.purchase.events
  dispatch_topic: internal.dispatch.requests
  unified_topic: internal.platform.unified.events
  avro_dir: avro
  resync_secs: 30
kafka:
  bootstrap_servers: 127.0.0.1:9092
  client_id: rule-evaluator
  # 5 ms: every consumed event also goes to the unified stream; fewer, larger produce requests
  # keep the broker's CPU for the ingest path (docs/benchmarks.md, notification stream).
  linger_ms: 5
schema_registry:
  url: http://127.0.0.1:8081/apis/ccompat/v7
database:
  url: postgres://postgres:postgres@127.0.0.1:54322/postgres
  pool_size: 2
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub rule_evaluator: EvaluatorConfig,
    pub kafka: KafkaConfig,
    pub schema_registry: RegistryConfig,
    pub database: DbConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
}

substrate_runtime::service_config!(Config);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluatorConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: String,
    pub group_id: String,
    /// Event topics whose records rules are evaluated on.
    pub topics: Vec<String>,
    /// Where action requests go (the dispatcher's input).
    pub dispatch_topic: String,
    /// The unified stream of every consumed event.
    pub unified_topic: String,
    /// Schemas of the topics produced (dispatch and unified).
    pub avro_dir: PathBuf,
    /// Full reload of the rules even without a notification.
    pub resync_secs: u64,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka
            .check()
            .map_err(|(key, message)| ConfigError::invalid(key, message))?;
        let c = &self.rule_evaluator;
        require_listen("rule_evaluator.listen", &c.listen)?;
        if c.topics.is_empty() {
            return Err(ConfigError::invalid(
                "rule_evaluator.topics",
                "list at least one topic",
            ));
        }
        if c.resync_secs == 0 {
            return Err(ConfigError::invalid(
                "rule_evaluator.resync_secs",
                "must be > 0",
            ));
        }
        Ok(())
    }
}

impl Config {
    pub fn load() -> Result<Self, ConfigError> {
        substrate_runtime::load_config(DEFAULTS)
    }
}
