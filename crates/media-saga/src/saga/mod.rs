//! The saga steps. Each step locks the saga's row, makes its change in one transaction, and then
//! produces its results; a step repeated after a crash finds the change made and produces the
//! same results again (same CloudEvents ids), so nothing is applied twice. The steps follow the
//! saga's seams: `upload` (credit check, signed URL, TTL), `transfer` (arrival, move to the
//! permanent key, join, retries) and `files` (download and delete of a stored file). Deadlines
//! (the upload URL's TTL, the move timeout) live in `media_deadlines` and are handled in
//! `deadlines.rs`; every query is in `substrate_db::media`.

mod files;
mod transfer;
mod upload;

use std::sync::Arc;
use std::time::Instant;

use rdkafka::message::{Message, OwnedMessage};
use serde::Deserialize;
use substrate_avro::{avro_to_json, Registry};
use substrate_db::{DbError, Pool};
use substrate_kafka::{DeadLetter, Origin, TraceParent};
use substrate_runtime::failure::{retry_transient, Failure, Stopped};
use substrate_runtime::Shutdown;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::config::SagaConfig;
use crate::emit::{Emitter, Topic};
use crate::metrics::STEP_SECONDS;
use crate::storage::Storage;

#[derive(Debug, Deserialize)]
pub struct UploadIntent {
    pub request_id: Uuid,
    pub user_id: Uuid,
    pub file_name: String,
    pub media_type: String,
    pub file_size: i64,
}

#[derive(Debug, Deserialize)]
pub struct UploadReceived {
    pub request_id: Uuid,
    pub user_id: Uuid,
    pub retry_count: i32,
    pub source: String,
}

#[derive(Debug, Deserialize)]
pub struct FileReady {
    pub request_id: Uuid,
    pub user_id: Uuid,
    pub file_path: String,
}

#[derive(Debug, Deserialize)]
pub struct UploadRetry {
    pub request_id: Uuid,
    pub retry_count: i32,
}

#[derive(Debug, Deserialize)]
pub struct FileIntent {
    pub request_id: Uuid,
    pub user_id: Uuid,
    pub file_path: String,
}

/// What a saga step fails with: transient (retried with the record's offset held) or permanent
/// (the record is dead-lettered).
pub type StepError = Failure;

/// A database error, classified, with what the database said.
pub fn db(e: impl Into<DbError>) -> StepError {
    Failure::of(&e.into())
}

pub struct Engine {
    pub pool: Pool,
    pub registry: Registry,
    pub emitter: Emitter,
    pub storage: Arc<Storage>,
    pub config: SagaConfig,
    pub moves: Arc<Semaphore>,
    pub dead_letter: DeadLetter,
    pub shutdown: Shutdown,
}

impl Engine {
    /// Handles one consumed record until its effects are durable; false on shutdown.
    pub async fn handle(self: &Arc<Self>, message: OwnedMessage) -> bool {
        let Some(topic) = self.emitter.topics.of(message.topic()) else {
            return true;
        };
        let started = Instant::now();
        let trace = TraceParent::outgoing(substrate_kafka::spans::record_context(&message));
        let Some(payload) = message.payload() else {
            return self.reject(&message, "the record has no value").await;
        };
        let decoded = retry_transient(&self.shutdown.token(), "media_saga.decode", || {
            self.registry.decode(payload)
        })
        .await;
        let json = match decoded {
            Err(Stopped::Cancelled) => return false,
            Err(Stopped::Permanent(e)) => {
                return self
                    .reject(&message, &format!("undecodable: {}", e.message))
                    .await
            }
            Ok((value, _)) => avro_to_json(&value),
        };
        macro_rules! parse {
            ($t:ty) => {
                match serde_json::from_value::<$t>(json.clone()) {
                    Ok(v) => v,
                    Err(e) => {
                        return self
                            .reject(&message, &format!("not a {} record: {e}", topic.name()))
                            .await
                    }
                }
            };
        }
        let done = match topic {
            Topic::UploadIntent => {
                let intent = parse!(UploadIntent);
                self.step(&message, "media_saga.credit_check", || {
                    self.upload_intent(&intent, &trace)
                })
                .await
            }
            Topic::UploadReceived => {
                let received = parse!(UploadReceived);
                self.step(&message, "media_saga.arrival", || {
                    self.upload_received(&received, &trace)
                })
                .await
            }
            Topic::FileReady => {
                let ready = parse!(FileReady);
                self.step(&message, "media_saga.file_ready", || {
                    self.file_ready(&ready, &trace)
                })
                .await
            }
            Topic::UploadRetry => {
                let retry = parse!(UploadRetry);
                self.step(&message, "media_saga.move_retry", || {
                    self.upload_retry(&retry, &trace)
                })
                .await
            }
            Topic::DownloadIntent => {
                let intent = parse!(FileIntent);
                self.step(&message, "media_saga.download", || {
                    self.download(&intent, &trace)
                })
                .await
            }
            Topic::DeleteIntent => {
                let intent = parse!(FileIntent);
                self.step(&message, "media_saga.delete", || {
                    self.delete(&intent, &trace)
                })
                .await
            }
            _ => true,
        };
        metrics::histogram!(STEP_SECONDS, "topic" => topic.name())
            .record(started.elapsed().as_secs_f64());
        done
    }

    /// Runs a step until its effects are durable: transient failures back off with the offset
    /// held, a permanent one dead-letters the record. False when shutdown interrupted it.
    async fn step<F, Fut>(&self, message: &OwnedMessage, operation: &'static str, effect: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), StepError>>,
    {
        match retry_transient(&self.shutdown.token(), operation, effect).await {
            Ok(()) => true,
            Err(Stopped::Cancelled) => false,
            Err(Stopped::Permanent(failure)) => self.reject(message, failure.message()).await,
        }
    }

    /// Sends a record the saga cannot process to the dead-letter topic.
    async fn reject(&self, message: &OwnedMessage, error: &str) -> bool {
        self.dead_letter
            .park(
                message,
                &Origin::of(message),
                error,
                1,
                &self.shutdown.token(),
            )
            .await
    }
}
