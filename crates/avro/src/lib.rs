//! Avro for the platform: the schema catalog discovered from `avro/` (path = topic name), JSON
//! to Avro conversion that names the offending field, Avro to JSON for sinks, and Confluent wire
//! format through a Confluent-API schema registry. No Kafka or HTTP server code here.

pub mod catalog;
pub mod json;
pub mod registry;

pub use catalog::{Catalog, CatalogError, TopicSchema};
pub use json::{avro_to_json, json_to_avro, json_to_avro_with, FieldError};
pub use registry::{Registry, RegistryConfig, RegistryError};

pub use apache_avro::types::Value;
pub use apache_avro::Schema;
