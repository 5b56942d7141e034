//! media-saga configuration: defaults below, then `SUBSTRATE_CONFIG`, then `SUBSTRATE_*`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use substrate_avro::RegistryConfig;
use substrate_db::DbConfig;
use substrate_kafka::KafkaConfig;
use substrate_runtime::config::{require_listen, require_positive, ConfigError, Validate};
use substrate_runtime::http::HttpLimits;
use substrate_runtime::telemetry::TelemetryConfig;
use substrate_runtime::LifecycleConfig;
use substrate_s3::S3Config;

pub const DEFAULTS: &str = r#"
media_saga:
  listen: 127.0.0.1:8094
  group_id: media-saga
  topic_prefix: ""
  avro_dir: avro
  bucket: media-uploads
  upload_prefix: uploads
  files_prefix: files
  public_s3_endpoint: ""
  starting_credits: 10
  upload_url_ttl_secs: 900
  download_url_ttl_secs: 900
  move_timeout_ms: 30000
  max_move_retries: 3
  deadline_poll_ms: 500
  max_in_flight: 1024
  move_concurrency: 64
  uploads_lifecycle_days: 1
kafka:
  bootstrap_servers: 127.0.0.1:9092
  client_id: media-saga
  linger_ms: 1
schema_registry:
  url: http://127.0.0.1:8081/apis/ccompat/v7
database:
  url: postgres://postgres:postgres@127.0.0.1:54322/postgres
  pool_size: 8
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub media_saga: SagaConfig,
    pub kafka: KafkaConfig,
    pub schema_registry: RegistryConfig,
    pub database: DbConfig,
    /// The object store holding uploads and files.
    pub s3: S3Config,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
}

