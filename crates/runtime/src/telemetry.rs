//! One place that sets up logging for a process: an `EnvFilter` (`RUST_LOG`, default `info`)
//! and plain or JSON lines on stderr. Tests may call it repeatedly; only the first call wins.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `plain` or `json`.
    #[serde(default = "default_format")]
    pub log_format: String,
    /// Filter directives used when `RUST_LOG` is unset.
    #[serde(default = "default_filter")]
    pub log_filter: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: default_format(),
            log_filter: default_filter(),
        }
    }
}

fn default_format() -> String {
    "plain".into()
}

fn default_filter() -> String {
    "info,rdkafka=warn".into()
}

/// Installs the global subscriber. Returns false when one was already installed.
pub fn init(config: &TelemetryConfig) -> bool {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if config.log_format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    result.is_ok()
}
