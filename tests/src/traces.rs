//! Traces read back from the stack's Jaeger through its query API (`/api/v3/traces/{id}`, OTLP
//! JSON), flattened to one [`Span`] per span with its service and attributes.

use std::collections::BTreeMap;

use serde_json::Value;

/// One span of a trace as Jaeger stored it.
#[derive(Debug, Clone)]
pub struct Span {
    /// `service.name` of the process that recorded it.
    pub service: String,
    pub name: String,
    /// Lowercase hex.
    pub span_id: String,
    /// Lowercase hex; empty for a root span.
    pub parent_span_id: String,
    /// OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i64,
    /// Attribute values as JSON (strings, numbers, booleans).
    pub attributes: BTreeMap<String, Value>,
    /// The spans this one links to, as (trace id, span id) in hex.
    pub links: Vec<(String, String)>,
    /// The span's status says it failed.
    pub error: bool,
}

impl Span {
    /// A string attribute (numbers are given as their text).
    pub fn attr(&self, key: &str) -> Option<String> {
        self.attributes.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// The stack's Jaeger query API (`JAEGER_URL`).
pub fn jaeger_url() -> String {
    crate::stack_setting("JAEGER_URL").unwrap_or_else(|| "http://127.0.0.1:16686".into())
}

/// The spans Jaeger holds for `trace_id` (hex); `None` while it knows none.
pub async fn trace(jaeger: &str, trace_id: &str) -> Option<Vec<Span>> {
    let response = reqwest::get(format!("{jaeger}/api/v3/traces/{trace_id}"))
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    let spans = parse(&body);
    (!spans.is_empty()).then_some(spans)
}

/// OTLP span kinds.
pub const SERVER: i64 = 2;
pub const CLIENT: i64 = 3;
pub const PRODUCER: i64 = 4;
pub const CONSUMER: i64 = 5;

/// Waits (at most `timeout`: spans arrive in the services' export batches, a span only once it
/// ended) until the trace holds a span of every `(service, name)` of `expected`; panics naming
/// what is missing and what is there.
pub async fn wait_for(
    trace_id: &str,
    expected: &[(&str, &str)],
    timeout: std::time::Duration,
) -> Vec<Span> {
    let jaeger = jaeger_url();
    let missing = |spans: &[Span]| -> Vec<String> {
        expected
            .iter()
            .filter(|(service, name)| {
                !spans
                    .iter()
                    .any(|s| s.service == *service && s.name == *name)
            })
            .map(|(service, name)| format!("{service} `{name}`"))
            .collect()
    };
    let found = crate::eventually(
        timeout,
        &format!("the spans of trace {trace_id}"),
        || async {
            let spans = trace(&jaeger, trace_id).await?;
            missing(&spans).is_empty().then_some(spans)
        },
    )
    .await;
    match found {
        Ok(spans) => spans,
        Err(e) => {
            let seen = trace(&jaeger, trace_id).await.unwrap_or_default();
            panic!(
                "{e}: missing {:?}; the trace has {:#?}",
                missing(&seen),
                seen.iter()
                    .map(|s| format!("{} `{}`", s.service, s.name))
                    .collect::<Vec<_>>()
            )
        }
    }
}

/// The one span of `service` named `name`.
pub fn one<'a>(spans: &'a [Span], service: &str, name: &str) -> &'a Span {
    let matching: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one `{name}` span of {service} expected, got {matching:#?}"
    );
    matching[0]
}

/// The span whose id is `id`.
pub fn by_id<'a>(spans: &'a [Span], id: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.span_id == id)
        .unwrap_or_else(|| panic!("no span {id} in the trace: {spans:#?}"))
}

/// The span named `write` of `service` that wrote a batch holding the work of span `member`
/// (its parent, or linked from it: the write is in the first member's trace), and the child
/// span named `insert` it made; searches the traces of `service` since `since`.
pub async fn batch_write(
    member: &Span,
    service: &str,
    write: &str,
    insert: &str,
    since: chrono::DateTime<chrono::Utc>,
    timeout: std::time::Duration,
) -> (Span, Span) {
    let jaeger = jaeger_url();
    crate::eventually(
        timeout,
        &format!("`{write}` of {service} for {}", member.name),
        || async {
            let candidates = search(
                &jaeger,
                service,
                since - chrono::Duration::seconds(5),
                chrono::Utc::now() + chrono::Duration::seconds(5),
                1000,
            )
            .await;
            let write = candidates
                .iter()
                .find(|s| {
                    s.name == write
                        && (s.parent_span_id == member.span_id
                            || s.links.iter().any(|(_, id)| *id == member.span_id))
                })?
                .clone();
            let insert = candidates
                .iter()
                .find(|s| s.name == insert && s.parent_span_id == write.span_id)?
                .clone();
            Some((write, insert))
        },
    )
    .await
    .unwrap()
}

