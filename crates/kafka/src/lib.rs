//! Kafka plumbing shared by every service: client configuration with the platform's forced
//! delivery settings, a producer that reports back-pressure instead of buffering without bound,
//! CloudEvents + W3C trace headers, dead-letter routing and non-blocking retries through delay
//! topics. No business logic lives here.

pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod headers;
pub mod producer;
pub mod retry;
pub mod worker;

pub use config::KafkaConfig;
pub use dead_letter::{DeadLetter, Origin};
pub use headers::{CloudEvent, TraceParent};
pub use producer::{ProduceError, Producer};
