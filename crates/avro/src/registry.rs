//! Confluent wire format through a Confluent-API schema registry (Apicurio's `/apis/ccompat/v7`,
//! Redpanda's built-in registry, Confluent's own). Encoding looks up the latest schema of the
//! topic's subject once and caches it; decoding resolves the writer schema by the id in the
//! record. Registry errors say whether a retry can help.

use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{
    get_all_subjects, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::Deserialize;
use substrate_runtime::failure::{Class, Classify};

use crate::catalog::subject_for;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g. `http://127.0.0.1:8081/apis/ccompat/v7`.
    pub url: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("schema registry: {message}")]
pub struct RegistryError {
    pub message: String,
    /// True when the registry may answer later (network, 5xx); false for bad data or schemas.
    pub retriable: bool,
}

/// Unreachable or failing registries (network, 5xx) are transient; bytes that are not wire
/// format, unknown schema ids and records that do not fit are permanent.
impl Classify for RegistryError {
    fn class(&self) -> Class {
        if self.retriable {
            Class::Transient
        } else {
            Class::Permanent
        }
    }
}

impl From<SRCError> for RegistryError {
    fn from(e: SRCError) -> Self {
        let message = match &e.cause {
            Some(cause) => format!("{}: {cause}", e.error),
            None => e.error.clone(),
        };
        Self {
            message,
            retriable: e.retriable,
        }
    }
}

/// The schema id of a Confluent-framed record (magic byte 0, then 4 bytes big-endian).
pub fn wire_schema_id(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

#[derive(Clone)]
pub struct Registry {
    settings: SrSettings,
    encoder: Arc<AvroEncoder>,
    decoder: Arc<AvroDecoder>,
}

impl Registry {
    pub fn new(config: &RegistryConfig) -> Result<Self, RegistryError> {
        let settings = SrSettings::new_builder(config.url.trim_end_matches('/').to_string())
            .set_timeout(Duration::from_millis(config.timeout_ms))
            .no_proxy()
            .build()?;
        Ok(Self {
            encoder: Arc::new(AvroEncoder::new(settings.clone())),
            decoder: Arc::new(AvroDecoder::new(settings.clone())),
            settings,
        })
    }

    /// Encodes a record for `topic` in Confluent wire format with the subject's latest schema.
    pub async fn encode(&self, topic: &str, record: Value) -> Result<Vec<u8>, RegistryError> {
        let fields = match record {
            Value::Record(fields) => fields,
            _ => {
                return Err(RegistryError {
                    message: "only records can be encoded".into(),
                    retriable: false,
                })
            }
        };
        let values: Vec<(&str, Value)> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let result = self
            .encoder
            .encode(
                values,
                SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false),
            )
            .await;
        if result.is_err() {
            // Retriable errors must not stay cached: the registry may be back on the next call.
            self.encoder.remove_errors_from_cache();
        }
        Ok(result?)
    }

    /// Decodes a Confluent-framed record; returns the value and the writer schema id.
    pub async fn decode(&self, bytes: &[u8]) -> Result<(Value, u32), RegistryError> {
        let id = wire_schema_id(bytes).ok_or_else(|| RegistryError {
            message: "not Confluent wire format (missing magic byte 0 and schema id)".into(),
            retriable: false,
        })?;
        let result = self.decoder.decode(Some(bytes)).await;
        if let Err(e) = &result {
            if e.retriable {
                self.decoder.remove_errors_from_cache();
            }
        }
        Ok((result?.value, id))
    }

    /// The writer schema of an id (cached after the first lookup).
    pub async fn writer_schema(&self, id: u32) -> Result<Arc<apache_avro::Schema>, RegistryError> {
        let schema = self.decoder.get_schema(id).await?;
        Ok(Arc::new(schema.parsed.clone()))
    }

    /// Registers `schema_text` under the topic's value subject; idempotent, returns the id.
    pub async fn register(&self, topic: &str, schema_text: &str) -> Result<u32, RegistryError> {
        let supplied = SuppliedSchema::new(None, SchemaType::Avro, schema_text.to_string());
        let registered = post_schema(&self.settings, subject_for(topic), supplied).await?;
        Ok(registered.id)
    }

    /// Lists subjects: proves the registry answers.
    pub async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        Ok(get_all_subjects(&self.settings).await?)
    }

    pub async fn ping(&self) -> Result<(), String> {
        self.subjects().await.map(|_| ()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_schema_id_of_wire_format() {
        assert_eq!(wire_schema_id(&[0, 0, 0, 1, 2, 9]), Some(258));
        assert_eq!(wire_schema_id(&[1, 0, 0, 1, 2]), None);
        assert_eq!(wire_schema_id(&[0, 0]), None);
    }
}
