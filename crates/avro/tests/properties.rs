//! Property tests of JSON → Avro conversion against every schema under `avro/`: arbitrary JSON
//! never panics, every refusal names the field at fault with a non-empty message, and whatever
//! converts comes back through Avro → JSON to a document that converts to the same value.

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::strategy::Union;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::Value as Json;
use substrate_avro::json::NamedTypes;
use substrate_avro::{avro_to_json, json_to_avro, Catalog, FieldError, Schema, TopicSchema};

/// Cases per property: enough to reach the odd corners, small enough for a 2-core machine.
/// Failures print the shrunk input; nothing is written next to the sources.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Every type the conversion supports, for what the repository's schemas do not use (yet).
const EVERY_TYPE: &str = r#"{"type": "record", "name": "EveryType", "namespace": "test.properties",
  "fields": [
    {"name": "b", "type": "boolean"},
    {"name": "i", "type": "int"},
    {"name": "l", "type": "long"},
    {"name": "f", "type": "float"},
    {"name": "d", "type": "double"},
    {"name": "s", "type": "string"},
    {"name": "bytes", "type": "bytes"},
    {"name": "fixed", "type": {"type": "fixed", "name": "Four", "size": 4}},
    {"name": "uuid", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "colour", "type": {"type": "enum", "name": "Colour", "symbols": ["red", "green"]}},
    {"name": "date", "type": {"type": "int", "logicalType": "date"}},
    {"name": "ts_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "ts_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "local_ms", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
    {"name": "local_us", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
    {"name": "colours", "type": {"type": "array", "items": "Colour"}},
    {"name": "map", "type": {"type": "map", "values": ["null", "double"]}},
    {"name": "inner", "type": {"type": "record", "name": "Inner",
      "fields": [{"name": "x", "type": ["null", "Four"], "default": null}]}},
    {"name": "inners", "type": {"type": "array", "items": "Inner"}, "default": []},
    {"name": "maybe", "type": ["null", "Inner"], "default": null}
  ]}"#;

/// The repository's schemas, plus `test.every.type` ([`EVERY_TYPE`]).
fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let mut catalog =
            Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../avro")).unwrap();
        assert!(!catalog.is_empty(), "no schemas under avro/");
        catalog.insert("test.every.type", EVERY_TYPE).unwrap();
        catalog
    })
}

fn topics() -> Vec<&'static TopicSchema> {
    catalog().topics().collect()
}

/// Every field name of every record in the repository's schemas, nested ones included.
fn field_names() -> Vec<String> {
    fn collect(schema: &Schema, out: &mut Vec<String>) {
        match schema {
            Schema::Record(record) => {
                for field in &record.fields {
                    out.push(field.name.clone());
                    collect(&field.schema, out);
                }
            }
            Schema::Union(union) => union.variants().iter().for_each(|v| collect(v, out)),
            Schema::Array(array) => collect(&array.items, out),
            Schema::Map(map) => collect(&map.types, out),
            _ => {}
        }
    }
    let mut names = Vec::new();
    for topic in topics() {
        collect(&topic.schema, &mut names);
    }
    names.sort();
    names.dedup();
    names
}

/// Text of every sort: arbitrary Unicode, NUL, UUID-like, times, enum symbols.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        1 => Just(String::new()),
        1 => Just("\u{0}".to_string()),
        1 => "[\u{0}-\u{1f}\u{7f}\u{fffd}\u{1f600}é]{0,4}",
        2 => uuid_text(),
        2 => rfc3339(),
        1 => "[0-9]{4}-[0-9]{2}-[0-9]{2}",
        1 => select(symbols()).prop_map(String::from),
    ]
}

