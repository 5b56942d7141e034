//! The records the saga produces (its topics are named in `substrate_kafka::media`). Every result
//! carries a CloudEvents id derived from the request id and the step (`UUIDv5(request, step)`),
//! so a step repeated after a crash produces the same id and consumers (the notification-writer)
//! apply it once.

use serde_json::Value as Json;
use substrate_avro::{Catalog, Registry};
use substrate_kafka::{CloudEvent, Producer, TraceParent};
use substrate_runtime::failure::Failure;
use uuid::Uuid;

pub use substrate_kafka::media::{event_id, Topic, Topics};

const SOURCE: &str = "/event-substrate/media-saga";

/// The topics the saga consumes.
pub const INPUTS: [Topic; 6] = [
    Topic::UploadIntent,
    Topic::UploadReceived,
    Topic::FileReady,
    Topic::UploadRetry,
    Topic::DownloadIntent,
    Topic::DeleteIntent,
];

/// Encodes and produces saga results.
pub struct Emitter {
    pub producer: Producer,
    pub registry: Registry,
    pub catalog: Catalog,
    pub topics: Topics,
}

impl Emitter {
    /// Produces `record` to `topic` keyed by the request and waits for the acknowledgement.
    pub async fn emit(
        &self,
        topic: Topic,
        request: Uuid,
        step: u32,
        record: &Json,
        trace: &TraceParent,
    ) -> Result<(), Failure> {
        let schema = self
            .catalog
            .get(topic.name())
            .ok_or_else(|| Failure::permanent(format!("no schema for {}", topic.name())))?;
        let value = schema.to_avro(record).map_err(|e| {
            Failure::permanent(format!(
                "a {} record does not fit its schema: {e}",
                topic.name()
            ))
        })?;
        let name = self.topics.name(topic);
        let bytes = self
            .registry
            .encode(&name, value)
            .await
            .map_err(|e| Failure::of(&e).context(format!("encoding for {name}")))?;
        let headers = CloudEvent::new(event_id(request, topic, step), topic.event_type(), SOURCE)
            .to_headers(trace);
        self.producer
            .send(&name, Some(request.to_string().as_bytes()), &bytes, headers)
            .await
            .map_err(|e| Failure::of(&e).context(format!("producing to {name}")))?;
        metrics::counter!(crate::metrics::EMITTED, "topic" => topic.name()).increment(1);
        Ok(())
    }
}
