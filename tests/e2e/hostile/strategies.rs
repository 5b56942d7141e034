//! Generators shared by the properties: JSON values and bodies of every shape.

use super::*;

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

pub(super) fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Object keys: the names the schemas, the webhook payloads and S3 events use, so that arbitrary
/// JSON often comes close to a valid document, and arbitrary text.
#[rustfmt::skip]
pub(super) const KEYS: &[&str] = &[
    "message", "visibility", "recipient_id", "sender_id", "sender_email", "event_id",
    "event_time", "user", "purchase", "id", "amount", "items", "type", "table", "schema",
    "record", "old_record", "last_sign_in_at", "email", "raw_app_meta_data", "provider",
    "Records", "eventName", "s3", "bucket", "name", "object", "key", "size", "file_name",
    "file_path", "media_type", "file_size", "request_id",
];

/// Strings that mean something somewhere: enum symbols, auth values, odd characters.
#[rustfmt::skip]
pub(super) const WORDS: &[&str] = &[
    "broadcast", "direct", "INSERT", "UPDATE", "DELETE", "auth", "users", "VIP", "", " ",
    "\u{0}", "a\u{0}b", "\u{feff}", "\u{202e}", "..", "../../etc/passwd", "image/png",
    "uploads/", "s3:ObjectCreated:Put", "2026-01-01T00:00:00Z", "\u{1F600}", "\\", "\"",
];

/// Numbers as JSON text, including those beyond f64 and i64 (written raw into bodies).
#[rustfmt::skip]
pub(super) const NUMBERS: &[&str] = &[
    "1e400", "-1e400", "1.7976931348623157e309", "123456789012345678901234567890",
    "-123456789012345678901234567890", "18446744073709551616", "-9223372036854775809",
    "9223372036854775807", "1e-400", "-0", "0.0000000000000000000000001", "4.9e-324", "1E+2",
    "00", "1.", ".5", "NaN", "Infinity", "-Infinity", "0x10", "1_000",
];

/// Byte sequences that are not UTF-8: lone continuation bytes, overlong forms, encoded
/// surrogates, out-of-range code points, truncated sequences.
#[rustfmt::skip]
pub(super) const NOT_UTF8: &[&[u8]] = &[
    b"\xff", b"\xfe\xff", b"\x80", b"\xbf", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
    b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xc3", b"\xe2\x82",
    b"\xf0\x9f\x98",
];

/// Surrogate escapes: lone high, lone low, reversed, high before a non-surrogate, and a valid pair.
#[rustfmt::skip]
pub(super) const SURROGATES: &[&str] = &[
    r"\ud800", r"\udc00", r"\udfff\ud800", r"\ud800\u0041", r"\ud800x", r"\udbff\udfff",
    r"\uD83D\uDE00", r"\u", r"\u12", r"\uzzzz",
];

pub(super) fn key() -> impl Strategy<Value = String> {
    prop_oneof![3 => select(KEYS).prop_map(String::from), 1 => any::<String>()]
}

pub(super) fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        select(WORDS).prop_map(Value::from),
        any::<u128>().prop_map(|n| Value::from(Uuid::from_u128(n).to_string())),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// `depth` levels of arrays (`[[[…]]]`) or objects (`{"a":{"a":…1}}`).
pub(super) fn nested(depth: usize, objects: bool) -> String {
    if objects {
        format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
    } else {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }
}

/// A valid `message` event (text without NUL).
pub(super) fn valid_event() -> impl Strategy<Value = Value> {
    "[^\u{0}]{0,40}".prop_map(|text| json!({"message": text, "visibility": "broadcast"}))
}

