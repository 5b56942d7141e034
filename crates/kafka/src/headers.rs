//! CloudEvents binary-mode attributes (`ce_*` headers) and the W3C `traceparent` header that
//! every record carries (the type itself is `substrate_runtime::trace`'s). Parsing is lenient on
//! read and strict on write.

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

pub const CE_ID: &str = "ce_id";
pub const CE_TYPE: &str = "ce_type";
pub const CE_SOURCE: &str = "ce_source";
pub const CE_TIME: &str = "ce_time";
pub const CE_SPECVERSION: &str = "ce_specversion";
pub const CONTENT_TYPE: &str = "content-type";
pub use substrate_runtime::trace::{TraceParent, TRACEPARENT};
pub const AVRO_CONTENT_TYPE: &str = "application/avro";

/// The CloudEvents context attributes of one record.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    pub id: String,
    pub event_type: String,
    pub source: String,
    pub time: DateTime<Utc>,
}

impl CloudEvent {
    pub fn new(id: Uuid, event_type: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            id: id.to_string(),
            event_type: event_type.into(),
            source: source.into(),
            time: Utc::now(),
        }
    }

    /// Headers for binary-mode CloudEvents plus `traceparent`.
    pub fn to_headers(&self, trace: &TraceParent) -> OwnedHeaders {
        let time = self.time.to_rfc3339_opts(SecondsFormat::Millis, true);
        let traceparent = trace.to_string();
        OwnedHeaders::new_with_capacity(7)
            .insert(header(CE_ID, &self.id))
            .insert(header(CE_TYPE, &self.event_type))
            .insert(header(CE_SOURCE, &self.source))
            .insert(header(CE_TIME, &time))
            .insert(header(CE_SPECVERSION, "1.0"))
            .insert(header(CONTENT_TYPE, AVRO_CONTENT_TYPE))
            .insert(header(TRACEPARENT, &traceparent))
    }

    /// Reads the attributes back; `None` when a required one is missing.
    pub fn from_headers<H: Headers>(headers: &H) -> Option<Self> {
        let id = header_str(headers, CE_ID)?.to_string();
        let event_type = header_str(headers, CE_TYPE)?.to_string();
        let source = header_str(headers, CE_SOURCE)
            .unwrap_or_default()
            .to_string();
        let time = header_str(headers, CE_TIME)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(Utc::now);
        Some(Self {
            id,
            event_type,
            source,
            time,
        })
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// The first header named `key` as UTF-8.
pub fn header_str<'a, H: Headers>(headers: &'a H, key: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// A deterministic CloudEvents id for the result of one step of a request: the same request,
/// topic (the unprefixed name) and step always give the same id, so a step repeated after a crash
/// is recognised downstream. `UUIDv5(request, "<topic>#<step>")`.
pub fn derived_event_id(request: Uuid, topic: &str, step: u32) -> Uuid {
    Uuid::new_v5(&request, format!("{topic}#{step}").as_bytes())
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    use super::*;

    #[test]
    fn cloud_event_headers_round_trip() {
        let event = CloudEvent::new(Uuid::new_v4(), "user.message", "/gateway/routes/message");
        let trace = TraceParent::new_root();
        let headers = event.to_headers(&trace);
        assert_eq!(headers.count(), 7);
        let back = CloudEvent::from_headers(&headers).unwrap();
        assert_eq!(back.id, event.id);
        assert_eq!(back.event_type, "user.message");
        assert_eq!(header_str(&headers, CE_SPECVERSION), Some("1.0"));
        assert_eq!(
            TraceParent::parse(header_str(&headers, TRACEPARENT).unwrap()),
            Some(trace)
        );
        assert!((back.time - event.time).num_milliseconds().abs() <= 1);
    }
}
