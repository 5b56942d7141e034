//! Kafka plumbing shared by every service: client configuration with the platform's forced
//! delivery settings, a producer that reports back-pressure instead of buffering without bound,
//! CloudEvents + W3C trace headers, dead-letter routing, non-blocking retries through delay
//! topics and the offset bookkeeping of concurrent consumption. No business logic lives here;
//! `media` only names the media topics that the gateway, media-saga and the notification-writer
//! share.

pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod delay_gate;
pub mod delay_topics;
pub mod headers;
pub mod in_flight;
pub mod media;
pub mod origin;
pub mod producer;
pub mod progress;
pub mod spans;
pub mod worker;

pub use config::KafkaConfig;
pub use dead_letter::DeadLetter;
pub use headers::{CloudEvent, TraceParent};
pub use origin::Origin;
pub use producer::{ProduceError, Producer};
