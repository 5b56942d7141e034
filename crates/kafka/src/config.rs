//! Kafka client settings. User overrides (`extra`) are applied first, then the keys the
//! platform's guarantees depend on are forced: idempotent `acks=all` producers and consumers
//! that store offsets only after the effect is durable.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Added to `client.id` of every client.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// How long a produce may wait for the broker before the caller is told to retry (ms).
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// librdkafka producer `linger.ms`.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (Redpanda and most managed Kafka: SCRAM).
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// Keep it out of files: `SUBSTRATE_KAFKA__SASL_PASSWORD`.
    #[serde(default)]
    pub sasl_password: Option<String>,
    /// PEM file of the CA that signed the brokers' certificates (default: the system's CAs).
    #[serde(default)]
    pub ssl_ca_location: Option<String>,
    /// Extra librdkafka properties, applied before the typed settings above.
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

/// `security.protocol` values librdkafka takes.
const PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
/// SASL mechanisms built into librdkafka without Kerberos.
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

fn default_client_id() -> String {
    "event-substrate".into()
}

fn default_message_timeout_ms() -> u64 {
    10_000
}

fn default_linger_ms() -> u64 {
    5
}

impl KafkaConfig {
    pub fn local(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            client_id: default_client_id(),
            message_timeout_ms: default_message_timeout_ms(),
            linger_ms: default_linger_ms(),
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            extra: BTreeMap::new(),
        }
    }

    /// Checks the security settings; the error names the key (`kafka.<key>`).
    pub fn check(&self) -> Result<(), (String, String)> {
        let protocol = self.security_protocol.as_deref().unwrap_or("plaintext");
        if !PROTOCOLS.contains(&protocol) {
            return Err((
                "kafka.security_protocol".into(),
                format!("`{protocol}` is not one of {}", PROTOCOLS.join(", ")),
            ));
        }
        let sasl = protocol.starts_with("sasl_");
        if let Some(mechanism) = &self.sasl_mechanism {
            if !MECHANISMS.contains(&mechanism.as_str()) {
                return Err((
                    "kafka.sasl_mechanism".into(),
                    format!("`{mechanism}` is not one of {}", MECHANISMS.join(", ")),
                ));
            }
        }
        if sasl {
            for (key, value) in [
                ("sasl_mechanism", &self.sasl_mechanism),
                ("sasl_username", &self.sasl_username),
                ("sasl_password", &self.sasl_password),
            ] {
                if value.as_deref().unwrap_or("").is_empty() {
                    return Err((
                        format!("kafka.{key}"),
                        format!("required with security_protocol {protocol}"),
                    ));
                }
            }
        } else if self.sasl_username.is_some() || self.sasl_password.is_some() {
            return Err((
                "kafka.security_protocol".into(),
                "SASL credentials are set: use sasl_plaintext or sasl_ssl".into(),
            ));
        }
        Ok(())
    }

    fn base(&self, role: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        for (key, value) in [
            ("security.protocol", &self.security_protocol),
            ("sasl.mechanism", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
            ("ssl.ca.location", &self.ssl_ca_location),
        ] {
            if let Some(value) = value {
                config.set(key, value);
            }
        }
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", format!("{}-{role}", self.client_id));
        config
    }

    /// Idempotent producer with `acks=all`.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = self.base("producer");
        config
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set("linger.ms", self.linger_ms.to_string())
            .set("compression.type", "lz4")
            .set("queue.buffering.max.messages", "200000")
            .set("enable.idempotence", "true")
            .set("acks", "all");
        config
    }

    /// Consumer that commits automatically but only offsets the application stored.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut config = self.base("consumer");
        config
            .set("group.id", group_id)
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed");
        config
    }

    /// Admin client (topic creation, metadata).
    pub fn admin_config(&self) -> ClientConfig {
        self.base("admin")
    }
}

#[cfg(test)]
mod tests {
    use super::KafkaConfig;

    fn value(config: &rdkafka::ClientConfig, key: &str) -> Option<String> {
        config.get(key).map(str::to_string)
    }

    #[test]
    fn security_settings_are_checked_and_reach_every_client() {
        let mut config = KafkaConfig::local("broker:9093");
        assert!(config.check().is_ok(), "plaintext by default");
        config.security_protocol = Some("sasl_ssl".into());
        assert_eq!(config.check().unwrap_err().0, "kafka.sasl_mechanism");
        config.sasl_mechanism = Some("SCRAM-SHA-256".into());
        config.sasl_username = Some("substrate".into());
        assert_eq!(config.check().unwrap_err().0, "kafka.sasl_password");
        config.sasl_password = Some("s3cret".into());
        config.ssl_ca_location = Some("/etc/kafka/ca.pem".into());
        assert!(config.check().is_ok());
        for client in [
            config.producer_config(),
            config.consumer_config("g"),
            config.admin_config(),
        ] {
            assert_eq!(
                value(&client, "security.protocol").as_deref(),
                Some("sasl_ssl")
            );
            assert_eq!(
                value(&client, "sasl.mechanism").as_deref(),
                Some("SCRAM-SHA-256")
            );
            assert_eq!(
                value(&client, "sasl.username").as_deref(),
                Some("substrate")
            );
            assert_eq!(value(&client, "sasl.password").as_deref(), Some("s3cret"));
            assert_eq!(
                value(&client, "ssl.ca.location").as_deref(),
                Some("/etc/kafka/ca.pem")
            );
        }
        config.sasl_mechanism = Some("GSSAPI".into());
        assert_eq!(config.check().unwrap_err().0, "kafka.sasl_mechanism");
        config.sasl_mechanism = Some("PLAIN".into());
        config.security_protocol = Some("ssl".into());
        assert_eq!(config.check().unwrap_err().0, "kafka.security_protocol");
        config.security_protocol = Some("tls".into());
        assert_eq!(config.check().unwrap_err().0, "kafka.security_protocol");
    }
}
