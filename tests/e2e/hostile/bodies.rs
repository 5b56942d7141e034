//! Event bodies (deep nesting, huge numbers, invalid UTF-8, NUL, duplicate keys) and batches.

use super::strategies::*;
use super::*;

// ---------------------------------------------------------------------------------------------
// Event bodies and batches
// ---------------------------------------------------------------------------------------------

#[test]
pub(super) fn hostile_event_bodies_are_refused_with_json() {
    let edge = edge();
    let url = edge.url("/api/v1/events/message");
    let token = edge.token();
    property(
        "event bodies",
        256,
        (event_body(), content_type()),
        |(body, content_type)| {
            runtime().block_on(async {
                let mut request = http().post(&url).bearer_auth(&token).body(body.0.clone());
                if let Some(content_type) = &content_type {
                    request = request.header("content-type", content_type);
                }
                let answer = send(request).await?;
                let reply = check(&answer, &[202, 400, 413, 415])?;
                if !body.0.is_empty() && [413, 415].contains(&answer.status) {
                    closes(&answer)?;
                }
                if !is_json_type(content_type.as_deref()) {
                    prop_assert_eq!(answer.status, 415, "{:?}", answer);
                } else if body.0.len() > 65_536 {
                    prop_assert_eq!(answer.status, 413, "{:?}", answer);
                } else if !storable_object(&body.0) {
                    // Not JSON, not an object, or a NUL in a string or key: never stored.
                    prop_assert_eq!(answer.status, 400, "{:?}", answer);
                    prop_assert!(
                        ["invalid_json", "invalid_field"].contains(&code(&reply)),
                        "{:?}",
                        answer
                    );
                }
                Ok(())
            })
        },
    );
    runtime().block_on(edge.alive());
}

/// Duplicate keys: the gateway reads JSON with serde_json, where the last of a repeated key
/// wins (RFC 8259 leaves the meaning open). So `{"message":"a","message":1}` is the event
/// `{"message":1}` (400: not a string) and `{"message":1,"message":"a"}` is stored with "a".
#[test]
pub(super) fn duplicate_keys_take_the_last_value() {
    let edge = edge();
    runtime().block_on(async {
        let post = |body: &'static str| {
            http()
                .post(edge.url("/api/v1/events/message"))
                .bearer_auth(edge.token())
                .header("content-type", "application/json")
                .body(body)
        };
        let answer = send(post(
            r#"{"message":"a","message":1,"visibility":"broadcast"}"#,
        ))
        .await
        .unwrap();
        let body = check(&answer, &[400]).unwrap();
        assert_eq!(body["error"]["field"], "message", "{answer:?}");
        let answer = send(post(
            r#"{"message":1,"message":"a","visibility":"broadcast"}"#,
        ))
        .await
        .unwrap();
        check(&answer, &[202]).unwrap();
    });
}

/// Text with a NUL character that does not come from the body is refused too: an email claim
/// enriched into the event, the login webhook's record. Both were stored (202), and the writer
/// then dead-lettered the row PostgreSQL refused.
#[test]
pub(super) fn nul_text_from_claims_and_the_login_webhook_is_refused() {
    let edge = edge();
    runtime().block_on(async {
        let mut claims = good_claims();
        claims["email"] = json!("a\u{0}b@example.com");
        let answer = send(
            http()
                .post(edge.url("/api/v1/events/message"))
                .bearer_auth(edge.hs256(&claims))
                .json(&json!({"message": "m", "visibility": "broadcast"})),
        )
        .await
        .unwrap();
        let body = check(&answer, &[400]).unwrap();
        assert_eq!(body["error"]["field"], "sender_email", "{answer:?}");

        let hook = json!({"type": "INSERT", "table": "users", "schema": "auth", "old_record": null,
            "record": {"id": Uuid::new_v4(), "last_sign_in_at": chrono::Utc::now().to_rfc3339(),
                       "raw_app_meta_data": {"provider": "\u{0}"}}});
        let answer = send(
            http()
                .post(edge.url("/webhooks/login"))
                .header("x-webhook-secret", &edge.stack.login_webhook_secret)
                .json(&hook),
        )
        .await
        .unwrap();
        let body = check(&answer, &[400]).unwrap();
        assert_eq!(
            body["error"]["field"], "record.raw_app_meta_data.provider",
            "{answer:?}"
        );
    });
}

/// One batch body: an array of items (each valid JSON text) or something else.
#[derive(Debug, Clone)]
pub(super) enum Batch {
    Items(Vec<Item>),
    Other(Bytes),
}

#[derive(Debug, Clone)]
pub(super) enum Item {
    /// Stored when the batch is.
    Valid(Value),
    /// Over `max_event_bytes` (64 KiB).
    Oversized(usize),
    /// Anything else: refused on its own.
    Junk(String),
}

impl Item {
    fn text(&self) -> String {
        match self {
            Item::Valid(v) => v.to_string(),
            Item::Oversized(n) => {
                json!({"message": "x".repeat(*n), "visibility": "broadcast"}).to_string()
            }
            Item::Junk(text) => text.clone(),
        }
    }
}

