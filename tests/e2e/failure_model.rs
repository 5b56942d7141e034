//! The failure model on the running stack: what can never be stored is refused at the edge
//! (400 naming the field); a record that reaches a consumer anyway and fails for a permanent
//! reason is dead-lettered while the partition moves on, so a normal message posted right after
//! is stored within seconds.

use std::time::Duration;

use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use substrate_kafka::headers::header_str;
use substrate_testkit::{encode_message, eventually, message_event, notification_rows, Stack};
use uuid::Uuid;

use crate::harness::post_json;

/// "Within seconds": the writer batches in milliseconds; this bounds a slow CI machine.
const SOON: Duration = Duration::from_secs(15);
const MESSAGES: &str = "public.user.message.events";
const WRITER_DLQ: &str = "internal.notification.dead-letter";
const DISPATCH_NOTIFICATIONS: &str = "internal.dispatch.notifications";

/// Posts a broadcast message through the gateway and waits for its row.
async fn message_appears(stack: &Stack, token: &str, text: &str) {
    let url = format!("{}/api/v1/events/message", stack.gateway_url);
    let (status, _, body) = post_json(
        &url,
        Some(token),
        &json!({"message": text, "visibility": "broadcast"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let event_id = Uuid::parse_str(body["event_id"].as_str().unwrap()).unwrap();
    let db = stack.db().await;
    eventually(SOON, "the message posted after the bad one", || async {
        notification_rows(&db, event_id)
            .await
            .ok()
            .and_then(|mut rows| rows.pop())
    })
    .await
    .unwrap();
}

async fn produce(stack: &Stack, topic: &str, payload: &[u8], ce_id: Uuid, ce_type: &str) {
    let producer: FutureProducer = stack.kafka().producer_config().create().unwrap();
    let id = ce_id.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "ce_id",
            value: Some(id.as_str()),
        })
        .insert(Header {
            key: "ce_type",
            value: Some(ce_type),
        });
    producer
        .send(
            FutureRecord::<[u8], [u8]>::to(topic)
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("produce");
}

/// Waits for the dead letter whose `ce_id` header is `ce_id`; returns its `dlq_error`.
async fn dead_letter_of(stack: &Stack, dlq: &str, ce_id: Uuid) -> String {
    let consumer = stack.consumer(dlq);
    let wanted = ce_id.to_string();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let message = consumer.recv().await.expect("dead-letter topic readable");
            let headers = message.headers().expect("dead letters carry headers");
            if header_str(headers, "ce_id") == Some(wanted.as_str()) {
                return header_str(headers, "dlq_error")
                    .expect("dlq_error header")
                    .to_string();
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no dead letter for {ce_id} in {dlq}"))
}

#[tokio::test]
async fn nul_text_is_refused_at_the_gateway_with_the_field_named() {
    let stack = Stack::load();
    let token = stack.token(Uuid::new_v4(), "nul@example.com");
    let url = format!("{}/api/v1/events/message", stack.gateway_url);
    let (status, _, body) = post_json(
        &url,
        Some(&token),
        &json!({"message": "before\u{0}after", "visibility": "broadcast"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "message", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("NUL"),
        "{body}"
    );
    // In a batch only that item is refused.
    let (status, _, body) = post_json(
        &format!("{url}/batch"),
        Some(&token),
        &json!([{"message": "ok", "visibility": "broadcast"},
                {"message": "\u{0}", "visibility": "broadcast"}]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    assert_eq!(body["results"][1]["status"], 400, "{body}");
    assert_eq!(body["results"][1]["error"]["field"], "message", "{body}");
    message_appears(&stack, &token, "after a refused NUL").await;
}

#[tokio::test]
async fn a_row_postgres_refuses_is_dead_lettered_and_the_writer_moves_on() {
    let stack = Stack::load();
    let token = stack.token(Uuid::new_v4(), "poison@example.com");
    // A producer other than the gateway writes a message whose text Postgres cannot store.
    let ce_id = Uuid::now_v7();
    let mut event = message_event(Uuid::new_v4(), None, "poison\u{0}text");
    event["event_id"] = json!(ce_id);
    let payload = encode_message(&stack, MESSAGES, &event).await;
    produce(&stack, MESSAGES, &payload, ce_id, "user.message").await;

    let error = dead_letter_of(&stack, WRITER_DLQ, ce_id).await;
    assert!(
        error.contains("user_notifications refused the row") && error.contains("22P05"),
        "the dead letter names the table and the database's code: {error}"
    );
    let db = stack.db().await;
    assert!(notification_rows(&db, ce_id).await.unwrap().is_empty());
    message_appears(&stack, &token, "after a refused row").await;
}

#[tokio::test]
async fn a_bad_notification_event_type_is_dead_lettered_and_the_writer_moves_on() {
    let stack = Stack::load();
    let token = stack.token(Uuid::new_v4(), "type@example.com");
    // A notification request whose type the table's CHECK refuses (`-`), as a rule saved before
    // the type was validated would produce.
    let ce_id = Uuid::now_v7();
    let record = json!({
        "event_id": ce_id.to_string(),
        "event_type": "commerce.vip-purchase",
        "visibility": "broadcast",
        "recipient_id": null,
        "rule_id": Uuid::new_v4().to_string(),
        "source_event_id": Uuid::new_v4().to_string(),
        "payload": "{}",
    });
    let schema = substrate_avro::Catalog::load(&substrate_testkit::repo_root().join("avro"))
        .unwrap()
        .get(DISPATCH_NOTIFICATIONS)
        .cloned()
        .expect("schema of the dispatch notifications topic");
    let value = schema.to_avro(&record).expect("a valid record");
    let payload = stack
        .registry()
        .encode(DISPATCH_NOTIFICATIONS, value)
        .await
        .unwrap();
    produce(
        &stack,
        DISPATCH_NOTIFICATIONS,
        &payload,
        ce_id,
        "commerce.vip-purchase",
    )
    .await;

    let error = dead_letter_of(&stack, WRITER_DLQ, ce_id).await;
    assert!(
        error.contains("event_type `commerce.vip-purchase` must be namespaced"),
        "{error}"
    );
    message_appears(&stack, &token, "after a refused event type").await;
}
