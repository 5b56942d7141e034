//! Where deliveries go: HTTP endpoints, the S3 archive, Kafka topics.

pub mod archive;
pub mod http;
pub mod kafka;