/// `{"message": …, "visibility": "broadcast"}` with `value` (JSON text) in `field`.
pub(super) fn event_with(field: &str, value: &str) -> String {
    match field {
        "message" => format!(r#"{{"message":{value},"visibility":"broadcast"}}"#),
        "visibility" => format!(r#"{{"message":"m","visibility":{value}}}"#),
        other => format!(r#"{{"message":"m","visibility":"broadcast","{other}":{value}}}"#),
    }
}

/// Hostile event bodies: deep nesting, huge numbers, invalid UTF-8, NUL, duplicate keys,
/// lone surrogates, arbitrary JSON of any shape, JSON cut short and arbitrary bytes.
pub(super) fn event_body() -> impl Strategy<Value = Bytes> {
    let field = || {
        select(vec![
            "message",
            "visibility",
            "recipient_id",
            "sender_id",
            "extra",
        ])
    };
    prop_oneof![
        (100usize..=10_000, any::<bool>(), any::<bool>()).prop_map(|(depth, objects, top)| {
            let deep = nested(depth, objects);
            Bytes::from(if top {
                deep
            } else {
                event_with("message", &deep)
            })
        }),
        (select(NUMBERS), field()).prop_map(|(n, field)| Bytes::from(event_with(field, n))),
        (prop::collection::vec(select(NOT_UTF8), 1..4), 0..3usize).prop_map(|(junk, place)| {
            let junk: Vec<u8> = junk.concat();
            let mut body = Vec::new();
            match place {
                0 => body.extend_from_slice(br#"{"message":""#),
                1 => body.extend_from_slice(br#"{"message":"m","visibility":"broadcast",""#),
                _ => body.extend_from_slice(br#"{"message":"m","visibility":"broadcast"}"#),
            }
            body.extend_from_slice(&junk);
            body.extend_from_slice(match place {
                0 => br#"","visibility":"broadcast"}"#.as_slice(),
                1 => br#"":1}"#.as_slice(),
                _ => b"".as_slice(),
            });
            Bytes(body)
        }),
        select(vec![
            b"{\"message\":\"a\x00b\",\"visibility\":\"broadcast\"}".to_vec(),
            b"{\"mess\x00age\":\"a\",\"visibility\":\"broadcast\"}".to_vec(),
            b"{\"message\":\"a\",\x00\"visibility\":\"broadcast\"}".to_vec(),
            br#"{"message":"\u0000","visibility":"broadcast"}"#.to_vec(),
            br#"{"message":"a","visibility":"broadcast","k\u0000":1}"#.to_vec(),
            br#"{"message":"a","visibility":"broad\u0000cast"}"#.to_vec(),
            b"\x00".to_vec(),
        ])
        .prop_map(Bytes),
        prop::collection::vec((field(), json_value()), 1..6).prop_map(|pairs| {
            let members: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}:{v}", Value::from(*k)))
                .collect();
            Bytes::from(format!(
                r#"{{"visibility":"broadcast",{}}}"#,
                members.join(",")
            ))
        }),
        json_value().prop_map(|v| Bytes::from(v.to_string())),
        (valid_event(), any::<Index>()).prop_map(|(event, cut)| {
            let text = event.to_string().into_bytes();
            let at = cut.index(text.len());
            Bytes(text[..at].to_vec())
        }),
        (select(SURROGATES), field())
            .prop_map(|(s, field)| Bytes::from(event_with(field, &format!("\"{s}\"")))),
        prop::collection::vec(any::<u8>(), 0..512).prop_map(Bytes),
    ]
}

pub(super) fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        8 => Just(Some("application/json".to_string())),
        3 => select(vec![
            "application/json; charset=utf-8", "APPLICATION/JSON", "application/cloudevents+json",
            "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
            "application/jsonx", "json", "", "application/json, text/plain", "*/*",
        ])
        .prop_map(|s| Some(s.to_string())),
        1 => "[ -~]{0,40}".prop_map(Some),
        1 => Just(None),
    ]
}

/// Whether the gateway takes `content_type` as JSON (`application/json` or `application/*+json`).
pub(super) fn is_json_type(content_type: Option<&str>) -> bool {
    let mime = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Whether `bytes` is a JSON object whose strings and keys hold no NUL: the only bodies that may
/// be stored.
pub(super) fn storable_object(bytes: &[u8]) -> bool {
    fn clean(value: &Value) -> bool {
        match value {
            Value::String(s) => !s.contains('\0'),
            Value::Array(items) => items.iter().all(clean),
            Value::Object(map) => map.iter().all(|(k, v)| !k.contains('\0') && clean(v)),
            _ => true,
        }
    }
    matches!(serde_json::from_slice::<Value>(bytes), Ok(v @ Value::Object(_)) if clean(&v))
}

/// A header value of visible ASCII and obs-text (bytes 0x80–0xFF), as a client may send.
pub(super) fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')],
        0..max,
    )
}
