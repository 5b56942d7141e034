//! The object store: an aws-sdk-s3 client built from the platform's configuration. Works with
//! AWS S3 and S3-compatible servers (SeaweedFS locally, MinIO in compose) through a custom
//! endpoint and path-style addressing.

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
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_path_style() -> bool {
    true
}

impl S3Config {
    /// Checks the settings a client cannot work without; the error names the key.
    pub fn check(&self, prefix: &str) -> Result<(), (String, &'static str)> {
        if self.access_key_id.is_empty() {
            return Err((format!("{prefix}.access_key_id"), "must not be empty"));
        }
        if self.secret_access_key.is_empty() {
            return Err((format!("{prefix}.secret_access_key"), "must not be empty"));
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
