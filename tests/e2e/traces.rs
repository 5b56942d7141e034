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
use substrate_testkit::traces::{jaeger_url, trace, Span};
use substrate_testkit::{eventually, metric, unique, Stack};
use uuid::Uuid;

use crate::harness::http;

/// Spans reach Jaeger in the services' export batches (every few seconds).
const WAIT: Duration = Duration::from_secs(60);

const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const PRODUCER: i64 = 4;
const CONSUMER: i64 = 5;

/// Waits until Jaeger holds spans of `trace_id` from every one of `services`; returns them all.
pub async fn trace_across(trace_id: &str, services: &[&str]) -> Vec<Span> {
    let jaeger = jaeger_url();
    let found = eventually(
        WAIT,
        &format!("spans of {services:?} in trace {trace_id}"),
        || async {
            let spans = trace(&jaeger, trace_id).await?;
            services
                .iter()
                .all(|service| spans.iter().any(|s| s.service == *service))
                .then_some(spans)
        },
    )
    .await;
    match found {
        Ok(spans) => spans,
        Err(e) => {
            let seen = trace(&jaeger, trace_id).await.unwrap_or_default();
            panic!(
                "{e}; Jaeger has: {:#?}",
                seen.iter()
                    .map(|s| format!("{} {}", s.service, s.name))
                    .collect::<Vec<_>>()
            )
        }
    }
}

/// The one span of `service` named `name`.
pub fn span<'a>(spans: &'a [Span], service: &str, name: &str) -> &'a Span {
    let matching: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one `{name}` span of {service} expected, got {matching:#?}"
    );
    matching[0]
}

/// The span whose id is `id`.
pub fn by_id<'a>(spans: &'a [Span], id: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.span_id == id)
        .unwrap_or_else(|| panic!("no span {id} in the trace: {spans:#?}"))
}

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
    let spans = trace_across(&trace_id, &["gateway", "rule-evaluator", "dispatcher"]).await;

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
    // The audit row is a database span in the same trace.
    assert!(
        spans.iter().any(|s| s.service == "dispatcher"
            && s.name == "INSERT dispatch_attempts"
            && s.attr("db.system.name").as_deref() == Some("postgresql")),
        "no audit span: {spans:#?}"
    );

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
    let spans = trace_across(&trace_id, &["gateway", "notification-writer"]).await;
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
    let writes = eventually(WAIT, "the batch write of the row", || async {
        let mut candidates = spans.clone();
        candidates.extend(
            substrate_testkit::traces::search(
                &jaeger_url(),
                "notification-writer",
                started - chrono::Duration::seconds(5),
                chrono::Utc::now() + chrono::Duration::seconds(5),
                1000,
            )
            .await,
        );
        let write = candidates
            .iter()
            .find(|s| {
                s.name == "write user_notifications"
                    && (s.parent_span_id == processed.span_id
                        || s.links.iter().any(|(_, id)| *id == processed.span_id))
            })?
            .clone();
        let insert = candidates
            .iter()
            .find(|s| s.name == "INSERT user_notifications" && s.parent_span_id == write.span_id)?
            .clone();
        Some((write, insert))
    })
    .await;
    let (write, insert) = writes.unwrap();
    assert_eq!(write.service, "notification-writer");
    assert_eq!(insert.kind, CLIENT);
    assert_eq!(insert.attr("db.system.name").as_deref(), Some("postgresql"));
    assert_eq!(
        insert.attr("db.collection.name").as_deref(),
        Some("user_notifications")
    );
    assert!(write.attr("batch.rows").is_some(), "{write:#?}");
}

/// The user's notification of `event_type` about `request`.
async fn media_notification(
    db: &tokio_postgres::Client,
    user: Uuid,
    event_type: &str,
    request: &str,
    wait: Duration,
) -> serde_json::Value {
    eventually(wait, &format!("{event_type} for {request}"), || async {
        let rows = db
            .query(
                "SELECT payload FROM public.user_notifications
                 WHERE recipient_id = $1 AND event_type = $2",
                &[&user, &event_type],
            )
            .await
            .ok()?;
        rows.iter()
            .map(|r| r.get::<_, serde_json::Value>(0))
            .find(|p| p["request_id"] == request)
    })
    .await
    .unwrap()
}

