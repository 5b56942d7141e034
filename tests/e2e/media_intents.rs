//! Media intents at the gateway: 202 with a request id once the intent is in its topic, with the
//! caller as owner; bad type, size, name or path → 400 naming the field and nothing produced.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use serde_json::{json, Value};
use substrate_testkit::Stack;
use uuid::Uuid;

use crate::harness::post_json;

/// Records of `consumer` for `user`, by request id, read for `window`.
async fn intents_of(
    stack: &Stack,
    consumer: &StreamConsumer,
    user: Uuid,
    window: Duration,
) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    let deadline = Instant::now() + window;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(Ok(message)) = tokio::time::timeout(left, consumer.recv()).await else {
            break;
        };
        let (value, _) = stack
            .registry()
            .decode(message.payload().unwrap())
            .await
            .unwrap();
        let json = substrate_avro::avro_to_json(&value);
        if json["user_id"] == user.to_string() {
            out.insert(json["request_id"].as_str().unwrap().to_string(), json);
        }
    }
    out
}

#[tokio::test]
async fn media_intents_are_validated_and_produced() {
    let stack = Stack::load();
    let user = Uuid::new_v4();
    let token = stack.token(user, "media@example.com");
    let uploads = stack.consumer_at_end("internal.media.upload.intent");
    let downloads = stack.consumer_at_end("internal.media.download.intent");
    let deletes = stack.consumer_at_end("internal.media.delete.intent");
    let url = |path: &str| format!("{}/api/v1/media/{path}", stack.gateway_url);

    let (status, _, body) = post_json(
        &url("upload-intent"),
        Some(&token),
        &json!({"file_name": "cat.png", "media_type": "image/png", "file_size": 2048}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let upload_id = body["request_id"].as_str().unwrap().to_string();

    for (body, field) in [
        (
            json!({"file_name": "a.exe", "media_type": "application/x-msdownload", "file_size": 10}),
            "media_type",
        ),
        (
            json!({"file_name": "zero.mp4", "media_type": "video/mp4", "file_size": 0}),
            "file_size",
        ),
        (
            json!({"file_name": "../etc/passwd", "media_type": "image/png", "file_size": 1}),
            "file_name",
        ),
        (
            json!({"media_type": "image/png", "file_size": 1}),
            "file_name",
        ),
        (
            json!({"file_name": "a.png", "media_type": "image/png", "file_size": 1, "owner": "x"}),
            "owner",
        ),
    ] {
        let (status, _, answer) = post_json(&url("upload-intent"), Some(&token), &body).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    // A declared size over media.max_file_bytes: 413, naming the field and the limit.
    let (status, _, answer) = post_json(
        &url("upload-intent"),
        Some(&token),
        &json!({"file_name": "big.mp4", "media_type": "video/mp4", "file_size": 10_000_000_000u64}),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "file_too_large", "{answer}");
    assert_eq!(answer["error"]["field"], "file_size", "{answer}");
    let (status, _, _) = post_json(
        &url("upload-intent"),
        None,
        &json!({"file_name": "cat.png", "media_type": "image/png", "file_size": 1}),
    )
    .await;
    assert_eq!(status, 401);

    let path = format!("files/{user}/{upload_id}/cat.png");
    let (status, _, body) = post_json(
        &url("download-intent"),
        Some(&token),
        &json!({"file_path": path}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let download_id = body["request_id"].as_str().unwrap().to_string();
    let (status, _, body) = post_json(
        &url("delete-intent"),
        Some(&token),
        &json!({"file_path": path}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let delete_id = body["request_id"].as_str().unwrap().to_string();
    let (status, _, answer) = post_json(
        &url("delete-intent"),
        Some(&token),
        &json!({"file_path": "files/../secrets"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"]["field"], "file_path");

    let seen = intents_of(&stack, &uploads, user, Duration::from_secs(8)).await;
    assert_eq!(
        seen.len(),
        1,
        "only the valid upload intent was produced: {seen:?}"
    );
    let intent = &seen[&upload_id];
    assert_eq!(intent["file_name"], "cat.png");
    assert_eq!(intent["media_type"], "image/png");
    assert_eq!(intent["file_size"], 2048);
    let seen = intents_of(&stack, &downloads, user, Duration::from_secs(5)).await;
    assert_eq!(seen[&download_id]["file_path"], path.as_str());
    let seen = intents_of(&stack, &deletes, user, Duration::from_secs(5)).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[&delete_id]["file_path"], path.as_str());
}

#[tokio::test]
async fn balance_and_files_are_the_callers_own() {
    let stack = Stack::load();
    let db = stack.db().await;
    let user = Uuid::new_v4();
    let other = Uuid::new_v4();
    let token = stack.token(user, "files@example.com");
    let http = crate::harness::http();
    let get = |path: &str, token: Option<String>| {
        let mut request = http.get(format!("{}{path}", stack.gateway_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    // Before the first upload: the starting balance; after a charge: one less.
    let (status, body) = get("/api/v1/credits", Some(token.clone())).await;
    assert_eq!(status, 200);
    let starting = body["balance"].as_i64().unwrap();
    assert!(starting > 0);
    substrate_db::media::debit(&db, Uuid::new_v4(), user, starting as i32)
        .await
        .unwrap();
    let (_, body) = get("/api/v1/credits", Some(token.clone())).await;
    assert_eq!(body["balance"], starting - 1);

    // Files: only the caller's active ones.
    for (owner, name, status) in [
        (user, "kept.png", "active"),
        (user, "gone.png", "deleted"),
        (other, "theirs.png", "active"),
    ] {
        let request = Uuid::new_v4();
        db.execute(
            "INSERT INTO public.media_files (request_id, user_id, file_path, file_name, media_type, file_size, status)
             VALUES ($1, $2, $3, $4, 'image/png', 10, $5)",
            &[&request, &owner, &format!("files/{owner}/{request}/{name}"), &name, &status],
        )
        .await
        .unwrap();
    }
    let (status, body) = get("/api/v1/media/files", Some(token.clone())).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["kept.png"]);
    let (status, _) = get("/api/v1/media/files", None).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn media_results_become_the_owners_notifications() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let stack = Stack::load();
    let db = stack.db().await;
    let catalog =
        substrate_avro::Catalog::load(&substrate_testkit::repo_root().join("avro")).unwrap();
    let producer: FutureProducer = stack.kafka().producer_config().create().unwrap();
    let user = Uuid::new_v4();
    let now = chrono::Utc::now().timestamp_millis();
    let mut expected = Vec::new();
    for (topic, event_type) in [
        ("public.media.upload.signed", "media.upload_ready"),
        ("public.media.upload.rejected", "media.upload_rejected"),
        ("public.media.upload.confirmed", "media.upload_confirmed"),
        ("internal.media.upload.dead-letter", "media.upload_failed"),
        ("public.media.expired.events", "media.upload_expired"),
        ("public.media.download.signed", "media.download_ready"),
        ("public.media.download.rejected", "media.download_rejected"),
        ("public.media.delete.events", "media.file_deleted"),
        ("public.media.delete.rejected", "media.delete_rejected"),
    ] {
        let schema = catalog.get(topic).unwrap();
        let mut record = serde_json::Map::new();
        for field in schema.field_names() {
            let value = match field {
                "request_id" => json!(Uuid::new_v4()),
                "user_id" => json!(user),
                f if f.ends_with("_at") => json!(now),
                "file_size" | "size" | "retry_count" | "balance" => json!(1),
                f => json!(format!("{f} of {event_type}")),
            };
            record.insert(field.to_string(), value);
        }
        let value = schema.to_avro(&Value::Object(record)).unwrap();
        let bytes = stack.encode(topic, value).await;
        let id = Uuid::new_v4();
        let id_text = id.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: "ce_id",
            value: Some(id_text.as_str()),
        });
        producer
            .send(
                FutureRecord::<str, [u8]>::to(topic)
                    .key(&id_text)
                    .payload(&bytes)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        expected.push((id, event_type));
    }
    for (id, event_type) in expected {
        let row = substrate_testkit::eventually(Duration::from_secs(30), event_type, || {
            let db = &db;
            async move {
                db.query_opt(
                    "SELECT event_type, visibility, recipient_id, payload FROM public.user_notifications WHERE event_id = $1",
                    &[&id],
                )
                .await
                .unwrap()
            }
        })
        .await
        .unwrap();
        assert_eq!(row.get::<_, String>(0), event_type);
        assert_eq!(row.get::<_, String>(1), "direct");
        assert_eq!(row.get::<_, Option<Uuid>>(2), Some(user));
        let payload: Value = row.get(3);
        assert_eq!(payload["user_id"], user.to_string());
    }
}
