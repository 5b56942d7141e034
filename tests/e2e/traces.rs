//! One trace per request across the running stack, read back from its Jaeger: a client starts
//! the trace with its own `traceparent`; the gateway continues it, every consumer's span is a
//! child of the record's context, and the dispatcher hands it on to the webhook receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::json;
use substrate_db::rules::RuleRow;
use substrate_runtime::TraceParent;
use substrate_testkit::traces::{
    batch_write, by_id, one as span, wait_for, CLIENT, CONSUMER, PRODUCER, SERVER,
};
use substrate_testkit::{eventually, metric, unique, Stack};
use uuid::Uuid;

use crate::harness::http;

/// Spans reach Jaeger in the services' export batches (every few seconds).
const WAIT: Duration = Duration::from_secs(60);

/// A client-chosen context, sampled.
pub fn client_trace() -> TraceParent {
    TraceParent::new_root()
}

type Hits = Arc<Mutex<Vec<HeaderMap>>>;

async fn hook(State(hits): State<Hits>, headers: HeaderMap, _body: Bytes) -> &'static str {
    hits.lock().unwrap().push(headers);
    "ok"
}

#[tokio::test]
async fn a_vip_purchase_is_one_trace_from_the_client_to_the_webhook_receiver() {
    let stack = Stack::load();
    let hits: Hits = Arc::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut db = stack.db().await;
    let order = unique("order-traced");
    let name = unique("e2e-traced-vip");
    let condition =
        format!("purchase.id == '{order}' AND purchase.amount > 500 AND user.segment == 'VIP'");
    let whsec = format!(
        "whsec_{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32])
    );
    let rule = crate::secrets::save_sealed(
        &stack,
        &mut db,
        RuleRow {
            id: Uuid::nil(),
            name: name.clone(),
            enabled: true,
            topics: vec!["public.commerce.purchase.events".into()],
            event_types: vec![],
            condition: json!(condition),
            condition_text: Some(condition.clone()),
            actions: json!([{"type": "webhook", "url": format!("http://{addr}/hook"), "secrets": [whsec]}]),
            priority: 0,
            version: 0,
        },
    )
    .await;
    let series = format!("rule_evaluator_rule_version{{rule=\"{name}\"}}");
    eventually(Duration::from_secs(15), "the rule loaded", || async {
        (metric(&stack.rule_evaluator_metrics, &series).await? >= 1.0).then_some(())
    })
    .await
    .unwrap();
    let key = stack.api_key(&unique("shop"), &["purchase"]).await;
    stack
        .wait_for_key(&stack.gateway_url, "purchase", &key)
        .await;

    let client = client_trace();
    let started = chrono::Utc::now();
    let response = http()
        .post(format!("{}/api/v1/events/purchase", stack.gateway_url))
        .bearer_auth(&key)
        .header("traceparent", client.to_string())
        .json(&json!({
            "user": {"id": Uuid::new_v4(), "email": "vip@example.com", "segment": "VIP", "country": "DE"},
            "purchase": {"id": order, "amount": 900.0, "currency": "EUR", "items": 1}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let event_id = response.json::<serde_json::Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    let request_id = rule_evaluator::evaluate::request_id(&event_id, rule.id, 0).to_string();

    // The receiver is called in the client's trace.
    let headers = eventually(Duration::from_secs(30), "the webhook", || async {
        hits.lock()
            .unwrap()
            .iter()
            .find(|h| {
                h.get("webhook-id")
                    .is_some_and(|v| v == request_id.as_str())
            })
            .cloned()
    })
    .await
    .unwrap();
    let received = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .expect("the webhook carries a valid traceparent");
    assert_eq!(
        received.trace_id, client.trace_id,
        "the webhook is in the client's trace"
    );

    let trace_id = format!("{:032x}", client.trace_id);
    let spans = wait_for(
        &trace_id,
        &[
            ("gateway", "POST /api/v1/events/{route}"),
            ("gateway", "send public.commerce.purchase.events"),
            ("rule-evaluator", "process public.commerce.purchase.events"),
            ("rule-evaluator", "send internal.dispatch.requests"),
            ("dispatcher", "process internal.dispatch.requests"),
            ("dispatcher", "POST"),
        ],
        WAIT,
    )
    .await;

    // gateway: the server span is the client's child; its send span carries the record on.
    let server = span(&spans, "gateway", "POST /api/v1/events/{route}");
    assert_eq!(server.kind, SERVER);
    assert_eq!(server.parent_span_id, format!("{:016x}", client.parent_id));
    assert_eq!(
        server.attr("http.route").as_deref(),
        Some("/api/v1/events/{route}")
    );
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("202")
    );
    let send = span(&spans, "gateway", "send public.commerce.purchase.events");
    assert_eq!(send.kind, PRODUCER);
    assert_eq!(send.parent_span_id, server.span_id);

    // rule-evaluator: a consumer span per record (messaging conventions), child of the send.
    let evaluated = span(
        &spans,
        "rule-evaluator",
        "process public.commerce.purchase.events",
    );
    assert_eq!(evaluated.kind, CONSUMER);
    assert_eq!(evaluated.parent_span_id, send.span_id);
    assert_eq!(evaluated.attr("messaging.system").as_deref(), Some("kafka"));
    assert_eq!(
        evaluated.attr("messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        evaluated.attr("messaging.destination.name").as_deref(),
        Some("public.commerce.purchase.events")
    );
    assert_eq!(
        evaluated.attr("messaging.consumer.group.name").as_deref(),
        Some("rule-evaluator")
    );
    assert_eq!(
        evaluated.attr("messaging.message.id"),
        Some(event_id.clone())
    );
    for key in [
        "messaging.destination.partition.id",
        "messaging.kafka.offset",
    ] {
        assert!(evaluated.attr(key).is_some(), "{key} on {evaluated:#?}");
    }
    let request_send = span(&spans, "rule-evaluator", "send internal.dispatch.requests");
    assert_eq!(request_send.parent_span_id, evaluated.span_id);

    // dispatcher: processes the request as the send's child and POSTs in a client span whose
    // context is the receiver's traceparent.
    let dispatched = span(&spans, "dispatcher", "process internal.dispatch.requests");
    assert_eq!(dispatched.kind, CONSUMER);
    assert_eq!(dispatched.parent_span_id, request_send.span_id);
    let post = by_id(&spans, &format!("{:016x}", received.parent_id));
    assert_eq!(post.service, "dispatcher");
    assert_eq!(post.kind, CLIENT);
    assert_eq!(post.name, "POST");
    assert_eq!(post.parent_span_id, dispatched.span_id);
    assert_eq!(
        post.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(post.attr("server.address").as_deref(), Some("127.0.0.1"));
    // The audit row: written in a batch whose span belongs to this attempt (or links to it).
    let (_, audit) = batch_write(
        dispatched,
        "dispatcher",
        "write dispatch_attempts",
        "INSERT dispatch_attempts",
        started,
        WAIT,
    )
    .await;
    assert_eq!(audit.attr("db.system.name").as_deref(), Some("postgresql"));

    db.execute("DELETE FROM public.rules WHERE id = $1", &[&rule.id])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_message_is_one_trace_from_the_gateway_to_its_notification_row() {
    let stack = Stack::load();
    let sender = Uuid::new_v4();
    let token = stack.token(sender, "traced@example.com");
    let client = client_trace();
    let started = chrono::Utc::now();
    let response = http()
        .post(format!("{}/api/v1/events/message", stack.gateway_url))
        .bearer_auth(&token)
        .header("traceparent", client.to_string())
        .json(&json!({"message": "traced", "visibility": "direct", "recipient_id": Uuid::new_v4()}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let trace_id = format!("{:032x}", client.trace_id);
    let spans = wait_for(
        &trace_id,
        &[
            ("gateway", "send public.user.message.events"),
            ("notification-writer", "process public.user.message.events"),
        ],
        WAIT,
    )
    .await;
    let send = span(&spans, "gateway", "send public.user.message.events");
    let processed = span(
        &spans,
        "notification-writer",
        "process public.user.message.events",
    );
    assert_eq!(processed.kind, CONSUMER);
    assert_eq!(processed.parent_span_id, send.span_id);
    assert_eq!(
        processed.attr("messaging.consumer.group.name").as_deref(),
        Some("notification-writer")
    );
    // The batch write: a child of its first row's span, linking to the others' — in this trace
    // when the row came first, else in the first row's trace, linking here.
    let (write, insert) = batch_write(
        processed,
        "notification-writer",
        "write user_notifications",
        "INSERT user_notifications",
        started,
        WAIT,
    )
    .await;
    assert_eq!(write.service, "notification-writer");
    assert_eq!(insert.kind, CLIENT);
    assert_eq!(insert.attr("db.system.name").as_deref(), Some("postgresql"));
    assert_eq!(
        insert.attr("db.collection.name").as_deref(),
        Some("user_notifications")
    );
    assert!(write.attr("batch.rows").is_some(), "{write:#?}");
}
