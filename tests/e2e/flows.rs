//! The platform's flows on the running stack: the login loop, user messaging (broadcast and
//! direct), batches, the wire format of stored records, row level security and the realtime
//! NOTIFY.

use std::time::Duration;

use rdkafka::message::{Headers, Message};
use serde_json::json;
use substrate_avro::registry::wire_schema_id;
use substrate_testkit::{eventually, notification_rows, Stack};
use uuid::Uuid;

use crate::harness::{http, post_json};

const WAIT: Duration = Duration::from_secs(30);

async fn wait_for_row(stack: &Stack, event_id: Uuid) -> tokio_postgres::Row {
    let db = stack.db().await;
    eventually(WAIT, "the notification row", || async {
        notification_rows(&db, event_id)
            .await
            .ok()
            .and_then(|mut rows| rows.pop())
    })
    .await
    .unwrap()
}

fn event_id_of(body: &serde_json::Value) -> Uuid {
    Uuid::parse_str(body["event_id"].as_str().expect("event_id in the answer")).unwrap()
}

#[tokio::test]
async fn login_loop_webhook_to_identity_login_row() {
    let stack = Stack::load();
    let user = Uuid::new_v4();
    let signed_in = chrono::Utc::now().to_rfc3339();
    let payload = json!({
        "type": "UPDATE",
        "table": "users",
        "schema": "auth",
        "record": {"id": user, "email": "ada@example.com", "last_sign_in_at": signed_in,
                   "raw_app_meta_data": {"provider": "email"}},
        "old_record": {"id": user, "email": "ada@example.com", "last_sign_in_at": null}
    });
    let url = format!("{}/webhooks/login", stack.gateway_url);
    let send = |secret: &str| {
        http()
            .post(&url)
            .header("x-webhook-secret", secret)
            .json(&payload)
            .send()
    };
    let response = send(&stack.login_webhook_secret).await.unwrap();
    assert_eq!(response.status(), 202);
    let body: serde_json::Value = response.json().await.unwrap();
    let event_id = event_id_of(&body);

    let row = wait_for_row(&stack, event_id).await;
    assert_eq!(row.get::<_, String>("event_type"), "identity.login");
    assert_eq!(row.get::<_, String>("visibility"), "direct");
    assert_eq!(row.get::<_, Option<Uuid>>("recipient_id"), Some(user));
    let payload_row: serde_json::Value = row.get("payload");
    assert_eq!(payload_row["email"], "ada@example.com");
    assert_eq!(payload_row["provider"], "email");

    // The same change delivered again is the same event: still one row.
    let login_topic = "public.identity.login.events";
    let records = stack.consumer_at_end(login_topic);
    let again: serde_json::Value = send(&stack.login_webhook_secret)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(event_id_of(&again), event_id);
    // Once the stack's writer has committed past the repeated record, it was handled.
    let (partition, offset) = loop {
        let message = tokio::time::timeout(Duration::from_secs(30), records.recv())
            .await
            .expect("the repeated record in the topic")
            .unwrap();
        let id = message.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "ce_id")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        if id.as_deref() == Some(event_id.to_string().as_str()) {
            break (message.partition(), message.offset());
        }
    };
    eventually(
        Duration::from_secs(30),
        "the writer past the repeat",
        || async {
            let next = stack.committed("notification-writer", login_topic, partition)?;
            (next > offset).then_some(())
        },
    )
    .await
    .unwrap();
    let db = stack.db().await;
    assert_eq!(notification_rows(&db, event_id).await.unwrap().len(), 1);

    // A wrong secret is refused, and an update that is not a sign-in is ignored.
    assert_eq!(
        send("wrong-secret-wrong-secret").await.unwrap().status(),
        401
    );
    let not_login = json!({"type": "UPDATE", "table": "users", "schema": "auth",
        "record": {"id": user, "last_sign_in_at": signed_in},
        "old_record": {"id": user, "last_sign_in_at": signed_in}});
    let response = http()
        .post(&url)
        .header("x-webhook-secret", &stack.login_webhook_secret)
        .json(&not_login)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["status"],
        "ignored"
    );
}

