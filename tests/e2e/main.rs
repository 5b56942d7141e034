//! End-to-end suite. Needs the local stack (`./taskw start`): real Kafka, schema registry,
//! PostgreSQL and the running gateway and notification-writer. Some tests also start a gateway
//! in-process with settings of their own (JWKS keys, routes files, an unreachable broker).

mod compose;
mod flows;
mod gateway_auth;
mod harness;
mod routes_reload;
mod writer_dead_letter;
