//! notification-writer configuration: defaults embedded below, overridden by the file named by
//! `SUBSTRATE_CONFIG` and `SUBSTRATE_*` environment variables. `topics` maps each consumed topic
//! to the notification it becomes; entries from a config file are added to the defaults.

use std::collections::BTreeMap;

use serde::Deserialize;
use substrate_avro::RegistryConfig;
use substrate_db::DbConfig;
use substrate_kafka::KafkaConfig;
use substrate_runtime::config::{require_listen, ConfigError, Validate};
use substrate_runtime::telemetry::TelemetryConfig;
use substrate_runtime::LifecycleConfig;

use crate::mapping::Mapping;

pub const DEFAULTS: &str = r#"
notification_writer:
  listen: 127.0.0.1:8091
  group_id: notification-writer
  batch_max_rows: 1000
  batch_max_ms: 50
  dead_letter_topic: internal.notification.dead-letter
  topics:
    public.identity.login.events:
      event_type: identity.login
      visibility: direct
      recipient_field: user_id
      sender_field: user_id
    public.user.message.events:
      event_type: user.message
      visibility_field: visibility
      recipient_field: recipient_id
      sender_field: sender_id
    internal.dispatch.notifications:
      event_type_field: event_type
      visibility_field: visibility
      recipient_field: recipient_id
      payload_field: payload
    # Media saga results: a direct notification to the file's owner (payload = the record,
    # e.g. upload_url / download_url / reason).
    public.media.upload.signed:
      event_type: media.upload_ready
      visibility: direct
      recipient_field: user_id
    public.media.upload.rejected:
      event_type: media.upload_rejected
      visibility: direct
      recipient_field: user_id
    public.media.upload.confirmed:
      event_type: media.upload_confirmed
      visibility: direct
      recipient_field: user_id
    internal.media.upload.dead-letter:
      event_type: media.upload_failed
      visibility: direct
      recipient_field: user_id
    public.media.expired.events:
      event_type: media.upload_expired
      visibility: direct
      recipient_field: user_id
    public.media.download.signed:
      event_type: media.download_ready
      visibility: direct
      recipient_field: user_id
    public.media.download.rejected:
      event_type: media.download_rejected
      visibility: direct
      recipient_field: user_id
    public.media.delete.events:
      event_type: media.file_deleted
      visibility: direct
      recipient_field: user_id
    public.media.delete.rejected:
      event_type: media.delete_rejected
      visibility: direct
      recipient_field: user_id
kafka:
  bootstrap_servers: 127.0.0.1:9092
  client_id: notification-writer
schema_registry:
  url: http://127.0.0.1:8081/apis/ccompat/v7
database:
  url: postgres://postgres:postgres@127.0.0.1:54322/postgres
  pool_size: 4
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub notification_writer: WriterConfig,
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
pub struct WriterConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: String,
    pub group_id: String,
    /// A batch is written as soon as no further record is waiting, or when it holds this many
    /// rows…
    pub batch_max_rows: usize,
    /// …or when its first record is this old.
    pub batch_max_ms: u64,
    /// Where records that cannot be decoded or mapped go.
    pub dead_letter_topic: String,
    pub topics: BTreeMap<String, Mapping>,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.notification_writer;
        require_listen("notification_writer.listen", &w.listen)?;
        if w.batch_max_rows == 0 {
            return Err(ConfigError::invalid(
                "notification_writer.batch_max_rows",
                "must be > 0",
            ));
        }
        if !w.topics.values().any(|m| m.enabled) {
            return Err(ConfigError::invalid(
                "notification_writer.topics",
                "map at least one topic",
            ));
        }
        for (topic, mapping) in &w.topics {
            mapping.validate().map_err(|m| {
                ConfigError::invalid(format!("notification_writer.topics.{topic}"), m)
            })?;
        }
        Ok(())
    }
}

impl Config {
    pub fn load() -> Result<Self, ConfigError> {
        substrate_runtime::load_config(DEFAULTS)
    }
}