/// Enum symbols of the repository's schemas.
fn symbols() -> Vec<String> {
    fn collect(schema: &Schema, out: &mut Vec<String>) {
        match schema {
            Schema::Enum(e) => out.extend(e.symbols.iter().cloned()),
            Schema::Record(record) => record.fields.iter().for_each(|f| collect(&f.schema, out)),
            Schema::Union(union) => union.variants().iter().for_each(|v| collect(v, out)),
            Schema::Array(array) => collect(&array.items, out),
            Schema::Map(map) => collect(&map.types, out),
            _ => {}
        }
    }
    let mut symbols = vec!["x".to_string()];
    for topic in topics() {
        collect(&topic.schema, &mut symbols);
    }
    symbols
}

/// A UUID in the forms `uuid` parses (hyphenated, either case, simple, braced, URN).
fn uuid_text() -> impl Strategy<Value = String> {
    (any::<u128>(), 0..5u8).prop_map(|(n, form)| {
        let h = format!("{n:032x}");
        let hyphenated = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        );
        match form {
            0 => hyphenated.to_uppercase(),
            1 => h,
            2 => format!("{{{hyphenated}}}"),
            3 => format!("urn:uuid:{hyphenated}"),
            _ => hyphenated,
        }
    })
}

/// An RFC 3339 time anywhere in years 0000–9999, with optional fraction and offset.
fn rfc3339() -> impl Strategy<Value = String> {
    (
        (0..=9999u32, 1..=12u32, 1..=28u32),
        (0..24u32, 0..60u32, 0..60u32),
        prop::option::of("[0-9]{1,9}"),
        prop_oneof![
            Just("Z".to_string()),
            Just("z".to_string()),
            (select(vec!['+', '-']), 0..24u32, 0..60u32)
                .prop_map(|(sign, h, m)| format!("{sign}{h:02}:{m:02}")),
        ],
    )
        .prop_map(|((y, mo, d), (h, mi, s), fraction, offset)| {
            let fraction = fraction.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}{offset}")
        })
}

/// Numbers at and past every boundary a schema cares about.
fn number() -> impl Strategy<Value = Json> {
    prop_oneof![
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<i32>().prop_map(Json::from),
        any::<f64>().prop_map(Json::from), // NaN and infinities become null
        select(vec![
            i64::from(i32::MAX) + 1,
            i64::from(i32::MIN) - 1,
            i64::MAX,
            i64::MIN,
            -1,
            0,
            8_210_266_876_799_999, // the last millisecond of 262143-12-31, chrono's limit
            -8_334_601_228_800_001,
        ])
        .prop_map(Json::from),
        select(vec![1e300, -1e300, 0.5, -0.0, f64::MIN_POSITIVE, 1e19]).prop_map(Json::from),
    ]
}

