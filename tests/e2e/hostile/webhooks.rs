//! The login webhook, the media intents and media-saga's S3 event webhook.

use super::strategies::*;
use super::*;

// ---------------------------------------------------------------------------------------------
// The login webhook
// ---------------------------------------------------------------------------------------------

/// A Supabase database-webhook payload for `auth.users` with junk in every place, or other JSON.
pub(super) fn login_payload() -> impl Strategy<Value = Bytes> {
    let text = || {
        prop_oneof![
            3 => select(WORDS).prop_map(Value::from),
            1 => any::<String>().prop_map(Value::from),
            1 => json_value(),
        ]
    };
    let time = prop_oneof![
        3 => Just(Value::from(chrono::Utc::now().to_rfc3339())),
        1 => select(vec!["2026-01-01T00:00:00+00:00\u{0}", "9999-12-31T23:59:59Z", "0000-01-01T00:00:00Z",
                         "2026-13-45T99:99:99Z", "yesterday", ""]).prop_map(Value::from),
        1 => (1usize..30_000).prop_map(|n| Value::from("9".repeat(n))),
        1 => text(),
    ];
    let id = prop_oneof![
        3 => any::<u128>().prop_map(|n| Value::from(Uuid::from_u128(n).to_string())),
        1 => text(),
    ];
    let email = prop_oneof![
        2 => Just(Value::from("user@example.com")),
        1 => select(vec!["a\u{0}@example.com", ""]).prop_map(Value::from),
        1 => text(),
    ];
    let record = (
        id,
        email,
        time.clone(),
        text(),
        prop::collection::btree_map(key(), json_value(), 0..3),
    )
        .prop_map(|(id, email, at, provider, extra)| {
            let mut record: serde_json::Map<String, Value> = extra.into_iter().collect();
            record.insert("id".into(), id);
            record.insert("email".into(), email);
            record.insert("last_sign_in_at".into(), at);
            record.insert("raw_app_meta_data".into(), json!({"provider": provider}));
            Value::Object(record)
        });
    let maybe = |s: BoxedStrategy<Value>| prop_oneof![4 => s.prop_map(Some), 1 => Just(None)];
    let kind = prop_oneof![
        3 => select(vec!["INSERT", "UPDATE", "DELETE", "insert", "TRUNCATE"]).prop_map(Value::from),
        1 => text(),
    ];
    let table = prop_oneof![4 => Just(Value::from("users")), 1 => text()];
    let schema = prop_oneof![4 => Just(Value::from("auth")), 1 => text()];
    let old = prop_oneof![
        1 => Just(Value::Null),
        1 => time.prop_map(|t| json!({"last_sign_in_at": t})),
        1 => json_value(),
    ];
    let hook = (
        maybe(kind.boxed()),
        maybe(table.boxed()),
        maybe(schema.boxed()),
        maybe(prop_oneof![4 => record, 1 => json_value()].boxed()),
        maybe(old.boxed()),
    )
        .prop_map(|(kind, table, schema, record, old)| {
            let mut hook = serde_json::Map::new();
            for (name, value) in [
                ("type", kind),
                ("table", table),
                ("schema", schema),
                ("record", record),
                ("old_record", old),
            ] {
                if let Some(value) = value {
                    hook.insert(name.into(), value);
                }
            }
            Value::Object(hook)
        });
    prop_oneof![
        6 => hook.prop_map(|h| Bytes::from(h.to_string())),
        1 => json_value().prop_map(|v| Bytes::from(v.to_string())),
        1 => (100usize..10_000, any::<bool>()).prop_map(|(d, o)| Bytes::from(nested(d, o))),
        1 => event_body(),
    ]
}

