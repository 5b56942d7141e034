//! The rule-evaluator against the local stack: rules saved in Postgres (create, change,
//! disable) are reloaded on their change notification (seen on the `rule_evaluator_rule_version`
//! gauge within 10 s; the periodic resync is 10 minutes away) and apply from the next event,
//! matching events become one dispatch request per action with stable ids, and every event
//! reaches the unified stream; actions travel without their secrets, and a rule whose secrets
//! are inline is not evaluated. `kill` SIGKILLs the binary mid-stream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use substrate_db::rules::{set_enabled, upsert, RuleRow};
use substrate_runtime::Shutdown;
use substrate_testkit::{eventually, repo_root, unique, Stack};
use uuid::Uuid;

mod kill;

fn purchase(segment: &str, amount: f64) -> Value {
    json!({
        "event_id": Uuid::now_v7(), "event_time": chrono::Utc::now().timestamp_millis(),
        "user": {"id": Uuid::new_v4(), "email": "buyer@example.com", "segment": segment, "country": null},
        "purchase": {"id": "o-1", "amount": amount, "currency": "EUR", "items": 1, "tags": [], "coupon": null}
    })
}

/// The CloudEvents headers of a purchase with this id.
fn purchase_headers(id: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: "ce_id",
            value: Some(id),
        })
        .insert(Header {
            key: "ce_type",
            value: Some("commerce.purchase"),
        })
        .insert(Header {
            key: "ce_source",
            value: Some("/test"),
        })
        .insert(Header {
            key: "ce_time",
            value: Some("2026-11-25T10:00:00Z"),
        })
        .insert(Header {
            key: "ce_specversion",
            value: Some("1.0"),
        })
}

/// Waits until the evaluator at `metrics_url` has loaded `version` of rule `name` (0: the rule
/// is no longer loaded); returns how long that took.
async fn rule_loaded(metrics_url: &str, name: &str, version: i32) -> Duration {
    let started = Instant::now();
    let series = format!("rule_evaluator_rule_version{{rule=\"{name}\"}}");
    eventually(
        Duration::from_secs(10),
        &format!("{series} = {version}"),
        || async {
            (substrate_testkit::metric(metrics_url, &series).await? == f64::from(version))
                .then_some(())
        },
    )
    .await
    .unwrap();
    started.elapsed()
}

struct Harness {
    stack: Stack,
    topic: String,
    producer: FutureProducer,
    schema: substrate_avro::TopicSchema,
}

impl Harness {
    /// Produces a purchase with CloudEvents headers; returns its event id.
    async fn send(&self, segment: &str, amount: f64) -> String {
        let event = purchase(segment, amount);
        let id = event["event_id"].as_str().unwrap().to_string();
        let value = self.schema.to_avro(&event).unwrap();
        let bytes = self
            .stack
            .registry()
            .encode(&self.topic, value)
            .await
            .unwrap();
        let record = FutureRecord::<str, [u8]>::to(&self.topic)
            .key(&id)
            .payload(&bytes)
            .headers(purchase_headers(&id));
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        id
    }
}

/// Dispatch requests decoded, grouped by event id, read for `window`.
async fn requests(
    stack: &Stack,
    consumer: &StreamConsumer,
    window: Duration,
) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
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
        out.entry(json["event_id"].as_str().unwrap().to_string())
            .or_default()
            .push(json);
    }
    out
}