#[tokio::test]
async fn messages_broadcast_and_direct_become_rows() {
    let stack = Stack::load();
    let sender = Uuid::new_v4();
    let recipient = Uuid::new_v4();
    let token = stack.token(sender, "sender@example.com");
    let url = format!("{}/api/v1/events/message", stack.gateway_url);

    let (status, _, body) = post_json(
        &url,
        Some(&token),
        &json!({"message": "hello all", "visibility": "broadcast"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let broadcast = wait_for_row(&stack, event_id_of(&body)).await;
    assert_eq!(broadcast.get::<_, String>("event_type"), "user.message");
    assert_eq!(broadcast.get::<_, String>("visibility"), "broadcast");
    assert_eq!(broadcast.get::<_, Option<Uuid>>("recipient_id"), None);
    assert_eq!(broadcast.get::<_, Option<Uuid>>("sender_id"), Some(sender));
    let payload: serde_json::Value = broadcast.get("payload");
    assert_eq!(payload["message"], "hello all");
    assert_eq!(payload["sender_email"], "sender@example.com");

    let (status, _, body) = post_json(
        &url,
        Some(&token),
        &json!({"message": "hi", "visibility": "direct", "recipient_id": recipient}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let direct = wait_for_row(&stack, event_id_of(&body)).await;
    assert_eq!(direct.get::<_, String>("visibility"), "direct");
    assert_eq!(
        direct.get::<_, Option<Uuid>>("recipient_id"),
        Some(recipient)
    );

    // The sender's id comes from the token, whatever the body claims.
    let (status, _, body) = post_json(
        &url,
        Some(&token),
        &json!({"message": "spoof", "visibility": "broadcast", "sender_id": Uuid::new_v4()}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let row = wait_for_row(&stack, event_id_of(&body)).await;
    assert_eq!(row.get::<_, Option<Uuid>>("sender_id"), Some(sender));

    // Direct without a recipient is refused, naming the field.
    let (status, _, body) = post_json(
        &url,
        Some(&token),
        &json!({"message": "x", "visibility": "direct"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "recipient_id");
}

#[tokio::test]
async fn stored_records_are_confluent_wire_format_with_cloudevents_headers() {
    let stack = Stack::load();
    let sender = Uuid::new_v4();
    let token = stack.token(sender, "wire@example.com");
    let consumer = stack.consumer_at_end("public.user.message.events");
    let url = format!("{}/api/v1/events/message", stack.gateway_url);
    let (status, _, body) = post_json(
        &url,
        Some(&token),
        &json!({"message": "wire", "visibility": "broadcast"}),
    )
    .await;
    assert_eq!(status, 202);
    let event_id = event_id_of(&body).to_string();

    let record = tokio::time::timeout(WAIT, async {
        loop {
            let message = consumer.recv().await.expect("consume");
            let headers = message.headers().expect("headers");
            let id =
                substrate_kafka::headers::header_str(&headers.detach(), "ce_id").map(String::from);
            if id.as_deref() == Some(event_id.as_str()) {
                return message.detach();
            }
        }
    })
    .await
    .expect("the record reaches the topic");

    assert_eq!(record.key(), Some(sender.to_string().as_bytes()));
    let headers = record.headers().unwrap();
    let header = |k: &str| substrate_kafka::headers::header_str(headers, k).map(String::from);
    assert_eq!(header("ce_type").as_deref(), Some("user.message"));
    assert_eq!(header("ce_specversion").as_deref(), Some("1.0"));
    assert!(header("ce_source").is_some() && header("ce_time").is_some());
    assert!(substrate_kafka::TraceParent::parse(&header("traceparent").unwrap()).is_some());
    assert!(headers.count() >= 6);

    let payload = record.payload().unwrap();
    assert_eq!(payload[0], 0, "magic byte");
    let id = wire_schema_id(payload).unwrap();
    let schema: serde_json::Value = http()
        .get(format!("{}/schemas/ids/{id}", stack.registry_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = schema["schema"]
        .as_str()
        .expect("the registry knows the id");
    assert!(text.contains("UserMessage"));
    let (value, _) = stack.registry().decode(payload).await.unwrap();
    let json = substrate_avro::avro_to_json(&value);
    assert_eq!(json["message"], "wire");
    assert_eq!(json["event_id"], event_id);
}

#[tokio::test]
async fn batch_answers_per_item_in_order() {
    let stack = Stack::load();
    let token = stack.token(Uuid::new_v4(), "batch@example.com");
    let url = format!("{}/api/v1/events/message/batch", stack.gateway_url);
    let events = json!([
        {"message": "one", "visibility": "broadcast"},
        {"message": 2, "visibility": "broadcast"},
        {"message": "three", "visibility": "direct", "recipient_id": Uuid::new_v4()},
        {"message": "four", "visibility": "direct"}
    ]);
    let (status, _, body) = post_json(&url, Some(&token), &events).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"], 2);
    let results = body["results"].as_array().unwrap();
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, vec![202, 400, 202, 400]);
    assert_eq!(results[1]["error"]["field"], "message");
    assert_eq!(results[3]["error"]["field"], "recipient_id");
    for index in [0, 2] {
        let id = Uuid::parse_str(results[index]["event_id"].as_str().unwrap()).unwrap();
        wait_for_row(&stack, id).await;
    }

    let too_many: Vec<_> = (0..501)
        .map(|i| json!({"message": i.to_string(), "visibility": "broadcast"}))
        .collect();
    let (status, _, body) = post_json(&url, Some(&token), &json!(too_many)).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "too_many_events");
}

#[tokio::test]
async fn rls_shows_broadcasts_and_own_direct_messages_only() {
    let stack = Stack::load();
    let (alice, bob, carol) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let url = format!("{}/api/v1/events/message", stack.gateway_url);
    let token = stack.token(alice, "alice@example.com");
    let (_, _, direct) = post_json(
        &url,
        Some(&token),
        &json!({"message": "psst", "visibility": "direct", "recipient_id": bob}),
    )
    .await;
    let (_, _, broadcast) = post_json(
        &url,
        Some(&token),
        &json!({"message": "all", "visibility": "broadcast"}),
    )
    .await;
    let direct_id = event_id_of(&direct);
    let broadcast_id = event_id_of(&broadcast);
    wait_for_row(&stack, direct_id).await;
    wait_for_row(&stack, broadcast_id).await;

    let mut db = stack.db().await;
    for (user, sees_direct) in [(alice, true), (bob, true), (carol, false)] {
        let tx = db.transaction().await.unwrap();
        tx.batch_execute("SET LOCAL ROLE authenticated")
            .await
            .unwrap();
        tx.execute(
            "SELECT set_config('request.jwt.claims', $1, true)",
            &[&json!({"sub": user, "role": "authenticated"}).to_string()],
        )
        .await
        .unwrap();
        let visible: Vec<Uuid> = tx
            .query(
                "SELECT event_id FROM public.user_notifications WHERE event_id = ANY($1)",
                &[&vec![direct_id, broadcast_id]],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.rollback().await.unwrap();
        assert!(visible.contains(&broadcast_id), "{user} sees the broadcast");
        assert_eq!(
            visible.contains(&direct_id),
            sees_direct,
            "{user} and the direct message"
        );
    }
}

#[tokio::test]
async fn inserts_signal_listeners_with_notify() {
    use futures::StreamExt;

    let stack = Stack::load();
    let (client, mut connection) =
        substrate_db::connect(&substrate_db::DbConfig::from_url(&stack.database_url))
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client
        .batch_execute("LISTEN user_notifications")
        .await
        .unwrap();
    let token = stack.token(Uuid::new_v4(), "notify@example.com");
    let url = format!("{}/api/v1/events/message", stack.gateway_url);
    let (_, _, body) = post_json(
        &url,
        Some(&token),
        &json!({"message": "ping", "visibility": "broadcast"}),
    )
    .await;
    wait_for_row(&stack, event_id_of(&body)).await;
    let payload = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    let signal: serde_json::Value = serde_json::from_str(&payload).unwrap();
    assert!(signal["count"].as_i64().unwrap() >= 1);
    assert!(signal["last_id"].as_i64().unwrap() >= signal["first_id"].as_i64().unwrap());
}
