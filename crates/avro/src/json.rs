//! JSON ⇄ Avro. `json_to_avro` validates a client's JSON against a record schema and reports the
//! first problem with the dotted path of the field; unknown fields are rejected. `avro_to_json`
//! renders decoded records for sinks (uuids as strings, timestamps as RFC 3339).

use std::collections::HashMap;

use apache_avro::schema::{Name, Namespace, ResolvedSchema};
use apache_avro::types::Value;
use apache_avro::Schema;
use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use serde_json::Value as Json;

/// A validation failure for one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct FieldError {
    /// Dotted path, e.g. `recipient_id` or `items[2].name`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Named types of a schema, resolved once (records, enums and fixed types referenced by name).
pub type NamedTypes = HashMap<Name, Schema>;

/// Resolves the named types of `schema` (do this once per schema, not per event).
pub fn named_types(schema: &Schema) -> Result<NamedTypes, String> {
    let resolved =
        ResolvedSchema::try_from(schema).map_err(|e| format!("schema cannot be resolved: {e}"))?;
    Ok(resolved
        .get_names()
        .iter()
        .map(|(name, schema)| (name.clone(), (*schema).clone()))
        .collect())
}

/// Converts `json` to an Avro value of `schema` (a record schema for events).
pub fn json_to_avro(schema: &Schema, json: &Json) -> Result<Value, FieldError> {
    let names = named_types(schema).map_err(|e| FieldError::new("", e))?;
    json_to_avro_with(schema, &names, json)
}

/// Like [`json_to_avro`] with the named types resolved beforehand (the hot path).
pub fn json_to_avro_with(
    schema: &Schema,
    names: &NamedTypes,
    json: &Json,
) -> Result<Value, FieldError> {
    let converter = Converter { names };
    let namespace = match schema {
        Schema::Record(record) => record.name.namespace().map(String::from),
        _ => None,
    };
    converter.convert(schema, json, "", &namespace)
}

struct Converter<'a> {
    names: &'a NamedTypes,
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

fn kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn expected(path: &str, what: &str, json: &Json) -> FieldError {
    FieldError::new(path, format!("expected {what}, got {}", kind(json)))
}

