//! End-to-end suite. Needs the local stack (`./taskw start`): real Kafka, schema registry,
//! PostgreSQL, S3, Ory Kratos and the running gateway, notification-writer, rule-evaluator and
//! dispatcher. Some tests also start a gateway in-process with settings of their own (JWKS keys,
//! routes files, an unreachable broker) or a second Kratos.

mod bounds;
mod compose;
mod dispatch;
mod failure_model;
mod flows;
mod gateway_auth;
mod gateway_edge;
mod gateway_limits;
mod harness;
mod hostile;
mod kratos;
mod media_credits;
mod media_intents;
mod media_saga;
mod notifications;
mod routes_reload;
mod secrets;
mod traces;
mod web;
mod writer_dead_letter;