#[tokio::test]
async fn rules_hot_reload_and_produce_dispatch_requests() {
    let stack = Stack::load();
    let topic = unique("test.rules.purchases");
    let catalog = substrate_avro::Catalog::load(&repo_root().join("avro")).unwrap();
    let schema = catalog
        .get("public.commerce.purchase.events")
        .unwrap()
        .clone();
    stack.create_topic(&topic, 3).await;
    stack
        .registry()
        .register(&topic, &schema.text)
        .await
        .unwrap();
    // Requests go to a topic of this test, not to the stack's dispatcher.
    let dispatch_topic = unique("test.rules.requests");
    stack.create_topic(&dispatch_topic, 3).await;
    stack
        .registry()
        .register(
            &dispatch_topic,
            &catalog.get("internal.dispatch.requests").unwrap().text,
        )
        .await
        .unwrap();

    let yaml = format!(
        "rule_evaluator:\n  listen: 127.0.0.1:0\n  group_id: {group}\n  topics: [{topic}]\n  dispatch_topic: {dispatch_topic}\n  unified_topic: internal.platform.unified.events\n  avro_dir: {avro}\n  resync_secs: 600\n\
         kafka:\n  bootstrap_servers: {kafka}\n\
         schema_registry:\n  url: {registry}\n\
         database:\n  url: {db}\n",
        group = unique("test-rules"),
        dispatch_topic = dispatch_topic,
        avro = repo_root().join("avro").display(),
        kafka = stack.bootstrap_servers,
        registry = stack.registry_url,
        db = stack.database_url,
    );
    let config: rule_evaluator::Config =
        substrate_runtime::config::load_config_from(rule_evaluator::config::DEFAULTS, &yaml)
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_url = format!("http://{}/metrics", listener.local_addr().unwrap());
    let shutdown = Shutdown::default();
    let evaluator = tokio::spawn(rule_evaluator::serve(config, listener, shutdown.clone()));

    let mut db = stack.db().await;
    // A rule written to the table with its secrets inline (as before secrets were sealed) is
    // not evaluated: its Slack URL must not travel in requests.
    let slack_url = format!(
        "https://hooks.slack.com/services/T/B/{}",
        Uuid::new_v4().simple()
    );
    let inline = upsert(
        &db,
        &RuleRow {
            id: Uuid::nil(),
            name: unique("inline-secrets"),
            enabled: true,
            topics: vec![topic.clone()],
            event_types: vec![],
            condition: json!("user.segment == 'VIP'"),
            condition_text: None,
            actions: json!([{"type": "slack", "webhook_url": slack_url, "template": "inline"}]),
            priority: 0,
            version: 0,
        },
    )
    .await
    .unwrap();
    let name = unique("vip-purchase");
    let actions: Vec<substrate_rules::Action> = serde_json::from_value(json!([
        {"type": "slack", "webhook_url": slack_url, "template": "VIP spent {{purchase.amount}}"},
        {"type": "s3", "bucket": "event-archive", "prefix": "vip"}
    ]))
    .unwrap();
    let (public, sealed) = substrate_rules::split_actions(&actions);
    let plaintexts: Vec<(i32, Vec<u8>)> = sealed.iter().map(|(i, s)| (*i, s.to_bytes())).collect();
    let mut rule = RuleRow {
        id: Uuid::nil(),
        name: name.clone(),
        enabled: true,
        topics: vec![topic.clone()],
        event_types: vec![],
        condition: json!("purchase.amount > 500 AND user.segment == 'VIP'"),
        condition_text: Some("purchase.amount > 500 AND user.segment == 'VIP'".into()),
        actions: public,
        priority: 10,
        version: 0,
    };
    let saved = substrate_db::secrets::save_rule(&mut db, &rule, &plaintexts, &stack.keyring())
        .await
        .unwrap();
    assert_eq!(saved.version, 1);

    let producer: FutureProducer = stack.kafka().producer_config().create().unwrap();
    let harness = Harness {
        stack: stack.clone(),
        topic: topic.clone(),
        producer,
        schema,
    };
    let dispatch = stack.consumer(&dispatch_topic);
    let unified = stack.consumer_at_end("internal.platform.unified.events");
    // The rule is loaded before the first event. (The evaluator's group is new and starts at
    // the earliest offset, so events produced before it joins are read all the same.)
    let took = rule_loaded(&metrics_url, &name, 1).await;
    eprintln!("version 1 loaded after {took:?}");

    let vip = harness.send("VIP", 750.0).await;
    let regular = harness.send("REGULAR", 750.0).await;
    let seen = requests(&stack, &dispatch, Duration::from_secs(15)).await;
    let vip_requests = seen.get(&vip).expect("the VIP purchase matched");
    assert_eq!(vip_requests.len(), 2, "one request per action");
    let mut indexes: Vec<i64> = vip_requests
        .iter()
        .map(|r| r["action_index"].as_i64().unwrap())
        .collect();
    indexes.sort();
    assert_eq!(indexes, vec![0, 1]);
    for request in vip_requests {
        assert_eq!(request["rule_id"], saved.id.to_string());
        assert_eq!(request["rule_version"], 1);
        assert_eq!(request["source_topic"], topic);
        assert_eq!(request["event_type"], "commerce.purchase");
        let index = request["action_index"].as_u64().unwrap() as usize;
        assert_eq!(
            request["request_id"],
            rule_evaluator::evaluate::request_id(&vip, saved.id, index).to_string()
        );
        let payload: Value = serde_json::from_str(request["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload["purchase"]["amount"], 750.0);
        let action: Value = serde_json::from_str(request["action"].as_str().unwrap()).unwrap();
        assert!(action["type"] == "slack" || action["type"] == "s3");
        if action["type"] == "slack" {
            assert_eq!(
                action["endpoint"],
                substrate_secrets::redact_url(&slack_url)
            );
        }
    }
    for request in seen.values().flatten() {
        assert_ne!(request["rule_id"], inline.id.to_string(), "{request}");
        assert!(!request.to_string().contains("/services/"), "{request}");
    }
    assert!(
        !seen.contains_key(&regular),
        "a REGULAR purchase does not match"
    );

    // Change: the threshold moves to 1,000 and is live once version 2 is loaded.
    rule.condition = json!({"all": [
        {"field": "purchase.amount", "op": ">", "value": 1000},
        {"field": "user.segment", "operator": "==", "value": "VIP"}
    ]});
    rule.condition_text = None;
    assert_eq!(upsert(&db, &rule).await.unwrap().version, 2);
    let took = rule_loaded(&metrics_url, &name, 2).await;
    eprintln!("version 2 loaded after {took:?}");
    let below = harness.send("VIP", 750.0).await;
    let above = harness.send("VIP", 1500.0).await;
    let seen = requests(&stack, &dispatch, Duration::from_secs(10)).await;
    assert!(
        !seen.contains_key(&below),
        "the old threshold no longer applies"
    );
    let above_requests = seen.get(&above).expect("the new threshold applies");
    assert!(above_requests.iter().all(|r| r["rule_version"] == 2));

    // Disable: no more requests once the rule is unloaded.
    assert!(set_enabled(&db, &name, false).await.unwrap());
    let took = rule_loaded(&metrics_url, &name, 0).await;
    eprintln!("rule unloaded after {took:?}");
    let after_disable = harness.send("VIP", 5000.0).await;
    let seen = requests(&stack, &dispatch, Duration::from_secs(5)).await;
    assert!(
        !seen.contains_key(&after_disable),
        "a disabled rule does nothing"
    );

    // Every consumed event is in the unified stream, with its domain and entity.
    let mut unified_ids = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while unified_ids.len() < 5 && Instant::now() < deadline {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), unified.recv()).await
        {
            let (value, _) = stack
                .registry()
                .decode(message.payload().unwrap())
                .await
                .unwrap();
            let json = substrate_avro::avro_to_json(&value);
            if json["source_topic"] == topic.as_str() {
                unified_ids.insert(json["event_id"].as_str().unwrap().to_string(), json);
            }
        }
    }
    for id in [&vip, &regular, &below, &above, &after_disable] {
        let event = unified_ids
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} missing from the unified stream"));
        assert_eq!(event["domain"], "commerce");
        assert_eq!(event["entity"], "purchase");
    }

    shutdown.cancel();
    evaluator.await.unwrap().unwrap();
    db.execute(
        "DELETE FROM public.rules WHERE name = $1 OR id = $2",
        &[&name, &inline.id],
    )
    .await
    .unwrap();
}
