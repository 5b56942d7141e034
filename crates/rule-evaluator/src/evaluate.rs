//! The consume → evaluate → produce loop. For each event: decode with its writer schema,
//! evaluate the topic's rules, produce one dispatch request per action of every matching rule,
//! write the event to the unified stream, and only then store its offset. Request ids are
//! deterministic, so a redelivered event produces the same requests.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Message};
use serde_json::{json, Value as Json};
use substrate_avro::{avro_to_json, Registry, TopicSchema};
use substrate_kafka::consumer::OffsetBatch;
use substrate_kafka::{CloudEvent, DeadLetter, Origin, Producer, TraceParent};
use substrate_rules::{CeAttributes, Event};
use substrate_runtime::failure::{Backoff, Classify, Failure};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::metrics::{EVENTS, MATCHES, REQUESTS};
use crate::store::{RuleDef, Store};

/// Namespace of dispatch request ids: UUIDv5 of `<event id>/<rule id>/<action index>`.
const REQUEST_NAMESPACE: Uuid = Uuid::from_u128(0x9d3f_52a1_7c4e_4b08_a6d2_1e9b_3c5f_7a40);

pub fn request_id(event_id: &str, rule_id: Uuid, action_index: usize) -> Uuid {
    Uuid::new_v5(
        &REQUEST_NAMESPACE,
        format!("{event_id}/{rule_id}/{action_index}").as_bytes(),
    )
}

pub struct Evaluator {
    pub consumer: substrate_kafka::consumer::GroupConsumer,
    pub registry: Registry,
    pub store: Arc<Store>,
    pub producer: Producer,
    pub dead_letter: DeadLetter,
    pub dispatch_topic: String,
    pub dispatch_schema: TopicSchema,
    pub unified_topic: String,
    pub unified_schema: TopicSchema,
    /// The consumer group (named on each event's span).
    pub group_id: String,
}

/// Events handled together: their effects are produced concurrently, then their offsets stored.
const BATCH_MAX: usize = 256;
const BATCH_WINDOW: Duration = Duration::from_millis(5);

