//! The object store: an aws-sdk-s3 client built from the platform's configuration. Works with
//! AWS S3 and S3-compatible servers (SeaweedFS locally, MinIO in compose) through a custom
//! endpoint and path-style addressing. Calls made through [`span`] and [`carry`] are client
//! spans that hand their context on to the server as `traceparent`.

use std::time::Duration;

use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use serde::Deserialize;

use aws_sdk_s3::client::customize::CustomizableOperation;
pub use aws_sdk_s3::Client;
use substrate_runtime::trace::{self, TraceParent, TRACEPARENT};
use tracing::field::Empty;
use tracing::{Instrument, Span};

/// A client span for one S3 call (`S3.PutObject`) with the storage attributes (OpenTelemetry's
/// AWS SDK conventions); disabled, and free, without tracing.
pub fn span(operation: &'static str, bucket: &str, key: &str) -> Span {
    if !trace::enabled() {
        return Span::none();
    }
    tracing::debug_span!(
        "s3",
        otel.name = format!("S3.{operation}"),
        otel.kind = "client",
        otel.status_code = Empty,
        rpc.system = "aws-api",
        rpc.service = "S3",
        rpc.method = operation,
        aws.s3.bucket = bucket,
        aws.s3.key = key,
        error.type = Empty,
    )
}

/// `operation` with `span`'s context as its `traceparent` header.
pub fn carry<T, E, B>(
    operation: CustomizableOperation<T, E, B>,
    span: &Span,
) -> CustomizableOperation<T, E, B> {
    match TraceParent::of(span) {
        Some(context) => {
            let value = context.to_string();
            operation.mutate_request(move |request| {
                request.headers_mut().insert(TRACEPARENT, value.clone());
            })
        }
        None => operation,
    }
}

/// Marks `span` failed.
pub fn record_error(span: &Span, error: &str) {
    span.record("otel.status_code", "ERROR");
    span.record("error.type", error);
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http(s)://host:port` of an S3-compatible server; empty for AWS's regional endpoint.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Static keys; both empty: the standard AWS credential chain (environment variables, web
    /// identity token / IRSA, ECS container credentials, EC2 instance profile).
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
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
        if self.access_key_id.is_empty() != self.secret_access_key.is_empty() {
            let key = if self.access_key_id.is_empty() {
                "access_key_id"
            } else {
                "secret_access_key"
            };
            return Err((
                format!("{prefix}.{key}"),
                "set both static keys, or neither (the AWS credential chain)",
            ));
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

    /// Whether the client signs with the configured static keys (else the AWS chain).
    pub fn static_keys(&self) -> bool {
        !self.access_key_id.is_empty()
    }

    /// A client with the static keys, or with the standard AWS credential chain when none are
    /// configured (resolved on first use and cached by the SDK until the credentials expire).
    pub fn client(&self) -> Client {
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()));
        builder = if self.static_keys() {
            builder.credentials_provider(Credentials::new(
                &self.access_key_id,
                &self.secret_access_key,
                None,
                None,
                "substrate-config",
            ))
        } else {
            builder.credentials_provider(chain::AwsChain::new(&self.region))
        };
        let mut builder = builder
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
    let span = span("HeadObject", bucket, key);
    let sent = carry(
        client.head_object().bucket(bucket).key(key).customize(),
        &span,
    )
    .send()
    .instrument(span.clone())
    .await;
    match sent {
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
                record_error(&span, "s3_error");
                Err(error_message(&e))
            }
        }
    }
}

mod chain {
    //! The standard AWS credential chain, built lazily: `client()` stays synchronous while the
    //! chain (which probes its sources asynchronously) is made on the first request.

    use std::sync::Arc;

    use aws_config::default_provider::credentials::DefaultCredentialsChain;
    use aws_credential_types::provider::{future, ProvideCredentials};
    use aws_sdk_s3::config::Region;
    use tokio::sync::OnceCell;

    #[derive(Debug, Clone)]
    pub struct AwsChain {
        region: Region,
        chain: Arc<OnceCell<DefaultCredentialsChain>>,
    }

    impl AwsChain {
        pub fn new(region: &str) -> Self {
            Self {
                region: Region::new(region.to_string()),
                chain: Arc::default(),
            }
        }
    }

    impl ProvideCredentials for AwsChain {
        fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            future::ProvideCredentials::new(async move {
                let chain = self
                    .chain
                    .get_or_init(|| {
                        DefaultCredentialsChain::builder()
                            .region(self.region.clone())
                            .build()
                    })
                    .await;
                chain.provide_credentials().await
            })
        }
    }
}
