//! What a dotted path means for a topic's Avro schema: where the value sits in a decoded record
//! (field positions, checked by name at run time) and its type, or a CloudEvents attribute
//! (`ce.id`, `ce.type`, `ce.source`, `ce.time`) when the record has no field `ce`.

use std::collections::HashMap;

use apache_avro::schema::{Name, ResolvedSchema};
use apache_avro::Schema;

use crate::RuleError;

#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    Int,
    Float,
    String,
    Uuid,
    Bool,
    Enum(Vec<String>),
    /// Milliseconds (or microseconds) since the epoch; rules may use numbers or RFC 3339.
    Timestamp {
        micros: bool,
    },
    Array(Box<FieldType>),
    /// Records, maps, bytes and other types only `exists` applies to.
    Opaque(&'static str),
}

impl FieldType {
    pub fn describe(&self) -> String {
        match self {
            Self::Int => "an integer".into(),
            Self::Float => "a number".into(),
            Self::String => "a string".into(),
            Self::Uuid => "a UUID".into(),
            Self::Bool => "a boolean".into(),
            Self::Enum(symbols) => format!("an enum of {}", symbols.join("|")),
            Self::Timestamp { .. } => "a timestamp".into(),
            Self::Array(inner) => format!("an array of {}", inner.describe()),
            Self::Opaque(kind) => format!("a {kind}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeAttribute {
    Id,
    Type,
    Source,
    Time,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    /// Positions and names of the fields from the root record down.
    Record(Vec<(usize, String)>),
    Ce(CeAttribute),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldInfo {
    pub location: Location,
    pub ty: FieldType,
    pub nullable: bool,
}

/// Resolves `path` against the record `schema`.
pub fn resolve(schema: &Schema, path: &str) -> Result<FieldInfo, RuleError> {
    let resolved = ResolvedSchema::try_from(schema)
        .map_err(|e| RuleError::Malformed(format!("the topic's schema cannot be resolved: {e}")))?;
    let names = resolved.get_names();
    let Schema::Record(root) = schema else {
        return Err(RuleError::Malformed(
            "the topic's schema is not a record".into(),
        ));
    };
    if let Some(attribute) = path.strip_prefix("ce.") {
        if !root.lookup.contains_key("ce") {
            let (attr, ty) = match attribute {
                "id" => (CeAttribute::Id, FieldType::String),
                "type" => (CeAttribute::Type, FieldType::String),
                "source" => (CeAttribute::Source, FieldType::String),
                "time" => (CeAttribute::Time, FieldType::Timestamp { micros: false }),
                _ => return Err(RuleError::UnknownField(path.to_string())),
            };
            return Ok(FieldInfo {
                location: Location::Ce(attr),
                ty,
                nullable: false,
            });
        }
    }
    let mut current: &Schema = schema;
    let mut location = Vec::new();
    let mut nullable = false;
    let segments: Vec<&str> = path.split('.').collect();
    for (i, segment) in segments.iter().enumerate() {
        let Schema::Record(record) = deref(current, names) else {
            return Err(RuleError::UnknownField(path.to_string()));
        };
        let index = *record
            .lookup
            .get(*segment)
            .ok_or_else(|| RuleError::UnknownField(path.to_string()))?;
        location.push((index, segment.to_string()));
        let (inner, optional) = unwrap_nullable(&record.fields[index].schema);
        nullable |= optional;
        current = deref(inner, names);
        if i + 1 < segments.len() && !matches!(current, Schema::Record(_)) {
            return Err(RuleError::UnknownField(path.to_string()));
        }
    }
    Ok(FieldInfo {
        location: Location::Record(location),
        ty: type_of(current, names),
        nullable,
    })
}

fn deref<'a>(schema: &'a Schema, names: &'a HashMap<Name, &'a Schema>) -> &'a Schema {
    match schema {
        Schema::Ref { name } => names.get(name).copied().unwrap_or(schema),
        other => other,
    }
}

fn unwrap_nullable(schema: &Schema) -> (&Schema, bool) {
    if let Schema::Union(union) = schema {
        let variants = union.variants();
        let non_null: Vec<&Schema> = variants
            .iter()
            .filter(|v| !matches!(v, Schema::Null))
            .collect();
        if non_null.len() == 1 {
            return (non_null[0], variants.len() > 1);
        }
    }
    (schema, false)
}

fn type_of(schema: &Schema, names: &HashMap<Name, &Schema>) -> FieldType {
    match schema {
        Schema::Int | Schema::Long => FieldType::Int,
        Schema::Float | Schema::Double => FieldType::Float,
        Schema::String => FieldType::String,
        Schema::Uuid(_) => FieldType::Uuid,
        Schema::Boolean => FieldType::Bool,
        Schema::Enum(e) => FieldType::Enum(e.symbols.clone()),
        Schema::TimestampMillis | Schema::LocalTimestampMillis => {
            FieldType::Timestamp { micros: false }
        }
        Schema::TimestampMicros | Schema::LocalTimestampMicros => {
            FieldType::Timestamp { micros: true }
        }
        Schema::Array(array) => {
            FieldType::Array(Box::new(type_of(deref(&array.items, names), names)))
        }
        Schema::Record(_) => FieldType::Opaque("record"),
        Schema::Map(_) => FieldType::Opaque("map"),
        Schema::Union(_) => FieldType::Opaque("union"),
        _ => FieldType::Opaque("value of an unsupported type"),
    }
}
