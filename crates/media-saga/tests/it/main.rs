//! media-saga against the real stack (Kafka, registry, Postgres, the S3 server), each test with
//! topics and a consumer group of its own. `./taskw start` must have run.

mod crash;
mod harness;
mod sagas;