impl Batch {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Batch::Items(items) => {
                let texts: Vec<String> = items.iter().map(Item::text).collect();
                format!("[{}]", texts.join(",")).into_bytes()
            }
            Batch::Other(bytes) => bytes.0.clone(),
        }
    }
}

pub(super) fn batch() -> impl Strategy<Value = Batch> {
    let junk = prop_oneof![
        json_value().prop_map(|v| v.to_string()),
        (100usize..2_000, any::<bool>()).prop_map(|(depth, objects)| nested(depth, objects)),
        select(vec![
            "[]",
            "[[1]]",
            "{}",
            "null",
            "1e400",
            "\"\\u0000\"",
            r#"{"message":"\ud800"}"#
        ])
        .prop_map(String::from),
    ]
    .prop_filter("junk is not a valid event", |text| {
        !serde_json::from_str::<Value>(text).is_ok_and(|v| {
            v.get("visibility").is_some_and(|s| s == "broadcast")
                && v.get("message").is_some_and(Value::is_string)
        })
    });
    let item = prop_oneof![
        3 => valid_event().prop_map(Item::Valid),
        4 => junk.prop_map(Item::Junk),
        1 => (65_537usize..70_000).prop_map(Item::Oversized),
    ];
    prop_oneof![
        6 => prop::collection::vec(item, 0..12).prop_map(Batch::Items),
        1 => (501usize..1_500).prop_map(|n| Batch::Items(vec![Item::Junk("{}".into()); n])),
        1 => prop::collection::vec(Just(Item::Junk("[[[]]]".into())), 1..20).prop_map(Batch::Items),
        2 => json_value()
            .prop_filter("not an array", |v| !v.is_array())
            .prop_map(|v| Batch::Other(Bytes::from(v.to_string()))),
        1 => (1usize..=3, 0usize..30).prop_map(|(n, cut)| {
            // Cut short, or more than 1 MiB.
            let item = json!({"message": "y".repeat(60_000), "visibility": "broadcast"}).to_string();
            let mut text = format!("[{}]", vec![item; n * 9].join(",")).into_bytes();
            text.truncate(text.len() - cut);
            Batch::Other(Bytes(text))
        }),
        1 => event_body().prop_map(Batch::Other),
    ]
}

#[test]
pub(super) fn hostile_batches_get_a_result_per_item() {
    let edge = edge();
    let url = edge.url("/api/v1/events/message/batch");
    let token = edge.token();
    property("batches", 128, batch(), |batch| {
        let bytes = batch.bytes();
        runtime().block_on(async {
            let answer = if bytes.len() > 1 << 20 {
                let headers =
                    format!("Authorization: Bearer {token}\r\nContent-Type: application/json\r\n");
                post_expecting(&edge.addr, "/api/v1/events/message/batch", &headers, &bytes).await?
            } else {
                let request = http()
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(bytes.clone());
                send(request).await?
            };
            let body = check(&answer, &[200, 400, 413])?;
            let items = match &batch {
                Batch::Items(items) if bytes.len() <= 1 << 20 => items,
                _ if bytes.len() > 1 << 20 => {
                    prop_assert_eq!(answer.status, 413, "{:?}", answer);
                    return Ok(());
                }
                Batch::Other(_) => {
                    // Not an array (or not JSON): 400, unless it happens to be an array (of
                    // items of any depth: the gateway reads the array's items as raw text).
                    if serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&bytes).is_err() {
                        prop_assert_eq!(answer.status, 400, "{:?}", answer);
                    }
                    return Ok(());
                }
                Batch::Items(_) => unreachable!(),
            };
            if items.is_empty() || items.len() > 500 {
                prop_assert_eq!(answer.status, 400, "{:?}", answer);
                if items.len() > 500 {
                    prop_assert_eq!(code(&body), "too_many_events");
                }
                return Ok(());
            }
            prop_assert_eq!(answer.status, 200, "{:?}", answer);
            let results = body["results"].as_array().cloned().unwrap_or_default();
            prop_assert_eq!(
                results.len(),
                items.len(),
                "one result per item: {:?}",
                answer
            );
            let accepted = body["accepted"].as_u64().unwrap_or(u64::MAX);
            let rejected = body["rejected"].as_u64().unwrap_or(u64::MAX);
            prop_assert_eq!(accepted + rejected, items.len() as u64);
            for (index, (result, item)) in results.iter().zip(items).enumerate() {
                prop_assert_eq!(&result["index"], &json!(index));
                let status = result["status"].as_u64().unwrap_or_default();
                let expected: &[u64] = match item {
                    Item::Valid(_) => &[202],
                    Item::Oversized(_) => &[413],
                    Item::Junk(_) => &[400],
                };
                prop_assert!(
                    expected.contains(&status),
                    "item {index} ({item:?}): {result}"
                );
                if status != 202 {
                    prop_assert!(result["error"]["code"].is_string(), "{result}");
                    prop_assert!(result["error"]["message"].is_string(), "{result}");
                }
            }
            Ok(())
        })
    });
    runtime().block_on(edge.alive());
}
