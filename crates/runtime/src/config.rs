//! Layered configuration: embedded defaults (YAML), then an optional file named by
//! `SUBSTRATE_CONFIG`, then environment variables `SUBSTRATE_<SECTION>__<KEY>`.
//! Validation happens once at start-up and names the offending key.

use figment::providers::{Env, Format, Yaml};
use figment::Figment;
use serde::de::DeserializeOwned;

/// Environment variable that names an optional YAML or TOML configuration file.
pub const CONFIG_FILE_ENV: &str = "SUBSTRATE_CONFIG";
/// Prefix of every configuration environment variable; `__` separates nesting levels.
pub const ENV_PREFIX: &str = "SUBSTRATE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// `value` must be a socket address (`host:port`).
pub fn require_listen(key: &str, value: &str) -> Result<(), ConfigError> {
    value
        .parse::<std::net::SocketAddr>()
        .map(|_| ())
        .map_err(|_| ConfigError::invalid(key, "must be host:port, e.g. 127.0.0.1:8080"))
}

/// Every value must be above zero; the error names the first key that is not.
pub fn require_positive(values: &[(&str, u64)]) -> Result<(), ConfigError> {
    match values.iter().find(|(_, value)| *value == 0) {
        Some((key, _)) => Err(ConfigError::invalid(*key, "must be > 0")),
        None => Ok(()),
    }
}

/// Checks that cannot be expressed by types alone; errors name the key.
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Loads `T` from the embedded defaults, the optional config file and the environment.
pub fn load_config<T: DeserializeOwned + Validate>(defaults_yaml: &str) -> Result<T, ConfigError> {
    let mut figment = Figment::from(Yaml::string(defaults_yaml));
    if let Ok(path) = std::env::var(CONFIG_FILE_ENV) {
        figment = if path.ends_with(".toml") {
            figment.merge(figment::providers::Toml::file_exact(path))
        } else {
            figment.merge(Yaml::file_exact(path))
        };
    }
    let config: T = figment
        .merge(Env::prefixed(ENV_PREFIX).split("__"))
        .extract()
        .map_err(Box::new)?;
    config.validate()?;
    Ok(config)
}

/// Loads `T` from the embedded defaults plus an explicit YAML overlay (tests, tools).
pub fn load_config_from<T: DeserializeOwned + Validate>(
    defaults_yaml: &str,
    overlay_yaml: &str,
) -> Result<T, ConfigError> {
    let config: T = Figment::from(Yaml::string(defaults_yaml))
        .merge(Yaml::string(overlay_yaml))
        .extract()
        .map_err(Box::new)?;
    config.validate()?;
    Ok(config)
}