substrate_runtime::service_config!(Config);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SagaConfig {
    /// Address of the S3 event webhooks and `/healthz`, `/readyz`, `/metrics`.
    pub listen: String,
    /// Timeouts and the cap on requests in progress of that listener.
    #[serde(default)]
    pub http: HttpLimits,
    pub group_id: String,
    /// Prepended to every media topic name (empty in production; tests isolate themselves).
    pub topic_prefix: String,
    /// Schemas of the media topics.
    pub avro_dir: PathBuf,
    /// The bucket of uploads (`<upload_prefix>/<user>/<request>/<name>`) and files
    /// (`<files_prefix>/<user>/<request>/<name>`).
    pub bucket: String,
    pub upload_prefix: String,
    pub files_prefix: String,
    /// The S3 endpoint clients reach, used in presigned URLs (`s3.endpoint` when empty).
    pub public_s3_endpoint: String,
    /// Credits a user has before their first upload (keep equal to the gateway's
    /// `media.starting_credits`, which it reports before the first upload).
    pub starting_credits: i32,
    /// How long a presigned upload URL is valid; the upload expires (refund) after it.
    pub upload_url_ttl_secs: u64,
    pub download_url_ttl_secs: u64,
    /// How long the move saga waits for the permanent object after the upload arrived.
    pub move_timeout_ms: u64,
    /// Moves retried after a timeout before the upload is dead-lettered.
    pub max_move_retries: i32,
    /// How often due deadlines are looked for.
    pub deadline_poll_ms: u64,
    /// Records processed at once.
    pub max_in_flight: usize,
    /// Asynchronous moves (copy + delete) running at once.
    pub move_concurrency: usize,
    /// Objects under the upload prefix expire after this many days where the S3 server supports
    /// lifecycle rules (a backstop for uploads nobody completed); 0 leaves the bucket alone.
    pub uploads_lifecycle_days: i32,
    /// Bearer token of `POST /webhooks/media-upload` and `/webhooks/file-ready` (S3 event
    /// notifications); they answer 503 while unset.
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

impl SagaConfig {
    pub fn upload_ttl(&self) -> Duration {
        Duration::from_secs(self.upload_url_ttl_secs)
    }

    pub fn download_ttl(&self) -> Duration {
        Duration::from_secs(self.download_url_ttl_secs)
    }

    pub fn move_timeout(&self) -> Duration {
        Duration::from_millis(self.move_timeout_ms)
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka
            .check()
            .map_err(|(key, message)| ConfigError::invalid(key, message))?;
        let c = &self.media_saga;
        require_listen("media_saga.listen", &c.listen)?;
        c.http.check("media_saga.http")?;
        require_positive(&[
            ("media_saga.upload_url_ttl_secs", c.upload_url_ttl_secs),
            ("media_saga.download_url_ttl_secs", c.download_url_ttl_secs),
            ("media_saga.move_timeout_ms", c.move_timeout_ms),
            ("media_saga.deadline_poll_ms", c.deadline_poll_ms),
            ("media_saga.max_in_flight", c.max_in_flight as u64),
            ("media_saga.move_concurrency", c.move_concurrency as u64),
        ])?;
        // SigV4 presigned URLs are valid for at most a week.
        for (key, value) in [
            ("media_saga.upload_url_ttl_secs", c.upload_url_ttl_secs),
            ("media_saga.download_url_ttl_secs", c.download_url_ttl_secs),
        ] {
            if value > 604_800 {
                return Err(ConfigError::invalid(key, "must be at most 604800 (7 days)"));
            }
        }
        if c.max_move_retries < 0 {
            return Err(ConfigError::invalid(
                "media_saga.max_move_retries",
                "must be >= 0",
            ));
        }
        if c.starting_credits < 0 {
            return Err(ConfigError::invalid(
                "media_saga.starting_credits",
                "must be >= 0",
            ));
        }
        if c.uploads_lifecycle_days < 0 {
            return Err(ConfigError::invalid(
                "media_saga.uploads_lifecycle_days",
                "must be >= 0",
            ));
        }
        if c.bucket.is_empty() {
            return Err(ConfigError::invalid(
                "media_saga.bucket",
                "must not be empty",
            ));
        }
        for (key, prefix) in [
            ("media_saga.upload_prefix", &c.upload_prefix),
            ("media_saga.files_prefix", &c.files_prefix),
        ] {
            if prefix.is_empty() || prefix.contains('/') {
                return Err(ConfigError::invalid(
                    key,
                    "must be one non-empty path segment",
                ));
            }
        }
        if c.upload_prefix == c.files_prefix {
            return Err(ConfigError::invalid(
                "media_saga.files_prefix",
                "must differ from media_saga.upload_prefix",
            ));
        }
        if !c.public_s3_endpoint.is_empty()
            && !["http://", "https://"]
                .iter()
                .any(|s| c.public_s3_endpoint.starts_with(s))
        {
            return Err(ConfigError::invalid(
                "media_saga.public_s3_endpoint",
                "must be an http(s) URL",
            ));
        }
        if c.webhook_secret.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::invalid(
                "media_saga.webhook_secret",
                "must not be empty when set",
            ));
        }
        self.s3
            .check("s3")
            .map_err(|(key, m)| ConfigError::invalid(key, m))?;
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

    const S3: &str =
        "s3:\n  endpoint: http://127.0.0.1:8333\n  access_key_id: a\n  secret_access_key: b\n";

    #[test]
    fn defaults_are_valid_and_errors_name_the_key() {
        let config: Config = substrate_runtime::config::load_config_from(DEFAULTS, S3).unwrap();
        assert_eq!(config.media_saga.max_move_retries, 3);
        assert_eq!(config.media_saga.upload_ttl(), Duration::from_secs(900));
        let err = substrate_runtime::config::load_config_from::<Config>(
            DEFAULTS,
            &format!("{S3}media_saga:\n  upload_prefix: a/b\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("media_saga.upload_prefix"), "{err}");
        let err = substrate_runtime::config::load_config_from::<Config>(DEFAULTS, "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("s3"), "{err}");
    }
}