#[test]
pub(super) fn login_webhook_takes_hostile_payloads_without_failing() {
    let edge = edge();
    let url = edge.url("/webhooks/login");
    let secret = edge.stack.login_webhook_secret.clone();
    property("login webhook payloads", 256, login_payload(), |payload| {
        runtime().block_on(async {
            let answer = send(
                http()
                    .post(&url)
                    .header("x-webhook-secret", &secret)
                    .header("content-type", "application/json")
                    .body(payload.0.clone()),
            )
            .await?;
            let body = check(&answer, &[200, 202, 400, 413])?;
            let hook: Value = serde_json::from_slice(&payload.0).unwrap_or(Value::Null);
            match answer.status {
                200 => prop_assert_eq!(&body["status"], "ignored"),
                202 => {
                    prop_assert!(body["event_id"].is_string());
                    prop_assert_eq!(&hook["schema"], "auth");
                    prop_assert_eq!(&hook["table"], "users");
                    let record = &hook["record"];
                    prop_assert!(record["id"]
                        .as_str()
                        .is_some_and(|id| Uuid::parse_str(id).is_ok()));
                    for text in [
                        &record["email"],
                        &record["last_sign_in_at"],
                        &record["raw_app_meta_data"]["provider"],
                    ] {
                        let text = text.as_str().unwrap_or_default();
                        prop_assert!(!text.contains('\0'), "a NUL was stored: {:?}", payload);
                    }
                }
                _ => {}
            }
            Ok(())
        })
    });
    let wrong = prop_oneof![
        Just(None),
        select(vec!["", " ", "null", "Bearer"]).prop_map(|s| Some(Bytes::from(s.to_string()))),
        (0..secret.len()).prop_map({
            let secret = secret.clone();
            move |n| Some(Bytes::from(secret[..n].to_string()))
        }),
        "[!-~]{1,4}".prop_map({
            let secret = secret.clone();
            move |tail| Some(Bytes::from(format!("{secret}{tail}")))
        }),
        Just(Some(Bytes::from(secret.to_uppercase()))),
        Just(Some(Bytes::from(format!(" {secret}x")))),
        header_bytes(100).prop_map(|b| Some(Bytes(b))),
    ];
    property("login webhook secrets", 64, wrong, |given| {
        if given.as_ref().is_some_and(|g| g.0 == secret.as_bytes()) {
            return Ok(());
        }
        let event = json!({"type": "INSERT", "table": "users", "schema": "auth",
            "record": {"id": Uuid::new_v4(), "last_sign_in_at": chrono::Utc::now().to_rfc3339()}});
        let mut request = http().post(&url).json(&event);
        if let Some(given) = &given {
            request = request.header(
                "x-webhook-secret",
                HeaderValue::from_bytes(&given.0).unwrap(),
            );
        }
        runtime().block_on(async {
            let answer = send(request).await?;
            check(&answer, &[401])?;
            closes(&answer)
        })
    });
    runtime().block_on(edge.alive());
}

// ---------------------------------------------------------------------------------------------
// Media intents
// ---------------------------------------------------------------------------------------------