impl Evaluator {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => break,
                m = self.consumer.recv() => m,
            };
            let mut batch = Vec::with_capacity(BATCH_MAX);
            match first {
                Ok(m) => batch.push(m),
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    continue;
                }
            }
            let window = tokio::time::sleep(BATCH_WINDOW);
            tokio::pin!(window);
            while batch.len() < BATCH_MAX {
                tokio::select! {
                    _ = &mut window => break,
                    m = self.consumer.recv() => match m {
                        Ok(m) => batch.push(m),
                        Err(e) => tracing::warn!(error = %e, "consumer error"),
                    },
                }
            }
            // Effects of different events may land in any order; each event's requests are
            // acknowledged before any offset of the batch is stored.
            let done = futures::future::join_all(batch.iter().map(|m| {
                self.handle(m, &shutdown)
                    .instrument(substrate_kafka::spans::process(m, &self.group_id))
            }))
            .await;
            if done.iter().any(|finished| !finished) {
                break;
            }
            let mut offsets = OffsetBatch::new();
            for message in &batch {
                offsets.processed(message.topic(), message.partition(), message.offset());
            }
            if let Err(e) = offsets.store(&self.consumer) {
                tracing::warn!(error = %e, "storing offsets failed");
            }
        }
        Ok(())
    }

    /// Processes one event until its effects are acknowledged or it is dead-lettered; false when
    /// shutdown interrupted the retries. Transient failures (broker, registry) back off and retry
    /// this event; permanent ones (an undecodable record, a request the broker refuses) send it
    /// to the dead letter.
    async fn handle(&self, message: &BorrowedMessage<'_>, shutdown: &CancellationToken) -> bool {
        let mut backoff = Backoff::new("rule_evaluator.event");
        loop {
            match self.process(message).await {
                Ok(()) => {
                    backoff.succeeded();
                    return true;
                }
                Err(failure) if failure.is_transient() => {
                    if !backoff.wait(shutdown, &failure).await {
                        return false;
                    }
                }
                Err(failure) => {
                    return self
                        .dead_letter
                        .park(
                            message,
                            &Origin::of(message),
                            failure.message(),
                            1,
                            shutdown,
                        )
                        .await;
                }
            }
        }
    }

    async fn process(&self, message: &BorrowedMessage<'_>) -> Result<(), Failure> {
        let topic = message.topic();
        let payload = message
            .payload()
            .ok_or_else(|| Failure::permanent("the record has no value"))?;
        let (value, schema_id) = self
            .registry
            .decode(payload)
            .await
            .map_err(|e| Failure::of(&e).context("undecodable"))?;
        let schema = self
            .registry
            .writer_schema(schema_id)
            .await
            .map_err(|e| Failure::of(&e).context("writer schema"))?;
        let headers = message.headers();
        let ce = headers.and_then(CloudEvent::from_headers);
        let json = avro_to_json(&value);
        let event_id = ce
            .as_ref()
            .map(|c| c.id.clone())
            .or_else(|| {
                json.get("event_id")
                    .and_then(Json::as_str)
                    .map(String::from)
            })
            .unwrap_or_else(|| format!("{topic}/{}/{}", message.partition(), message.offset()));
        let event_type = ce
            .as_ref()
            .map(|c| c.event_type.clone())
            .unwrap_or_default();
        let time_millis = ce
            .as_ref()
            .map(|c| c.time.timestamp_millis())
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        let source = ce.as_ref().map(|c| c.source.clone()).unwrap_or_default();
        let trace = TraceParent::outgoing(substrate_kafka::spans::record_context(message));

        metrics::counter!(EVENTS, "topic" => topic.to_string()).increment(1);
        let rules = self.store.rules_for(topic, schema_id, &schema);
        let event = Event {
            record: &value,
            ce: CeAttributes {
                id: &event_id,
                event_type: &event_type,
                source: &source,
                time_millis,
            },
        };
        let mut matched: Vec<Arc<RuleDef>> = Vec::new();
        rules.for_each_match(&event, |rule| {
            if rule.event_types.is_empty() || rule.event_types.contains(&event_type) {
                matched.push(rule.clone());
            }
        });

        let payload_text = json.to_string();
        let mut sends = Vec::new();
        for rule in &matched {
            metrics::counter!(MATCHES, "rule" => rule.name.clone()).increment(1);
            for (index, action) in rule.actions.iter().enumerate() {
                let id = request_id(&event_id, rule.id, index);
                let request = json!({
                    "request_id": id.to_string(),
                    "event_id": event_id,
                    "event_type": event_type,
                    "event_time": time_millis,
                    "source_topic": topic,
                    "rule_id": rule.id.to_string(),
                    "rule_name": rule.name,
                    "rule_version": rule.version,
                    "action_index": index,
                    "action": action,
                    "payload": payload_text,
                    "traceparent": trace.to_string(),
                });
                sends.push(self.produce(
                    &self.dispatch_topic,
                    &self.dispatch_schema,
                    id,
                    "dispatch.request",
                    request,
                    &trace,
                ));
            }
        }
        for result in futures::future::join_all(sends).await {
            result?;
        }
        metrics::counter!(REQUESTS).increment(matched.iter().map(|r| r.actions.len() as u64).sum());

        let (domain, entity) = split_type(&event_type);
        let unified = json!({
            "event_id": event_id,
            "event_type": event_type,
            "domain": domain,
            "entity": entity,
            "event_time": time_millis,
            "source_topic": topic,
            "user_id": user_of(&json),
            "payload": payload_text,
        });
        let unified_id = Uuid::parse_str(&event_id)
            .unwrap_or_else(|_| Uuid::new_v5(&REQUEST_NAMESPACE, event_id.as_bytes()));
        self.produce(
            &self.unified_topic,
            &self.unified_schema,
            unified_id,
            &event_type_or(&event_type),
            unified,
            &trace,
        )
        .await
    }

    async fn produce(
        &self,
        topic: &str,
        schema: &TopicSchema,
        id: Uuid,
        ce_type: &str,
        record: Json,
        trace: &TraceParent,
    ) -> Result<(), Failure> {
        let value = schema
            .to_avro(&record)
            .map_err(|e| Failure::permanent(format!("cannot build a {topic} record: {e}")))?;
        let bytes = self
            .registry
            .encode(topic, value)
            .await
            .map_err(|e| Failure::of(&e).context(format!("encoding for {topic}")))?;
        let headers =
            CloudEvent::new(id, ce_type, "/event-substrate/rule-evaluator").to_headers(trace);
        let key = record
            .get("event_id")
            .and_then(Json::as_str)
            .map(|s| s.as_bytes().to_vec());
        self.producer
            .send(topic, key.as_deref(), &bytes, headers)
            .await
            .map(|_| ())
            .map_err(|e| Failure::of(&e).context(format!("producing to {topic}")))
    }
}

fn event_type_or(event_type: &str) -> String {
    if event_type.is_empty() {
        "platform.event".into()
    } else {
        event_type.to_string()
    }
}

/// `identity.login` → (`identity`, `login`); unknown types → (`unknown`, `unknown`).
fn split_type(event_type: &str) -> (String, String) {
    let mut parts = event_type.split('.');
    match (parts.next(), parts.next()) {
        (Some(d), Some(e)) if !d.is_empty() && !e.is_empty() => (d.to_string(), e.to_string()),
        _ => ("unknown".into(), "unknown".into()),
    }
}

/// The acting user of an event, from the usual fields.
fn user_of(event: &Json) -> Json {
    for path in [&["user_id"][..], &["sender_id"], &["user", "id"]] {
        let mut current = event;
        let mut found = true;
        for key in path {
            match current.get(key) {
                Some(v) => current = v,
                None => {
                    found = false;
                    break;
                }
            }
        }
        if found && current.is_string() {
            return current.clone();
        }
    }
    Json::Null
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_stable_and_distinct() {
        let rule = Uuid::new_v4();
        assert_eq!(request_id("e1", rule, 0), request_id("e1", rule, 0));
        assert_ne!(request_id("e1", rule, 0), request_id("e1", rule, 1));
        assert_ne!(request_id("e1", rule, 0), request_id("e2", rule, 0));
    }

    #[test]
    fn types_and_users() {
        assert_eq!(
            split_type("identity.login"),
            ("identity".into(), "login".into())
        );
        assert_eq!(split_type("x"), ("unknown".into(), "unknown".into()));
        assert_eq!(user_of(&json!({"user": {"id": "u"}})), json!("u"));
        assert_eq!(user_of(&json!({"sender_id": "s"})), json!("s"));
        assert_eq!(user_of(&json!({})), Json::Null);
    }
}