/// Arbitrary JSON; object keys are arbitrary or the schemas' real field names.
fn json_value() -> impl Strategy<Value = Json> {
    let names = field_names();
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number(),
        text().prop_map(Json::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        let key = prop_oneof![any::<String>(), select(names.clone())];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::btree_map(key, inner, 0..8)
                .prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
}

/// Documents valid for `schema` (as the conversion reads it): every required field, optional
/// fields sometimes left to their defaults, values of every accepted form.
fn valid(schema: &Schema, names: &NamedTypes, namespace: Option<&str>) -> BoxedStrategy<Json> {
    match schema {
        Schema::Null => Just(Json::Null).boxed(),
        Schema::Boolean => any::<bool>().prop_map(Json::Bool).boxed(),
        Schema::Int => any::<i32>().prop_map(Json::from).boxed(),
        Schema::Long => any::<i64>().prop_map(Json::from).boxed(),
        Schema::Float => prop_oneof![
            any::<f32>()
                .prop_filter("finite", |n| n.is_finite())
                .prop_map(|n| Json::from(f64::from(n))),
            any::<i64>().prop_map(Json::from),
        ]
        .boxed(),
        Schema::Double => prop_oneof![
            any::<f64>()
                .prop_filter("finite", |n| n.is_finite())
                .prop_map(Json::from),
            any::<i64>().prop_map(Json::from),
        ]
        .boxed(),
        Schema::String | Schema::Bytes => text().prop_map(Json::String).boxed(),
        Schema::Fixed(fixed) => proptest::string::string_regex(&format!("[ -~]{{{}}}", fixed.size))
            .unwrap()
            .prop_map(Json::String)
            .boxed(),
        Schema::Uuid(_) => uuid_text().prop_map(Json::String).boxed(),
        Schema::Enum(e) => select(e.symbols.clone()).prop_map(Json::String).boxed(),
        Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros => prop_oneof![
            any::<i64>().prop_map(Json::from),
            // Within what chrono can represent (years ±262143 in milliseconds).
            (-8_334_601_228_800_000..=8_210_266_876_799_999i64).prop_map(Json::from),
            rfc3339().prop_map(Json::String),
        ]
        .boxed(),
        Schema::Date => prop_oneof![
            any::<i32>().prop_map(Json::from),
            (-1_000_000..1_000_000i32).prop_map(Json::from),
            (0..=9999u32, 1..=12u32, 1..=28u32)
                .prop_map(|(y, m, d)| Json::String(format!("{y:04}-{m:02}-{d:02}"))),
        ]
        .boxed(),
        Schema::Array(array) => prop::collection::vec(valid(&array.items, names, namespace), 0..4)
            .prop_map(Json::Array)
            .boxed(),
        Schema::Map(map) => {
            prop::collection::btree_map(text(), valid(&map.types, names, namespace), 0..4)
                .prop_map(|m| Json::Object(m.into_iter().collect()))
                .boxed()
        }
        Schema::Union(union) => Union::new(
            union
                .variants()
                .iter()
                .map(|v| valid(v, names, namespace))
                .collect::<Vec<_>>(),
        )
        .boxed(),
        Schema::Record(record) => {
            let inner = record.name.namespace().or(namespace);
            let fields: Vec<BoxedStrategy<Option<(String, Json)>>> = record
                .fields
                .iter()
                .map(|field| {
                    let name = field.name.clone();
                    let value = valid(&field.schema, names, inner);
                    if field.default.is_some() {
                        prop::option::of(value)
                            .prop_map(move |v| v.map(|v| (name.clone(), v)))
                            .boxed()
                    } else {
                        value.prop_map(move |v| Some((name.clone(), v))).boxed()
                    }
                })
                .collect();
            fields
                .prop_map(|fields| Json::Object(fields.into_iter().flatten().collect()))
                .boxed()
        }
        Schema::Ref { name } => {
            let full = name.fully_qualified_name(namespace);
            let target = names
                .get(full.as_ref())
                .or_else(|| names.get(name))
                .unwrap_or_else(|| panic!("unknown type {name:?}"));
            valid(target, names, namespace)
        }
        other => panic!("the generator does not know {other:?}"),
    }
}

/// A topic (by name, so failures print briefly) and a valid document for it.
fn topic_and_document() -> impl Strategy<Value = (String, Json)> {
    // Half the documents are for the schema of every type, half for the repository's.
    let every_type = catalog().get("test.every.type").expect("inserted");
    prop_oneof![select(topics()), Just(every_type)].prop_flat_map(|topic| {
        let namespace = match topic.schema.as_ref() {
            Schema::Record(record) => record.name.namespace(),
            _ => None,
        };
        (
            Just(topic.topic.clone()),
            valid(&topic.schema, &topic.names, namespace),
        )
    })
}

/// One edit of a document: a member (found by following `path` through nested objects)
/// replaced by arbitrary JSON or removed, or an arbitrary member added. Returns the dotted path
/// of what was edited.
fn mutate(doc: &mut Json, path: &[Index], edit: u8, key: &str, value: Json) -> String {
    let mut current = doc;
    let mut at = String::new();
    for (depth, index) in path.iter().enumerate() {
        let Json::Object(object) = current else {
            break;
        };
        let descend =
            depth + 1 < path.len() && object.values().any(Json::is_object) && index.index(4) != 0;
        if object.is_empty() || (!descend && edit == 2) {
            let (key, value) = (key.to_string(), value);
            at = join(&at, &key);
            object.insert(key, value);
            return at;
        }
        let candidates: Vec<String> = if descend {
            object
                .iter()
                .filter(|(_, v)| v.is_object())
                .map(|(k, _)| k.clone())
                .collect()
        } else {
            object.keys().cloned().collect()
        };
        let chosen = candidates[index.index(candidates.len())].clone();
        at = join(&at, &chosen);
        if descend {
            current = object.get_mut(&chosen).expect("chosen among the keys");
            continue;
        }
        if edit == 0 {
            object.insert(chosen, value);
        } else {
            object.remove(&chosen);
        }
        return at;
    }
    at
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// An error is clear: a non-empty message, and the same error by both entry points.
fn assert_clear(topic: &TopicSchema, json: &Json, err: &FieldError) {
    assert!(
        !err.message.trim().is_empty(),
        "{}: empty message for {json}",
        topic.topic
    );
    assert!(err.to_string().contains(&err.message));
}

/// Converts what converted back to JSON and again: the same value, and JSON that is a fixed point.
fn assert_round_trip(
    topic: &TopicSchema,
    value: &substrate_avro::Value,
) -> Result<(), TestCaseError> {
    prop_assert!(
        value.validate(&topic.schema),
        "{}: {value:?} does not validate",
        topic.topic
    );
    let json = avro_to_json(value);
    let again = topic.to_avro(&json).map_err(|e| {
        TestCaseError::fail(format!(
            "{}: {json} does not convert back: {e}",
            topic.topic
        ))
    })?;
    prop_assert_eq!(&again, value, "{}: {}", topic.topic, json);
    prop_assert_eq!(avro_to_json(&again), json);
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary JSON against every schema: no panic; the cached and uncached entry points
    /// agree; errors have a message and name a field of the input or the schema; successes
    /// round-trip.
    #[test]
    fn arbitrary_json_never_panics(json in json_value()) {
        for topic in topics() {
            let result = topic.to_avro(&json);
            prop_assert_eq!(&json_to_avro(&topic.schema, &json), &result);
            match result {
                Ok(value) => assert_round_trip(topic, &value)?,
                Err(err) => {
                    assert_clear(topic, &json, &err);
                    let first = err.field.split(['.', '[']).next().unwrap_or_default();
                    let named = err.field.is_empty()
                        || topic.has_field(first)
                        || json
                            .as_object()
                            .is_some_and(|o| o.keys().any(|k| err.field.starts_with(k.as_str())));
                    prop_assert!(
                        named,
                        "{}: `{}` names nothing of {}",
                        topic.topic,
                        err.field,
                        json
                    );
                }
            }
        }
    }

    /// Documents valid for a topic's schema convert, validate and round-trip.
    #[test]
    fn valid_documents_convert_and_round_trip((topic, doc) in topic_and_document()) {
        let topic = catalog().get(&topic).expect("a topic of the catalog");
        let value = topic
            .to_avro(&doc)
            .map_err(|e| TestCaseError::fail(format!("{}: {doc} refused: {e}", topic.topic)))?;
        assert_round_trip(topic, &value)?;
    }

    /// A valid document with one member replaced (by arbitrary JSON, real field names included),
    /// removed or added: no panic; an error names the edited member (or something inside it).
    #[test]
    fn one_edit_is_reported_at_its_path(
        (topic, mut doc) in topic_and_document(),
        path in prop::collection::vec(any::<Index>(), 1..4),
        edit in 0..3u8,
        key in prop_oneof![any::<String>(), select(field_names())],
        value in json_value(),
    ) {
        let topic = catalog().get(&topic).expect("a topic of the catalog");
        let at = mutate(&mut doc, &path, edit, &key, value);
        match topic.to_avro(&doc) {
            Ok(value) => assert_round_trip(topic, &value)?,
            Err(err) => {
                assert_clear(topic, &doc, &err);
                prop_assert!(
                    err.field.starts_with(&at),
                    "{}: edited `{}` but the error is about `{}` ({}) in {}",
                    topic.topic, at, err.field, err.message, doc
                );
            }
        }
    }
}
