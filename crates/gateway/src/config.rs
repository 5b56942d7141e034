//! Gateway configuration: defaults embedded below, overridden by `SUBSTRATE_CONFIG` and
//! `SUBSTRATE_*` environment variables (see the README's configuration table).

use std::path::PathBuf;

use serde::Deserialize;
use substrate_avro::RegistryConfig;
use substrate_kafka::KafkaConfig;
use substrate_runtime::config::{require_listen, ConfigError, Validate};
use substrate_runtime::http::HttpLimits;
use substrate_runtime::telemetry::TelemetryConfig;
use substrate_runtime::LifecycleConfig;

pub const DEFAULTS: &str = r#"
gateway:
  listen: 127.0.0.1:8080
  ops_listen: 127.0.0.1:8090
  routes_file: routes.yaml
  avro_dir: avro
  max_event_bytes: 65536
  max_batch_bytes: 1048576
  max_batch_events: 500
  ce_source: /event-substrate/gateway
  retry_after_secs: 5
  routes_poll_secs: 5
  idempotency_retention_secs: 86400
  cors:
    allowed_origins: []
    allow_credentials: false
    max_age_secs: 600
api_keys:
  refresh_secs: 2
notifications:
  poll_ms: 250
  batch_rows: 1000
  feed_buffer: 1024
  client_buffer: 512
  heartbeat_secs: 15
  page_rows: 500
  ticket_ttl_secs: 60
media:
  topic_prefix: ""
  bucket: media-uploads
  max_file_bytes: 104857600
  starting_credits: 10
  allowed_types:
    - image/jpeg
    - image/png
    - image/gif
    - image/webp
    - video/mp4
    - video/webm
    - video/mpeg
    - audio/mpeg
    - audio/wav
    - audio/ogg
    - video/ogg
database:
  url: postgres://postgres:postgres@127.0.0.1:54322/postgres
  pool_size: 4
kafka:
  bootstrap_servers: 127.0.0.1:9092
  client_id: gateway
  message_timeout_ms: 10000
  # 1 ms: low latency at moderate rates, and batches under load (docs/benchmarks.md).
  linger_ms: 1
schema_registry:
  url: http://127.0.0.1:8081/apis/ccompat/v7
auth:
  leeway_secs: 30
  jwks_refresh_min_secs: 30
  jwks_cache_secs: 600
webhooks:
  login_secret_header: x-webhook-secret
  login_topic: public.identity.login.events
  login_event_type: identity.login
"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub kafka: KafkaConfig,
    pub schema_registry: RegistryConfig,
    pub auth: AuthConfig,
    pub webhooks: WebhooksConfig,
    pub media: MediaConfig,
    pub api_keys: crate::keys::ApiKeysConfig,
    /// The read API of notifications (stream, pages, read marks).
    pub notifications: crate::feed::NotificationsConfig,
    /// Balances and files read by `GET /api/v1/credits` and `GET /api/v1/media/files`.
    pub database: substrate_db::DbConfig,
    /// The object store of media uploads; without it upload-complete answers 503.
    #[serde(default)]
    pub s3: Option<substrate_s3::S3Config>,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
}

substrate_runtime::service_config!(Config);

/// The media intent endpoints (`/api/v1/media/*-intent`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    /// Prepended to the media topics' names (`substrate_kafka::media`); the media saga must be
    /// configured with the same prefix.
    pub topic_prefix: String,
    /// The bucket the media saga signs uploads for (the upload-complete check HEADs it).
    pub bucket: String,
    /// Largest upload a client may declare.
    pub max_file_bytes: u64,
    /// The balance of a user before their first upload (the media saga grants it then).
    pub starting_credits: i32,
    /// MIME types an upload may declare (JPEG, PNG, GIF, WebP, MP4, WebM, MPEG, WAV, OGG).
    pub allowed_types: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The public listener: the API and `/healthz`.
    pub listen: String,
    /// The operational listener: `/healthz`, `/readyz` and `/metrics` (keep it private).
    pub ops_listen: String,
    pub routes_file: PathBuf,
    pub avro_dir: PathBuf,
    pub max_event_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_events: usize,
    pub ce_source: String,
    pub retry_after_secs: u64,
    /// Fallback re-read of routes.yaml in case a file-system event was missed; 0 turns it off.
    pub routes_poll_secs: u64,
    /// How long an `Idempotency-Key` answer is replayed.
    pub idempotency_retention_secs: u64,
    /// Browser apps allowed to call the API from other origins.
    pub cors: CorsConfig,
    /// Timeouts and the cap on requests in progress (load shedding).
    #[serde(default)]
    pub http: HttpLimits,
    /// The web app served on the public listener (off unless `root` is set).
    #[serde(default)]
    pub web: crate::web::WebConfig,
}

/// Cross-origin access for browser apps. Empty `allowed_origins`: no CORS headers at all
/// (same-origin only). `*` allows every origin, and then never with credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins such as `https://app.example.com`, or `*`.
    pub allowed_origins: Vec<String>,
    /// Lets browsers send cookies / HTTP auth (`Access-Control-Allow-Credentials: true`).
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    pub max_age_secs: u64,
}

