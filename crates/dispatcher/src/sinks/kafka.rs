//! Kafka deliveries: `kafka` actions forward the event to a topic (Avro when the catalog knows the
//! topic, JSON otherwise) and `notification` actions produce a notification record for the
//! notification-writer. Both use the request id as the CloudEvents id, so a retried request is
//! recognisable downstream (the notification-writer inserts it once).

use rdkafka::message::{Header, OwnedHeaders};
use serde_json::{json, Value as Json};
use substrate_avro::{Catalog, Registry};
use substrate_kafka::headers::CONTENT_TYPE;
use substrate_kafka::{CloudEvent, ProduceError, Producer, TraceParent};
use uuid::Uuid;

use crate::outcome::Outcome;
use crate::request::Request;

const SOURCE: &str = "/event-substrate/dispatcher";

pub struct KafkaSink {
    pub producer: Producer,
    pub registry: Registry,
    pub catalog: Catalog,
    pub notification_topic: String,
}

impl KafkaSink {
    fn trace(request: &Request) -> TraceParent {
        TraceParent::outgoing(request.trace())
    }

    async fn produce(
        &self,
        topic: &str,
        record: &Json,
        request: &Request,
        ce_type: &str,
    ) -> Outcome {
        let trace = Self::trace(request);
        let headers = CloudEvent::new(request.request_id, ce_type, SOURCE).to_headers(&trace);
        let (bytes, headers) = match self.catalog.get(topic) {
            Some(schema) => {
                let value = match schema.to_avro(record) {
                    Ok(v) => v,
                    Err(e) => {
                        return Outcome::Permanent {
                            reason: format!("the event does not fit {topic}'s schema: {e}"),
                        }
                    }
                };
                match self.registry.encode(topic, value).await {
                    Ok(bytes) => (bytes, headers),
                    Err(e) if e.retriable => {
                        return Outcome::Retry {
                            after: None,
                            reason: e.to_string(),
                        }
                    }
                    Err(e) => {
                        return Outcome::Permanent {
                            reason: e.to_string(),
                        }
                    }
                }
            }
            None => (
                serde_json::to_vec(record).expect("JSON values serialize"),
                replace_content_type(headers),
            ),
        };
        match self
            .producer
            .send(topic, Some(request.event_id.as_bytes()), &bytes, headers)
            .await
        {
            Ok(_) => Outcome::Delivered,
            Err(ProduceError::Unavailable(m)) => Outcome::Retry {
                after: None,
                reason: m,
            },
            Err(ProduceError::Rejected(m)) => Outcome::Permanent {
                reason: format!("{topic}: {m}"),
            },
        }
    }

    /// Forwards the event to `topic`.
    pub async fn forward(&self, topic: &str, request: &Request) -> Outcome {
        let ce_type = if request.event_type.is_empty() {
            "platform.event"
        } else {
            &request.event_type
        };
        self.produce(topic, &request.payload, request, ce_type)
            .await
    }

    /// A user notification: direct to the user named by `recipient_field`, broadcast without one.
    pub async fn notify(
        &self,
        event_type: &str,
        recipient_field: Option<&str>,
        request: &Request,
    ) -> Outcome {
        if !substrate_rules::names::is_event_type(event_type) {
            // The notification table would refuse it: say so here, once.
            return Outcome::Permanent {
                reason: substrate_rules::names::event_type_rule(event_type),
            };
        }
        let recipient = match recipient_field {
            None => None,
            Some(field) => {
                let mut current = Some(&request.payload);
                for key in field.split('.') {
                    current = current.and_then(|v| v.get(key));
                }
                match current.and_then(Json::as_str).map(Uuid::parse_str) {
                    Some(Ok(id)) => Some(id),
                    _ => {
                        return Outcome::Permanent {
                            reason: format!("recipient field `{field}` is not a UUID in the event"),
                        }
                    }
                }
            }
        };
        let record = json!({
            "event_id": request.request_id.to_string(),
            "event_type": event_type,
            "visibility": if recipient.is_some() { "direct" } else { "broadcast" },
            "recipient_id": recipient.map(|r| r.to_string()),
            "rule_id": request.rule_id.to_string(),
            "source_event_id": request.event_id,
            "payload": request.payload.to_string(),
        });
        let topic = self.notification_topic.clone();
        self.produce(&topic, &record, request, event_type).await
    }
}

fn replace_content_type(headers: OwnedHeaders) -> OwnedHeaders {
    use rdkafka::message::Headers;
    let mut out = OwnedHeaders::new();
    for h in headers.iter() {
        if h.key == CONTENT_TYPE {
            continue;
        }
        out = out.insert(Header {
            key: h.key,
            value: h.value,
        });
    }
    out.insert(Header {
        key: CONTENT_TYPE,
        value: Some("application/json"),
    })
}
