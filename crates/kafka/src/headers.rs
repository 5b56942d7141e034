//! CloudEvents binary-mode attributes (`ce_*` headers) and the W3C `traceparent` header that
//! every record carries. Parsing is lenient on read and strict on write.

use chrono::{DateTime, SecondsFormat, Utc};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

pub const CE_ID: &str = "ce_id";
pub const CE_TYPE: &str = "ce_type";
pub const CE_SOURCE: &str = "ce_source";
pub const CE_TIME: &str = "ce_time";
pub const CE_SPECVERSION: &str = "ce_specversion";
pub const CONTENT_TYPE: &str = "content-type";
pub const TRACEPARENT: &str = "traceparent";
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

/// W3C Trace Context `traceparent`: `00-<trace id>-<parent id>-<flags>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// A new root trace.
    pub fn new_root() -> Self {
        Self {
            trace_id: rand::random::<u128>().max(1),
            parent_id: rand::random::<u64>().max(1),
            sampled: true,
        }
    }

    /// A child span in the same trace (a new parent id).
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id,
            parent_id: rand::random::<u64>().max(1),
            sampled: self.sampled,
        }
    }

    /// Parses a header value; invalid values (wrong length, all-zero ids, version ff) are `None`.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = parts.next()?;
        let trace = parts.next()?;
        let parent = parts.next()?;
        let flags = parts.next()?;
        if version.len() != 2 || version == "ff" || trace.len() != 32 || parent.len() != 16 {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
        if trace_id == 0 || parent_id == 0 || trace.chars().any(|c| c.is_ascii_uppercase()) {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.parent_id,
            u8::from(self.sampled)
        )
    }
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
    fn traceparent_round_trips_and_rejects_invalid() {
        let tp = TraceParent::new_root();
        let text = tp.to_string();
        assert_eq!(text.len(), 55);
        assert_eq!(TraceParent::parse(&text), Some(tp));
        let known = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed = TraceParent::parse(known).unwrap();
        assert_eq!(parsed.to_string(), known);
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        let child = parsed.child();
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_ne!(child.parent_id, parsed.parent_id);
    }

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
