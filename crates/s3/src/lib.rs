//! The object store: an aws-sdk-s3 client built from the platform's configuration. Works with
//! AWS S3 and S3-compatible servers (SeaweedFS locally, MinIO in compose) through a custom
//! endpoint and path-style addressing.

use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use serde::Deserialize;

pub use aws_sdk_s3::Client;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http(s)://host:port` of an S3-compatible server; empty for AWS's regional endpoint.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `bucket` in the path rather than the host name (what most S3-compatible servers need).
    #[serde(default = "default_path_style")]
    pub path_style: bool,
    /// Longest a TCP/TLS connection to the server may take to open.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest one attempt may wait for the server's first response bytes.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Longest one operation may take in all, its retries included.
    #[serde(default = "default_operation_timeout_ms")]
    pub operation_timeout_ms: u64,
}

fn default_connect_timeout_ms() -> u64 {
    3_000
}

fn default_read_timeout_ms() -> u64 {
    10_000
}

fn default_operation_timeout_ms() -> u64 {
    30_000
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_path_style() -> bool {
    true
}

impl S3Config {
    /// Static keys for `endpoint` (path style), every timeout at its default.
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        Self {
            endpoint: endpoint.into(),
            region: region.into(),
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            path_style: true,
            connect_timeout_ms: default_connect_timeout_ms(),
            read_timeout_ms: default_read_timeout_ms(),
            operation_timeout_ms: default_operation_timeout_ms(),
        }
    }

    /// Checks the settings a client cannot work without; the error names the key.
    pub fn check(&self, prefix: &str) -> Result<(), (String, &'static str)> {
        if self.access_key_id.is_empty() {
            return Err((format!("{prefix}.access_key_id"), "must not be empty"));
        }
        if self.secret_access_key.is_empty() {
            return Err((format!("{prefix}.secret_access_key"), "must not be empty"));
        }
        for (key, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("read_timeout_ms", self.read_timeout_ms),
            ("operation_timeout_ms", self.operation_timeout_ms),
        ] {
            if value == 0 {
                return Err((format!("{prefix}.{key}"), "must be > 0"));
            }
        }
        let scheme_ok = ["http://", "https://"]
            .iter()
            .any(|scheme| self.endpoint.starts_with(scheme));
        if !self.endpoint.is_empty() && !scheme_ok {
            return Err((format!("{prefix}.endpoint"), "must be an http(s) URL"));
        }
        Ok(())
    }

    /// A client with static credentials.
    pub fn client(&self) -> Client {
        let credentials = Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "substrate-config",
        );
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .credentials_provider(credentials)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(self.connect_timeout_ms))
                    .read_timeout(Duration::from_millis(self.read_timeout_ms))
                    .operation_timeout(Duration::from_millis(self.operation_timeout_ms))
                    .build(),
            )
            .force_path_style(self.path_style);
        if !self.endpoint.is_empty() {
            builder = builder.endpoint_url(&self.endpoint);
        }
        Client::from_conf(builder.build())
    }
}

/// The message of an SDK error including its service code (`NoSuchBucket`, `AccessDenied`),
/// which `Display` of the SDK error leaves out.
pub fn error_message<E, R>(error: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match error.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("S3 error"),
            service.message().unwrap_or("no message")
        ),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(inner) = source {
                text.push_str(": ");
                text.push_str(&inner.to_string());
                source = inner.source();
            }
            text
        }
    }
}

/// What a HEAD request says about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    pub size: i64,
    pub content_type: Option<String>,
}

/// HEADs `bucket/key`: `None` when there is no such object.
pub async fn head(client: &Client, bucket: &str, key: &str) -> Result<Option<ObjectHead>, String> {
    match client.head_object().bucket(bucket).key(key).send().await {
        Ok(out) => Ok(Some(ObjectHead {
            size: out.content_length().unwrap_or(0),
            content_type: out.content_type().map(str::to_string),
        })),
        Err(e) => {
            let not_found = e.as_service_error().is_some_and(|s| s.is_not_found())
                || e.raw_response().is_some_and(|r| r.status().as_u16() == 404);
            if not_found {
                Ok(None)
            } else {
                Err(error_message(&e))
            }
        }
    }
}
