//! The seed's example on the running stack: "if purchase.amount > 500 AND user.segment == 'VIP',
//! send a high-priority Slack alert; otherwise archive to S3". Events go through the gateway,
//! the rule-evaluator and the dispatcher; the Slack-format POST lands at a local receiver and the
//! archive in the stack's S3 server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{json, Value};
use substrate_db::rules::{upsert, RuleRow};
use substrate_testkit::{eventually, metric, unique, Stack};
use uuid::Uuid;

use crate::harness::post_json;

type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

async fn slack(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> &'static str {
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    seen.lock().unwrap().push((headers, value));
    "ok"
}

fn rule(name: &str, condition: &str, actions: Value) -> RuleRow {
    RuleRow {
        id: Uuid::nil(),
        name: name.to_string(),
        enabled: true,
        topics: vec!["public.commerce.purchase.events".into()],
        event_types: vec![],
        condition: json!(condition),
        condition_text: Some(condition.to_string()),
        actions,
        priority: 0,
        version: 0,
    }
}

#[tokio::test]
async fn vip_purchase_alerts_slack_and_others_are_archived_to_s3() {
    let stack = Stack::load();
    let seen: Seen = Arc::default();
    let app = axum::Router::new()
        .route("/services/T0/B0/x", axum::routing::post(slack))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut db = stack.db().await;
    let prefix = unique("e2e-archive");
    let vip_name = unique("e2e-vip-slack");
    let other_name = unique("e2e-archive-others");
    let condition = "purchase.amount > 500 AND user.segment == 'VIP'";
    // The Slack URL is sealed apart, as `esctl rules save` does.
    let vip_rule = crate::secrets::save_sealed(
        &stack,
        &mut db,
        rule(
            &vip_name,
            condition,
            json!([{"type": "slack", "webhook_url": format!("http://{addr}/services/T0/B0/x"),
                    "template": ":rotating_light: VIP {{user.email}} spent {{purchase.amount}} {{purchase.currency}}"}]),
        ),
    )
    .await;
    upsert(
        &db,
        &rule(
            &other_name,
            &format!("NOT ({condition})"),
            json!([{"type": "s3", "bucket": stack.s3_archive_bucket, "prefix": prefix}]),
        ),
    )
    .await
    .unwrap();
    // Both rules are live once the running evaluator reports their versions.
    for name in [&vip_name, &other_name] {
        let series = format!("rule_evaluator_rule_version{{rule=\"{name}\"}}");
        eventually(Duration::from_secs(10), "the rules loaded", || async {
            (metric(&stack.rule_evaluator_metrics, &series).await? >= 1.0).then_some(())
        })
        .await
        .unwrap();
    }

    let user = Uuid::new_v4();
    // The purchase route takes the shop's API key (Bearer esk_...), not a user's token.
    let token = stack.api_key(&unique("shop"), &["purchase"]).await;
    stack
        .wait_for_key(&stack.gateway_url, "purchase", &token)
        .await;
    let url = format!("{}/api/v1/events/purchase", stack.gateway_url);
    let post = |segment: &str, amount: f64| {
        let body = json!({
            "user": {"id": user, "email": "vip@example.com", "segment": segment, "country": "DE"},
            "purchase": {"id": unique("order"), "amount": amount, "currency": "EUR", "items": 1}
        });
        let url = url.clone();
        let token = token.clone();
        async move {
            let (status, _, body) = post_json(&url, Some(&token), &body).await;
            assert_eq!(status, 202, "{body}");
            body["event_id"].as_str().unwrap().to_string()
        }
    };
    let vip = post("VIP", 750.0).await;
    let regular = post("REGULAR", 750.0).await;
    let small_vip = post("VIP", 20.0).await;

    // VIP → one Slack-format POST whose webhook-id is the deterministic request id.
    let request_id = rule_evaluator::evaluate::request_id(&vip, vip_rule.id, 0).to_string();
    let (headers, body) = eventually(Duration::from_secs(30), "the Slack alert", || async {
        seen.lock()
            .unwrap()
            .iter()
            .find(|(h, _)| {
                h.get("webhook-id")
                    .is_some_and(|v| v == request_id.as_str())
            })
            .cloned()
    })
    .await
    .unwrap();
    assert_eq!(
        body,
        json!({"text": ":rotating_light: VIP vip@example.com spent 750.0 EUR"})
    );
    assert_eq!(headers["content-type"], "application/json");

    // The others → NDJSON lines in the archive bucket under prefix/topic/date/.
    let dir = format!("{prefix}/public.commerce.purchase.events/");
    let archived = eventually(Duration::from_secs(30), "the archived events", || async {
        let events: Vec<String> = stack
            .archived_lines(&dir)
            .await?
            .iter()
            .filter_map(|(_, line)| line["event_id"].as_str().map(String::from))
            .collect();
        (events.contains(&regular) && events.contains(&small_vip)).then_some(events)
    })
    .await
    .unwrap();
    assert!(!archived.contains(&vip), "the VIP purchase is not archived");
    // Only the VIP purchase alerted. The other two are archived, so the evaluator evaluated
    // them against both rules and the dispatcher handled their requests; a Slack request for
    // either would have come out of the same evaluation and been posted before the archive
    // object (written in batches) was readable.
    assert_eq!(seen.lock().unwrap().len(), 1);

    db.execute(
        "DELETE FROM public.rules WHERE name = ANY($1)",
        &[&vec![vip_name, other_name]],
    )
    .await
    .unwrap();
}
