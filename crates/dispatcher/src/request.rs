//! A dispatch request as the rule-evaluator wrote it (`internal.dispatch.requests`), decoded.
//! Its action is the public part; the secret of an HTTP action is resolved separately
//! ([`crate::secrets`]), except in records written before secrets were sealed.

use serde_json::Value as Json;
use substrate_rules::{ActionSecret, PublicAction};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Request {
    pub request_id: Uuid,
    pub event_id: String,
    pub event_type: String,
    pub event_time_ms: i64,
    pub source_topic: String,
    pub rule_id: Uuid,
    pub rule_name: String,
    pub rule_version: i32,
    pub action_index: i32,
    pub action: PublicAction,
    /// The secret a record written before secrets were sealed carries inline.
    pub inline_secret: Option<ActionSecret>,
    pub payload: Json,
    pub traceparent: Option<String>,
}

impl Request {
    /// The context of the event this request came from (the rule-evaluator's span).
    pub fn trace(&self) -> Option<substrate_kafka::TraceParent> {
        self.traceparent
            .as_deref()
            .and_then(substrate_kafka::TraceParent::parse)
    }

    /// From the record as JSON; errors name the field and are permanent for the record.
    pub fn from_json(record: &Json) -> Result<Self, String> {
        let text = |field: &str| -> Result<String, String> {
            record
                .get(field)
                .and_then(Json::as_str)
                .map(String::from)
                .ok_or_else(|| format!("field `{field}` is missing or not a string"))
        };
        let int = |field: &str| -> Result<i64, String> {
            record
                .get(field)
                .and_then(Json::as_i64)
                .ok_or_else(|| format!("field `{field}` is missing or not a number"))
        };
        let uuid = |field: &str| -> Result<Uuid, String> {
            Uuid::parse_str(&text(field)?).map_err(|_| format!("field `{field}` is not a UUID"))
        };
        let action_json: Json = serde_json::from_str(&text("action")?)
            .map_err(|e| format!("field `action` is not JSON: {e}"))?;
        let (action, inline_secret) = PublicAction::parse(&action_json)
            .map_err(|e| format!("field `action` is not a valid action: {e}"))?;
        let payload: Json = serde_json::from_str(&text("payload")?)
            .map_err(|e| format!("field `payload` is not JSON: {e}"))?;
        Ok(Self {
            request_id: uuid("request_id")?,
            event_id: text("event_id")?,
            event_type: text("event_type")?,
            // Avro timestamp-millis reads back as RFC 3339.
            event_time_ms: match record.get("event_time") {
                Some(Json::String(t)) => chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|_| "field `event_time` is not RFC 3339".to_string())?
                    .timestamp_millis(),
                _ => int("event_time")?,
            },
            source_topic: text("source_topic")?,
            rule_id: uuid("rule_id")?,
            rule_name: text("rule_name")?,
            rule_version: int("rule_version")? as i32,
            action_index: int("action_index")? as i32,
            action,
            inline_secret,
            payload,
            traceparent: record
                .get("traceparent")
                .and_then(Json::as_str)
                .map(String::from),
        })
    }

    /// The event time as RFC 3339.
    pub fn event_time(&self) -> String {
        chrono::DateTime::from_timestamp_millis(self.event_time_ms)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// What logs and the audit log name as the target (HTTP endpoints redacted).
    pub fn target(&self) -> String {
        match &self.action {
            PublicAction::Webhook { endpoint, .. }
            | PublicAction::Slack { endpoint, .. }
            | PublicAction::Discord { endpoint, .. } => endpoint.clone(),
            PublicAction::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}"),
            PublicAction::Kafka { topic } => format!("kafka:{topic}"),
            PublicAction::Notification { event_type, .. } => format!("notification:{event_type}"),
        }
    }
}