impl CorsConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let key = "gateway.cors.allowed_origins";
        let wildcard = self.allowed_origins.iter().any(|o| o == "*");
        if wildcard && self.allowed_origins.len() > 1 {
            return Err(ConfigError::invalid(
                key,
                "`*` cannot be combined with other origins",
            ));
        }
        if wildcard && self.allow_credentials {
            return Err(ConfigError::invalid(
                "gateway.cors.allow_credentials",
                "credentials are never allowed with the wildcard origin `*`; list the origins",
            ));
        }
        for origin in self.allowed_origins.iter().filter(|o| *o != "*") {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin.split("://").nth(1).is_some_and(|rest| {
                    !rest.is_empty() && !rest.contains('/') && !rest.contains('*')
                })
                && axum::http::HeaderValue::from_str(origin).is_ok();
            if !ok {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{origin}` is not an origin (scheme://host[:port], no path)"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 shared secret (Supabase's legacy JWT secret).
    pub jwt_secret: Option<String>,
    /// JWKS URL for ES256/RS256 keys, e.g. `https://<project>.supabase.co/auth/v1/.well-known/jwks.json`.
    pub jwks_url: Option<String>,
    /// Required `iss` when set.
    pub issuer: Option<String>,
    /// Accepted `aud` values, comma-separated (Supabase: `authenticated`). Unset: not checked.
    pub audience: Option<String>,
    /// Clock skew allowed for `exp`/`nbf`, at most 60 s.
    pub leeway_secs: u64,
    /// An unknown `kid` refreshes the JWKS at most once per this interval.
    pub jwks_refresh_min_secs: u64,
    /// Keys are re-fetched after this age.
    pub jwks_cache_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Shared secret of `POST /webhooks/login`; the endpoint answers 503 while unset.
    pub login_secret: Option<String>,
    pub login_secret_header: String,
    pub login_topic: String,
    pub login_event_type: String,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka
            .check()
            .map_err(|(key, message)| ConfigError::invalid(key, message))?;
        if self.media.max_file_bytes == 0 {
            return Err(ConfigError::invalid("media.max_file_bytes", "must be > 0"));
        }
        if let Some(s3) = &self.s3 {
            s3.check("s3")
                .map_err(|(key, m)| ConfigError::invalid(key, m))?;
        }
        if self.media.allowed_types.is_empty() {
            return Err(ConfigError::invalid(
                "media.allowed_types",
                "list at least one MIME type",
            ));
        }
        require_listen("gateway.listen", &self.gateway.listen)?;
        require_listen("gateway.ops_listen", &self.gateway.ops_listen)?;
        if self.gateway.ops_listen == self.gateway.listen && !self.gateway.listen.ends_with(":0") {
            return Err(ConfigError::invalid(
                "gateway.ops_listen",
                "must differ from gateway.listen (/readyz and /metrics stay off the public listener)",
            ));
        }
        self.gateway.cors.check()?;
        self.gateway.web.check()?;
        if self.gateway.idempotency_retention_secs == 0 {
            return Err(ConfigError::invalid(
                "gateway.idempotency_retention_secs",
                "must be > 0",
            ));
        }
        if self
            .api_keys
            .pepper
            .as_deref()
            .is_some_and(|p| p.len() < 32)
        {
            return Err(ConfigError::invalid(
                "api_keys.pepper",
                "must be at least 32 characters",
            ));
        }
        let n = &self.notifications;
        substrate_runtime::config::require_positive(&[
            ("notifications.poll_ms", n.poll_ms),
            ("notifications.batch_rows", n.batch_rows.max(0) as u64),
            ("notifications.feed_buffer", n.feed_buffer as u64),
            ("notifications.client_buffer", n.client_buffer as u64),
            ("notifications.heartbeat_secs", n.heartbeat_secs),
            ("notifications.page_rows", n.page_rows.max(0) as u64),
            ("notifications.ticket_ttl_secs", n.ticket_ttl_secs),
        ])?;
        if n.ticket_secret.as_deref().is_some_and(|s| s.len() < 32) {
            return Err(ConfigError::invalid(
                "notifications.ticket_secret",
                "must be at least 32 characters",
            ));
        }
        if self.api_keys.refresh_secs == 0 {
            return Err(ConfigError::invalid("api_keys.refresh_secs", "must be > 0"));
        }
        self.gateway.http.check("gateway.http")?;
        if self.gateway.max_event_bytes == 0
            || self.gateway.max_event_bytes > self.gateway.max_batch_bytes
        {
            return Err(ConfigError::invalid(
                "gateway.max_event_bytes",
                "must be > 0 and <= gateway.max_batch_bytes",
            ));
        }
        if self.gateway.max_batch_events == 0 {
            return Err(ConfigError::invalid(
                "gateway.max_batch_events",
                "must be > 0",
            ));
        }
        if self.auth.leeway_secs > 60 {
            return Err(ConfigError::invalid(
                "auth.leeway_secs",
                "must be at most 60",
            ));
        }
        if self
            .auth
            .jwt_secret
            .as_deref()
            .is_some_and(|s| s.len() < 32)
        {
            return Err(ConfigError::invalid(
                "auth.jwt_secret",
                "must be at least 32 characters",
            ));
        }
        if self.auth.jwt_secret.is_none() && self.auth.jwks_url.is_none() {
            return Err(ConfigError::invalid(
                "auth.jwt_secret",
                "set auth.jwt_secret (HS256) and/or auth.jwks_url (ES256/RS256)",
            ));
        }
        if self
            .webhooks
            .login_secret
            .as_deref()
            .is_some_and(|s| s.len() < 16)
        {
            return Err(ConfigError::invalid(
                "webhooks.login_secret",
                "must be at least 16 characters",
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