impl Converter<'_> {
    fn convert(
        &self,
        schema: &Schema,
        json: &Json,
        path: &str,
        namespace: &Namespace,
    ) -> Result<Value, FieldError> {
        match schema {
            Schema::Null => match json {
                Json::Null => Ok(Value::Null),
                other => Err(expected(path, "null", other)),
            },
            Schema::Boolean => json
                .as_bool()
                .map(Value::Boolean)
                .ok_or_else(|| expected(path, "a boolean", json)),
            Schema::Int => json
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(Value::Int)
                .ok_or_else(|| expected(path, "a 32-bit integer", json)),
            Schema::Long => json
                .as_i64()
                .map(Value::Long)
                .ok_or_else(|| expected(path, "an integer", json)),
            Schema::Float => {
                let n = json
                    .as_f64()
                    .ok_or_else(|| expected(path, "a number", json))?;
                match n as f32 {
                    f if f.is_finite() => Ok(Value::Float(f)),
                    _ => Err(FieldError::new(
                        path,
                        "expected a number within the range of a 32-bit float",
                    )),
                }
            }
            Schema::Double => json
                .as_f64()
                .map(Value::Double)
                .ok_or_else(|| expected(path, "a number", json)),
            Schema::String => json
                .as_str()
                .map(|s| Value::String(s.to_string()))
                .ok_or_else(|| expected(path, "a string", json)),
            Schema::Bytes => json
                .as_str()
                .map(|s| Value::Bytes(s.as_bytes().to_vec()))
                .ok_or_else(|| expected(path, "a string", json)),
            Schema::Fixed(fixed) => {
                let s = json
                    .as_str()
                    .ok_or_else(|| expected(path, "a string", json))?;
                if s.len() != fixed.size {
                    return Err(FieldError::new(
                        path,
                        format!("expected exactly {} bytes", fixed.size),
                    ));
                }
                Ok(Value::Fixed(fixed.size, s.as_bytes().to_vec()))
            }
            Schema::Uuid(_) => {
                let s = json
                    .as_str()
                    .ok_or_else(|| expected(path, "a UUID string", json))?;
                uuid::Uuid::parse_str(s)
                    .map(Value::Uuid)
                    .map_err(|_| FieldError::new(path, "expected a UUID"))
            }
            Schema::Enum(e) => {
                let s = json
                    .as_str()
                    .ok_or_else(|| expected(path, "a string", json))?;
                match e.symbols.iter().position(|sym| sym == s) {
                    Some(i) => Ok(Value::Enum(i as u32, s.to_string())),
                    None => Err(FieldError::new(
                        path,
                        format!("must be one of: {}", e.symbols.join(", ")),
                    )),
                }
            }
            Schema::TimestampMillis => timestamp(json, path, 1_000).map(Value::TimestampMillis),
            Schema::TimestampMicros => timestamp(json, path, 1_000_000).map(Value::TimestampMicros),
            Schema::LocalTimestampMillis => {
                timestamp(json, path, 1_000).map(Value::LocalTimestampMillis)
            }
            Schema::LocalTimestampMicros => {
                timestamp(json, path, 1_000_000).map(Value::LocalTimestampMicros)
            }
            Schema::Date => {
                if let Some(days) = json.as_i64().and_then(|d| i32::try_from(d).ok()) {
                    return Ok(Value::Date(days));
                }
                let s = json
                    .as_str()
                    .ok_or_else(|| expected(path, "a date (YYYY-MM-DD)", json))?;
                let date = NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map_err(|_| FieldError::new(path, "expected a date (YYYY-MM-DD)"))?;
                let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
                Ok(Value::Date((date - epoch).num_days() as i32))
            }
            Schema::Array(array) => {
                let items = json
                    .as_array()
                    .ok_or_else(|| expected(path, "an array", json))?;
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        self.convert(&array.items, item, &format!("{path}[{i}]"), namespace)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
            Schema::Map(map) => {
                let object = json
                    .as_object()
                    .ok_or_else(|| expected(path, "an object", json))?;
                object
                    .iter()
                    .map(|(k, v)| {
                        self.convert(&map.types, v, &join(path, k), namespace)
                            .map(|v| (k.clone(), v))
                    })
                    .collect::<Result<HashMap<_, _>, _>>()
                    .map(Value::Map)
            }
            Schema::Union(union) => {
                let variants = union.variants();
                if json.is_null() {
                    return variants
                        .iter()
                        .position(|v| matches!(v, Schema::Null))
                        .map(|i| Value::Union(i as u32, Box::new(Value::Null)))
                        .ok_or_else(|| FieldError::new(path, "must not be null"));
                }
                let mut first_error = None;
                for (i, variant) in variants.iter().enumerate() {
                    if matches!(variant, Schema::Null) {
                        continue;
                    }
                    match self.convert(variant, json, path, namespace) {
                        Ok(value) => return Ok(Value::Union(i as u32, Box::new(value))),
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                Err(first_error.unwrap_or_else(|| FieldError::new(path, "no matching type")))
            }
            Schema::Record(record) => {
                let object = json
                    .as_object()
                    .ok_or_else(|| expected(path, "an object", json))?;
                if let Some(unknown) = object.keys().find(|k| !record.lookup.contains_key(*k)) {
                    return Err(FieldError::new(join(path, unknown), "unknown field"));
                }
                let inner_ns = record
                    .name
                    .namespace()
                    .map(String::from)
                    .or_else(|| namespace.clone());
                let mut fields = Vec::with_capacity(record.fields.len());
                for field in &record.fields {
                    let field_path = join(path, &field.name);
                    let value = match object.get(&field.name) {
                        Some(v) => self.convert(&field.schema, v, &field_path, &inner_ns)?,
                        None => match (&field.default, &field.schema) {
                            (Some(default), Schema::Union(union)) => {
                                let first = union.variants().first().unwrap_or(&Schema::Null);
                                let v = self.convert(first, default, &field_path, &inner_ns)?;
                                Value::Union(0, Box::new(v))
                            }
                            (Some(default), schema) => {
                                self.convert(schema, default, &field_path, &inner_ns)?
                            }
                            (None, _) => {
                                return Err(FieldError::new(field_path, "is required"));
                            }
                        },
                    };
                    fields.push((field.name.clone(), value));
                }
                Ok(Value::Record(fields))
            }
            Schema::Ref { name } => {
                let full = name.fully_qualified_name(namespace.as_deref());
                let target = self
                    .names
                    .get(full.as_ref())
                    .or_else(|| self.names.get(name))
                    .ok_or_else(|| FieldError::new(path, format!("unknown type {name}")))?;
                self.convert(target, json, path, namespace)
            }
            other => Err(FieldError::new(
                path,
                format!("the schema type {other:?} is not supported over JSON"),
            )),
        }
    }
}

fn timestamp(json: &Json, path: &str, per_second: i64) -> Result<i64, FieldError> {
    if let Some(n) = json.as_i64() {
        return Ok(n);
    }
    let s = json
        .as_str()
        .ok_or_else(|| expected(path, "an RFC 3339 time or an integer", json))?;
    let time = DateTime::parse_from_rfc3339(s)
        .map_err(|_| FieldError::new(path, "expected an RFC 3339 time"))?;
    Ok(if per_second == 1_000 {
        time.timestamp_millis()
    } else {
        time.timestamp_micros()
    })
}

/// Renders a decoded Avro value as JSON for sinks and people.
pub fn avro_to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Int(n) => Json::from(*n),
        Value::Long(n) => Json::from(*n),
        Value::Float(n) => Json::from(*n),
        Value::Double(n) => Json::from(*n),
        Value::Bytes(b) | Value::Fixed(_, b) => Json::String(String::from_utf8_lossy(b).into()),
        Value::String(s) | Value::Enum(_, s) => Json::String(s.clone()),
        Value::Union(_, inner) => avro_to_json(inner),
        Value::Array(items) => Json::Array(items.iter().map(avro_to_json).collect()),
        Value::Map(map) => Json::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect(),
        ),
        Value::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), avro_to_json(v)))
                .collect(),
        ),
        Value::Uuid(u) => Json::String(u.to_string()),
        Value::Date(days) => {
            // Dates chrono cannot hold or a four-digit year cannot write stay day numbers.
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
            match epoch
                .checked_add_signed(chrono::Duration::days(i64::from(*days)))
                .filter(|d| (0..=9999).contains(&d.year()))
            {
                Some(date) => Json::String(date.format("%Y-%m-%d").to_string()),
                None => Json::from(*days),
            }
        }
        Value::TimestampMillis(ms) | Value::LocalTimestampMillis(ms) => {
            rfc3339(DateTime::<Utc>::from_timestamp_millis(*ms), *ms)
        }
        Value::TimestampMicros(us) | Value::LocalTimestampMicros(us) => {
            rfc3339(DateTime::<Utc>::from_timestamp_micros(*us), *us)
        }
        Value::TimeMillis(n) => Json::from(*n),
        Value::TimeMicros(n) | Value::TimestampNanos(n) | Value::LocalTimestampNanos(n) => {
            Json::from(*n)
        }
        other => Json::String(format!("{other:?}")),
    }
}