pub(super) fn media_request() -> impl Strategy<Value = (&'static str, Bytes)> {
    let name = prop_oneof![
        2 => "[a-z]{1,12}\\.png",
        1 => select(vec!["", ".", "..", "../x.png", "a/b.png", "a\\b.png", "a\u{0}.png", "\u{202e}gnp.exe",
                         " ", "CON", "x\n.png"]).prop_map(String::from),
        1 => (250usize..300).prop_map(|n| "n".repeat(n)),
        1 => any::<String>(),
    ];
    let size = prop_oneof![
        2 => (1u64..1_000_000).prop_map(|n| n.to_string()),
        1 => select(NUMBERS).prop_map(String::from),
        1 => Just("104857601".to_string()),
        1 => json_value().prop_map(|v| v.to_string()),
    ];
    let media_type = prop_oneof![
        2 => Just(Value::from("image/png")),
        1 => select(vec!["IMAGE/PNG", "text/html", "image/png\u{0}", "", "image/*"]).prop_map(Value::from),
        1 => json_value(),
    ];
    let path = prop_oneof![
        1 => any::<u128>().prop_map(|n| Value::from(format!("files/{}/x.png", Uuid::from_u128(n)))),
        1 => select(vec!["../../etc/passwd", "files/../../x", "", "/", "files/\u{0}"]).prop_map(Value::from),
        1 => json_value(),
    ];
    let request_id = prop_oneof![
        1 => any::<u128>().prop_map(|n| Value::from(Uuid::from_u128(n).to_string())),
        1 => json_value(),
    ];
    prop_oneof![
        3 => (Just("/api/v1/media/upload-intent"), name, media_type, size).prop_map(|(p, name, t, size)| {
            (p, Bytes::from(format!(r#"{{"file_name":{},"media_type":{t},"file_size":{size}}}"#, Value::from(name))))
        }),
        1 => (select(vec!["/api/v1/media/download-intent", "/api/v1/media/delete-intent"]), path)
            .prop_map(|(p, path)| (p, Bytes::from(json!({"file_path": path}).to_string()))),
        1 => request_id.prop_map(|id| ("/api/v1/media/upload-complete", Bytes::from(json!({"request_id": id}).to_string()))),
        1 => (
            select(vec!["/api/v1/media/upload-intent", "/api/v1/media/download-intent",
                        "/api/v1/media/delete-intent", "/api/v1/media/upload-complete"]),
            event_body(),
        ),
    ]
}

#[test]
pub(super) fn media_intents_take_hostile_bodies_without_failing() {
    let edge = edge();
    let token = edge.token();
    property("media intents", 128, media_request(), |(path, body)| {
        runtime().block_on(async {
            let answer = send(
                http()
                    .post(edge.url(path))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.0.clone()),
            )
            .await?;
            // 404: upload-complete of a request that is not the caller's.
            check(&answer, &[202, 400, 404, 413])?;
            if answer.status == 202 {
                prop_assert!(storable_object(&body.0), "stored: {:?}", body);
            }
            Ok(())
        })
    });
    runtime().block_on(edge.alive());
}

// ---------------------------------------------------------------------------------------------
// media-saga's S3 event webhook
// ---------------------------------------------------------------------------------------------

pub(super) fn s3_notification() -> impl Strategy<Value = Bytes> {
    let object_key = prop_oneof![
        2 => (any::<u128>(), any::<u128>(), "[a-z%+ ]{0,12}").prop_map(|(u, r, name)| {
            format!("uploads/{}/{}/{name}.png", Uuid::from_u128(u), Uuid::from_u128(r))
        }),
        1 => (any::<u128>(), any::<u128>()).prop_map(|(u, r)| {
            format!("files%2F{}%2F{}%2Fx.png", Uuid::from_u128(u), Uuid::from_u128(r))
        }),
        1 => select(vec!["%", "%FF%FE", "%00", "uploads/%2e%2e/x", "+", ""]).prop_map(String::from),
        1 => (1usize..200_000).prop_map(|n| "k".repeat(n)),
        1 => any::<String>(),
    ];
    let bucket = prop_oneof![
        Just(std::env::var("S3_MEDIA_BUCKET").unwrap_or_else(|_| "media-uploads".into())),
        any::<String>(),
    ];
    let record = (select(vec!["s3:ObjectCreated:Put", "s3:ObjectRemoved:Delete", ""]), bucket, object_key, json_value())
        .prop_map(|(name, bucket, key, size)| {
            json!({"eventName": name, "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size}}})
        });
    prop_oneof![
        4 => prop::collection::vec(prop_oneof![3 => record, 1 => json_value()], 0..4)
            .prop_map(|records| Bytes::from(json!({"Records": records}).to_string())),
        2 => json_value().prop_map(|v| Bytes::from(v.to_string())),
        1 => (100usize..10_000, any::<bool>()).prop_map(|(d, o)| Bytes::from(format!(r#"{{"Records":{}}}"#, nested(d, o)))),
        1 => (1usize..300_000).prop_map(|n| Bytes::from(format!(r#"{{"{}":[]}}"#, "K".repeat(n)))),
        1 => Just(Bytes(vec![b' '; (2 << 20) + 1])),
        1 => event_body(),
    ]
}

#[test]
pub(super) fn media_saga_webhook_takes_hostile_notifications_without_failing() {
    let saga = saga();
    let url = saga.url("/webhooks/media-upload");
    property("S3 notifications", 128, s3_notification(), |body| {
        runtime().block_on(async {
            let answer = send(
                http()
                    .post(&url)
                    .bearer_auth(MEDIA_SECRET)
                    .body(body.0.clone()),
            )
            .await?;
            let reply = check(&answer, &[200, 400, 413])?;
            if answer.status == 200 {
                prop_assert!(
                    reply["accepted"].is_u64() && reply["ignored"].is_array(),
                    "{:?}",
                    answer
                );
            }
            if body.0.len() > 2 << 20 {
                prop_assert_eq!(answer.status, 413);
            }
            Ok(())
        })
    });
    let wrong = prop_oneof![
        Just(None),
        select(vec![
            "",
            "Bearer",
            "Bearer ",
            "bearer hostile-media-webhook-secret",
            "hostile-media-webhook-secret",
            "Bearer hostile-media-webhook-secre",
            "Bearer hostile-media-webhook-secretx",
            "Basic x"
        ])
        .prop_map(|s| Some(Bytes::from(s.to_string()))),
        header_bytes(100).prop_map(|b| Some(Bytes(b))),
    ];
    property("S3 webhook secrets", 64, wrong, |given| {
        let mut request = http().post(&url).body(r#"{"Records":[]}"#);
        if let Some(given) = &given {
            request = request.header("authorization", HeaderValue::from_bytes(&given.0).unwrap());
        }
        runtime().block_on(async {
            let answer = send(request).await?;
            check(&answer, &[401])?;
            closes(&answer)
        })
    });
    runtime().block_on(saga.alive());
}
