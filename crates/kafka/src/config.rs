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
    /// Extra librdkafka properties (e.g. `security.protocol`, `sasl.*`).
    #[serde(default)]
    pub extra: BTreeMap<String, String>,
}

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
            extra: BTreeMap::new(),
        }
    }

    fn base(&self, role: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.extra {
            config.set(key, value);
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