/// RFC 3339 only writes years 0000–9999: other times stay numbers (which convert back).
fn rfc3339(time: Option<DateTime<Utc>>, raw: i64) -> Json {
    match time.filter(|t| (0..=9999).contains(&t.year())) {
        Some(t) => Json::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        None => Json::from(raw),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message_schema() -> Schema {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../avro/public/user/message.events.avsc"
        ))
        .unwrap();
        Schema::parse_str(&text).unwrap()
    }

    fn valid() -> Json {
        json!({
            "event_id": "0b6b1d2e-8a39-4a4e-9e55-7d4b8f1b2c3d",
            "event_time": "2026-11-25T10:00:00Z",
            "sender_id": "6f0e4e5c-1d2b-4c3a-9f8e-7d6c5b4a3928",
            "message": "hi",
            "visibility": "direct",
            "recipient_id": "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
        })
    }

    #[test]
    fn converts_a_valid_event_and_validates_against_the_schema() {
        let schema = message_schema();
        let value = json_to_avro(&schema, &valid()).unwrap();
        assert!(value.validate(&schema));
        let back = avro_to_json(&value);
        assert_eq!(back["message"], "hi");
        assert_eq!(back["visibility"], "direct");
        assert_eq!(back["sender_email"], Json::Null);
        assert_eq!(back["event_time"], "2026-11-25T10:00:00Z");
        assert_eq!(back["recipient_id"], "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d");
    }

    #[test]
    fn names_the_offending_field() {
        let schema = message_schema();
        let cases = [
            ("message", json!(5), "message", "expected a string"),
            (
                "visibility",
                json!("everyone"),
                "visibility",
                "must be one of",
            ),
            ("recipient_id", json!("not-a-uuid"), "recipient_id", "UUID"),
            ("event_time", json!("yesterday"), "event_time", "RFC 3339"),
        ];
        for (field, bad, path, fragment) in cases {
            let mut doc = valid();
            doc[field] = bad;
            let err = json_to_avro(&schema, &doc).unwrap_err();
            assert_eq!(err.field, path);
            assert!(err.message.contains(fragment), "{err}");
        }
        let mut doc = valid();
        doc.as_object_mut().unwrap().remove("message");
        assert_eq!(
            json_to_avro(&schema, &doc).unwrap_err(),
            FieldError::new("message", "is required")
        );
        let mut doc = valid();
        doc["colour"] = json!("red");
        assert_eq!(json_to_avro(&schema, &doc).unwrap_err().field, "colour");
        assert_eq!(json_to_avro(&schema, &json!([1])).unwrap_err().field, "");
    }

    #[test]
    fn optional_fields_take_their_defaults() {
        let schema = message_schema();
        let mut doc = valid();
        doc.as_object_mut().unwrap().remove("recipient_id");
        doc["visibility"] = json!("broadcast");
        let value = json_to_avro(&schema, &doc).unwrap();
        assert!(value.validate(&schema));
    }

    #[test]
    fn nested_paths_are_reported() {
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"Order","fields":[
                {"name":"items","type":{"type":"array","items":{"type":"record","name":"Item","fields":[
                    {"name":"sku","type":"string"},{"name":"qty","type":"int"}]}}},
                {"name":"first","type":["null","Item"],"default":null}]}"#,
        )
        .unwrap();
        let doc = json!({"items":[{"sku":"a","qty":1},{"sku":"b","qty":"x"}]});
        let err = json_to_avro(&schema, &doc).unwrap_err();
        assert_eq!(err.field, "items[1].qty");
        let doc = json!({"items":[], "first": {"sku":"a","qty":1}});
        let value = json_to_avro(&schema, &doc).unwrap();
        assert!(value.validate(&schema));
    }
}