/// An upload whose first move fails: the move timeout's retry moves it, all in one trace. The
/// first move is made to fail by an object at the permanent path's parent (`files/<user>/
/// <request>`): the S3 server keeps keys as a file tree, so nothing can be written below a file.
/// The test removes it once the failed move is on record, and the timeout's retry succeeds.
#[tokio::test]
async fn an_upload_saga_and_its_retry_are_one_trace_across_gateway_media_saga_and_writer() {
    let stack = Stack::load();
    let db = stack.db().await;
    let s3 = stack.s3.client();
    let bucket = std::env::var("S3_MEDIA_BUCKET").unwrap_or_else(|_| "media-uploads".into());
    let user = Uuid::new_v4();
    let token = stack.token(user, "traced-upload@example.com");
    let api = |path: &str| format!("{}/api/v1/{path}", stack.gateway_url);
    let content: Vec<u8> = (0..4_000u32).map(|i| (i % 241) as u8).collect();
    let client = client_trace();
    let traced_post = |path: &str, body: serde_json::Value| {
        let request = http()
            .post(api(path))
            .bearer_auth(&token)
            .header("traceparent", client.child().to_string())
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<serde_json::Value>().await.unwrap())
        }
    };

    let (status, body) = traced_post(
        "media/upload-intent",
        json!({"file_name": "traced.png", "media_type": "image/png", "file_size": content.len()}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let request = body["request_id"].as_str().unwrap().to_string();
    let ready = media_notification(&db, user, "media.upload_ready", &request, WAIT).await;
    let upload_url = ready["upload_url"].as_str().unwrap();
    // The blocker: an object where the permanent file's folder would be.
    let blocker = format!("files/{user}/{request}");
    s3.put_object()
        .bucket(&bucket)
        .key(&blocker)
        .body(b"blocks the move".to_vec().into())
        .send()
        .await
        .unwrap();
    let put = http()
        .put(upload_url)
        .header("content-type", "image/png")
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "PUT {}", put.status());
    let (status, body) = traced_post("media/upload-complete", json!({"request_id": request})).await;
    assert_eq!(status, 202, "{body}");

    // The fault landed: the move failed (its S3 span says so) and the file is still an upload.
    let trace_id = format!("{:032x}", client.trace_id);
    let jaeger = jaeger_url();
    eventually(WAIT, "the failed first move in the trace", || async {
        let spans = trace(&jaeger, &trace_id).await?;
        spans
            .iter()
            .any(|s| s.service == "media-saga" && s.name == "S3.CopyObject" && s.error)
            .then_some(())
    })
    .await
    .unwrap();
    let request_uuid = Uuid::parse_str(&request).unwrap();
    let state: String = db
        .query_one(
            "SELECT state FROM public.media_sagas WHERE request_id = $1",
            &[&request_uuid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "received", "the saga waits for its move");
    s3.delete_object()
        .bucket(&bucket)
        .key(&blocker)
        .send()
        .await
        .unwrap();

    // The move timeout (30 s on the stack) fires a retry, which moves the file.
    let confirmed = media_notification(
        &db,
        user,
        "media.upload_confirmed",
        &request,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(
        confirmed["file_path"],
        format!("files/{user}/{request}/traced.png")
    );
    let retries: i32 = db
        .query_one(
            "SELECT retry_count FROM public.media_sagas WHERE request_id = $1",
            &[&request_uuid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(retries, 1, "confirmed by the first retry");

    let spans = eventually(WAIT, "the confirmation in the trace", || async {
        let spans = trace(&jaeger, &trace_id).await?;
        spans
            .iter()
            .any(|s| {
                s.service == "notification-writer"
                    && s.name == "process public.media.upload.confirmed"
            })
            .then_some(spans)
    })
    .await
    .unwrap();
    let names = |service: &str| -> Vec<String> {
        spans
            .iter()
            .filter(|s| s.service == service)
            .map(|s| s.name.clone())
            .collect()
    };
    let gateway = names("gateway");
    for expected in [
        "POST /api/v1/media/upload-intent",
        "POST /api/v1/media/upload-complete",
        "send internal.media.upload.intent",
        "send internal.media.upload.received",
        "S3.HeadObject",
    ] {
        assert!(
            gateway.iter().any(|n| n == expected),
            "gateway {expected}: {gateway:?}"
        );
    }
    let saga = names("media-saga");
    for expected in [
        "process internal.media.upload.intent",
        "INSERT media_sagas",
        "send public.media.upload.signed",
        "process internal.media.upload.received",
        "fire move_timeout",
        "send internal.media.upload.retry",
        "process internal.media.upload.retry",
        "process internal.media.file.ready",
        "INSERT media_files",
        "send public.media.upload.confirmed",
    ] {
        assert!(
            saga.iter().any(|n| n == expected),
            "media-saga {expected}: {saga:?}"
        );
    }
    let writer = names("notification-writer");
    for expected in [
        "process public.media.upload.signed",
        "process public.media.upload.confirmed",
    ] {
        assert!(
            writer.iter().any(|n| n == expected),
            "writer {expected}: {writer:?}"
        );
    }
    // The timer fires in the saga's trace (the intent's span) and the retry is its child.
    let retry = span(&spans, "media-saga", "process internal.media.upload.retry");
    let fired = span(&spans, "media-saga", "fire move_timeout");
    let retry_send = span(&spans, "media-saga", "send internal.media.upload.retry");
    assert_eq!(retry_send.parent_span_id, fired.span_id);
    assert_eq!(retry.parent_span_id, retry_send.span_id);
    let intent = span(&spans, "media-saga", "process internal.media.upload.intent");
    assert_eq!(
        fired.parent_span_id, intent.span_id,
        "the timer fires in the saga's trace"
    );
}