/// The spans of up to `limit` traces that have spans of `service` started between `from` and
/// `to` (Jaeger's v3 search; `num_traces` is required by it).
pub async fn search(
    jaeger: &str,
    service: &str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    limit: usize,
) -> Vec<Span> {
    let format =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    // RFC 3339 in UTC ("…Z") needs no escaping in a query string.
    let url = format!(
        "{jaeger}/api/v3/traces?query.service_name={service}&query.start_time_min={}&query.start_time_max={}&query.num_traces={limit}",
        format(from),
        format(to)
    );
    let response = reqwest::get(url).await;
    match response {
        Ok(r) if r.status().is_success() => match r.json::<Value>().await {
            Ok(body) => parse(&body),
            Err(_) => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Flattens an OTLP JSON `TracesData` (or Jaeger's `{"result": …}` around it).
pub fn parse(body: &Value) -> Vec<Span> {
    let data = body.get("result").unwrap_or(body);
    let mut spans = Vec::new();
    for resource in data["resourceSpans"].as_array().into_iter().flatten() {
        let service = attributes(&resource["resource"]["attributes"])
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                spans.push(Span {
                    service: service.clone(),
                    name: span["name"].as_str().unwrap_or_default().to_string(),
                    span_id: id(&span["spanId"]),
                    parent_span_id: id(&span["parentSpanId"]),
                    kind: kind(&span["kind"]),
                    attributes: attributes(&span["attributes"]),
                    links: span["links"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|l| (id(&l["traceId"]), id(&l["spanId"])))
                        .collect(),
                    error: matches!(&span["status"]["code"], Value::Number(n) if n.as_i64() == Some(2))
                        || span["status"]["code"] == "STATUS_CODE_ERROR",
                });
            }
        }
    }
    spans
}

/// OTLP JSON gives ids in hex; protobuf-JSON mappings give them in base64. Either becomes hex.
fn id(value: &Value) -> String {
    let text = value.as_str().unwrap_or_default();
    let is_hex =
        (text.len() == 16 || text.len() == 32) && text.chars().all(|c| c.is_ascii_hexdigit());
    if text.is_empty() || is_hex {
        return text.to_ascii_lowercase();
    }
    use base64::Engine as _;
    match base64::engine::general_purpose::STANDARD.decode(text) {
        Ok(bytes) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => text.to_string(),
    }
}

fn kind(value: &Value) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.as_str() {
            "SPAN_KIND_INTERNAL" => 1,
            "SPAN_KIND_SERVER" => 2,
            "SPAN_KIND_CLIENT" => 3,
            "SPAN_KIND_PRODUCER" => 4,
            "SPAN_KIND_CONSUMER" => 5,
            _ => 0,
        },
        _ => 0,
    }
}

fn attributes(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_string();
            let value = &kv["value"];
            let value = value
                .get("stringValue")
                .cloned()
                .or_else(|| {
                    value.get("intValue").map(|v| match v {
                        // int64 travels as a string in protobuf JSON
                        Value::String(s) => s.parse::<i64>().map(Value::from).unwrap_or(v.clone()),
                        other => other.clone(),
                    })
                })
                .or_else(|| value.get("doubleValue").cloned())
                .or_else(|| value.get("boolValue").cloned())
                .unwrap_or(Value::Null);
            Some((key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_otlp_json_with_hex_or_base64_ids() {
        let body = json!({"result": {"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "gateway"}}]},
            "scopeSpans": [{"spans": [{
                "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
                "spanId": "APBnqgupArc=",
                "parentSpanId": "",
                "name": "POST /api/v1/events/{route}",
                "kind": 2,
                "attributes": [
                    {"key": "http.response.status_code", "value": {"intValue": "202"}},
                    {"key": "http.route", "value": {"stringValue": "/api/v1/events/{route}"}}
                ]
            }]}]
        }]}});
        let spans = parse(&body);
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.service, "gateway");
        assert_eq!(span.span_id, "00f067aa0ba902b7");
        assert_eq!(span.kind, 2);
        assert_eq!(
            span.attr("http.response.status_code").as_deref(),
            Some("202")
        );
        assert_eq!(
            span.attr("http.route").as_deref(),
            Some("/api/v1/events/{route}")
        );
    }
}
