//! notification-writer configuration: defaults embedded below, overridden by the file named by
//! `SUBSTRATE_CONFIG` and `SUBSTRATE_*` environment variables. `topics` maps each consumed topic
//! to the notification it becomes; entries from a config file are added to the defaults. The media
//! results' mappings are generated from the media topics' shared names.

use std::collections::BTreeMap;

use serde::Deserialize;
use substrate_avro::RegistryConfig;
use substrate_db::DbConfig;
use substrate_kafka::media::Topic as MediaTopic;
use substrate_kafka::KafkaConfig;
use substrate_runtime::config::{require_listen, ConfigError, Validate};
use substrate_runtime::telemetry::TelemetryConfig;
use substrate_runtime::LifecycleConfig;

use crate::mapping::Mapping;

/// The defaults up to the topic mappings of media results ([`MEDIA_NOTIFICATIONS`]).
const DEFAULTS_HEAD: &str = r#"
notification_writer:
  listen: 127.0.0.1:8091
  group_id: notification-writer
  batch_max_rows: 1000
  batch_max_ms: 50
  batch_linger_ms: 3
  concurrent_writes: 2
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
"#;

/// The rest of the defaults, after the topic mappings.
const DEFAULTS_TAIL: &str = r#"
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
    /// At most one batch write starts per this many ms (0: whenever no write is in progress
    /// and nothing more is waiting). A record after a quiet spell is written at once; under
    /// load the rows arriving meanwhile share one transaction: fewer commits and feed reads
    /// (PostgreSQL's CPU at 1,000 msg/s fell from ~42 % to ~10 % of a core with 3 ms).
    #[serde(default)]
    pub batch_linger_ms: u64,
    /// Full batches written at once, each on its own connection (keep `database.pool_size`
    /// above it); offsets are still stored in read order.
    #[serde(default = "default_concurrent_writes")]
    pub concurrent_writes: usize,
    /// Where records that cannot be decoded or mapped go.
    pub dead_letter_topic: String,
    pub topics: BTreeMap<String, Mapping>,
}

fn default_concurrent_writes() -> usize {
    2
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka
            .check()
            .map_err(|(key, message)| ConfigError::invalid(key, message))?;
        let w = &self.notification_writer;
        require_listen("notification_writer.listen", &w.listen)?;
        if w.batch_max_rows == 0 {
            return Err(ConfigError::invalid(
                "notification_writer.batch_max_rows",
                "must be > 0",
            ));
        }
        if w.concurrent_writes == 0 || w.concurrent_writes > 16 {
            return Err(ConfigError::invalid(
                "notification_writer.concurrent_writes",
                "must be 1 to 16",
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

/// The notification each media saga result becomes: a direct one to the file's owner
/// (`user_id`), the record as its payload (e.g. `upload_url`, `download_url`, `reason`).
pub const MEDIA_NOTIFICATIONS: [(MediaTopic, &str); 9] = [
    (MediaTopic::UploadSigned, "media.upload_ready"),
    (MediaTopic::UploadRejected, "media.upload_rejected"),
    (MediaTopic::UploadConfirmed, "media.upload_confirmed"),
    (MediaTopic::UploadDeadLetter, "media.upload_failed"),
    (MediaTopic::Expired, "media.upload_expired"),
    (MediaTopic::DownloadSigned, "media.download_ready"),
    (MediaTopic::DownloadRejected, "media.download_rejected"),
    (MediaTopic::Deleted, "media.file_deleted"),
    (MediaTopic::DeleteRejected, "media.delete_rejected"),
];

/// The default configuration (YAML), media mappings included.
pub fn defaults() -> String {
    let mut yaml = DEFAULTS_HEAD.trim_end().to_string();
    for (topic, event_type) in MEDIA_NOTIFICATIONS {
        yaml.push_str(&format!(
            "\n    {}:\n      event_type: {event_type}\n      visibility: direct\n      recipient_field: user_id",
            topic.name()
        ));
    }
    yaml.push_str(DEFAULTS_TAIL);
    yaml
}

impl Config {
    pub fn load() -> Result<Self, ConfigError> {
        substrate_runtime::load_config(&defaults())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_map_every_media_result_to_its_owner() {
        let config: Config = substrate_runtime::config::load_config_from(&defaults(), "{}")
            .expect("the defaults load");
        let topics = &config.notification_writer.topics;
        for (topic, event_type) in MEDIA_NOTIFICATIONS {
            let mapping = &topics[topic.name()];
            assert_eq!(mapping.event_type, event_type);
            assert_eq!(mapping.recipient_field.as_deref(), Some("user_id"));
        }
        assert!(topics.contains_key("public.user.message.events"));
    }
}
