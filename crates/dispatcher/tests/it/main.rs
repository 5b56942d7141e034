//! The dispatcher against the local stack (Kafka, registry, Postgres, S3) with real HTTP
//! receivers: every sink, Standard Webhooks signatures checked by an independent implementation,
//! retries through delay topics into the dead letter and back by replay, 410, isolation of a
//! hanging endpoint, the SSRF guard, and a SIGKILL mid-stream.

mod harness;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{audit_rows, purchase, Answer, Receiver, Request, Setup};
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};
use substrate_testkit::{eventually, test_python, unique, workspace_bin};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD_SECRET: &str = "whsec_dGVzdC1vbGQtc2VjcmV0LWZvci1yb3RhdGlvbg==";

/// Verifies captured requests with the PyPI `standardwebhooks` package; returns, per request,
/// whether each secret verifies it.
fn verify_with_python(hits: &[harness::Hit], secrets: &[&str]) -> Vec<Vec<bool>> {
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
data = json.load(sys.stdin)
out = []
for hit in data["hits"]:
    row = []
    for secret in data["secrets"]:
        try:
            Webhook(secret).verify(hit["body"], hit["headers"])
            row.append(True)
        except Exception:
            row.append(False)
    out.append(row)
print(json.dumps(out))
"#;
    let input = json!({
        "secrets": secrets,
        "hits": hits.iter().map(|h| json!({
            "body": String::from_utf8(h.body.clone()).unwrap(),
            "headers": {
                "webhook-id": h.headers["webhook-id"],
                "webhook-timestamp": h.headers["webhook-timestamp"],
                "webhook-signature": h.headers["webhook-signature"],
            }
        })).collect::<Vec<_>>(),
    });
    let mut child = Command::new(test_python())
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python with standardwebhooks (scripts/test.sh creates it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sink_delivers_and_webhooks_verify_independently() {
    let setup = Setup::new(&["500ms"]).await;
    let running = setup.start().await;
    let receiver = Receiver::start(Answer::Status(204)).await;
    let producer = setup.producer();
    let db = setup.stack.db().await;

    // Signed webhook, two secrets (rotation); a Standard Webhooks library accepts both.
    let event = purchase("VIP", 750.0);
    let webhook = setup
        .send(
            &producer,
            json!({"type": "webhook", "url": receiver.url("/hook"), "secrets": [SECRET, OLD_SECRET],
                   "headers": {"x-team": "growth"}}),
            event.clone(),
        )
        .await;
    let slack = setup
        .send(
            &producer,
            json!({"type": "slack", "webhook_url": receiver.url("/slack"),
                   "template": "VIP {{user.email}} spent {{purchase.amount}} {{purchase.currency}}"}),
            event.clone(),
        )
        .await;
    let discord = setup
        .send(
            &producer,
            json!({"type": "discord", "webhook_url": receiver.url("/discord"),
                   "template": "order {{purchase.id}}: {{purchase.items}} items"}),
            event.clone(),
        )
        .await;
    let forward_topic = unique("test.dispatch.forward");
    setup.stack.create_topic(&forward_topic, 1).await;
    let forwarded = setup.stack.consumer(&forward_topic);
    let kafka = setup
        .send(
            &producer,
            json!({"type": "kafka", "topic": forward_topic}),
            event.clone(),
        )
        .await;
    let notify = setup
        .send(
            &producer,
            json!({"type": "notification", "event_type": "commerce.vip_purchase", "recipient_field": "user.id"}),
            event.clone(),
        )
        .await;
    let prefix = unique("it-archive");
    let mut archived = Vec::new();
    for i in 0..3 {
        archived.push(
            setup
                .send(
                    &producer,
                    json!({"type": "s3", "bucket": setup.stack.s3_archive_bucket, "prefix": prefix}),
                    purchase("REGULAR", 10.0 + i as f64),
                )
                .await,
        );
    }

    let hook = receiver
        .wait_for(&webhook.request_id, 1, Duration::from_secs(20))
        .await;
    assert_eq!(hook.len(), 1, "the webhook arrived once");
    let hook = &hook[0];
    assert_eq!(hook.path, "/hook");
    assert_eq!(hook.headers["x-team"], "growth");
    assert_eq!(hook.headers["content-type"], "application/json");
    assert_eq!(hook.webhook_id(), webhook.request_id.to_string());
    assert_eq!(
        hook.headers["webhook-signature"].split(' ').count(),
        2,
        "one signature per secret"
    );
    let body = hook.json();
    assert_eq!(body["type"], "commerce.purchase");
    assert_eq!(body["data"]["purchase"]["amount"], 750.0);
    assert_eq!(
        verify_with_python(
            std::slice::from_ref(hook),
            &[SECRET, OLD_SECRET, "whsec_d3Jvbmctc2VjcmV0"]
        ),
        vec![vec![true, true, false]],
        "standardwebhooks verifies with both secrets and refuses a wrong one"
    );

    let slack_hit = receiver
        .wait_for(&slack.request_id, 1, Duration::from_secs(20))
        .await;
    assert_eq!(
        slack_hit[0].json(),
        json!({"text": "VIP buyer@example.com spent 750.0 EUR"})
    );
    let discord_hit = receiver
        .wait_for(&discord.request_id, 1, Duration::from_secs(20))
        .await;
    assert_eq!(
        discord_hit[0].json(),
        json!({"content": "order o-1: 2 items"})
    );

    // Kafka forward: the event as JSON, keyed by event id, CloudEvents id = request id.
    let message = tokio::time::timeout(Duration::from_secs(20), forwarded.recv())
        .await
        .expect("forwarded in time")
        .unwrap();
    let value: Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(value["purchase"]["amount"], 750.0);
    let headers = message.headers().unwrap();
    let ce_id = headers
        .iter()
        .find(|h| h.key == "ce_id")
        .and_then(|h| h.value)
        .unwrap();
    assert_eq!(ce_id, kafka.request_id.to_string().as_bytes());

    // Notification: a direct user_notifications row for the buyer, written once.
    let user = event["user"]["id"].as_str().unwrap().to_string();
    let row = eventually(Duration::from_secs(30), "notification row", || {
        let db = &db;
        let id = notify.request_id;
        async move {
            db.query_opt(
                "SELECT event_type, recipient_id::text, payload FROM public.user_notifications WHERE event_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1), r.get::<_, Value>(2)))
        }
    })
    .await
    .unwrap();
    assert_eq!(row.0, "commerce.vip_purchase");
    assert_eq!(row.1.as_deref(), Some(user.as_str()));
    assert_eq!(row.2["purchase"]["amount"], 750.0);

    // S3: the three events in NDJSON under prefix/topic/date/.
    let dir = format!("{prefix}/public.commerce.purchase.events/");
    let lines = eventually(Duration::from_secs(20), "archive objects", || async {
        let lines = setup.stack.archived_lines(&dir).await?;
        (lines.len() >= 3).then_some(lines)
    })
    .await
    .unwrap();
    let date = chrono::Utc::now().format("%Y-%m-%d").to_string();
    for (key, _) in &lines {
        assert!(key.ends_with(".ndjson"), "{key}");
        assert!(key.contains(&date), "{key} has the event date");
    }
    let lines: Vec<Value> = lines.into_iter().map(|(_, line)| line).collect();
    let ids: HashSet<String> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_string())
        .collect();
    for request in &archived {
        assert!(ids.contains(&request.request_id.to_string()));
    }

    // Audit: one `delivered` row per request.
    for request in [&webhook, &slack, &discord, &kafka, &notify]
        .into_iter()
        .chain(archived.iter())
    {
        let rows = eventually(Duration::from_secs(10), "audit row", || {
            let db = &db;
            let id = request.request_id;
            async move {
                let rows = audit_rows(db, &id).await;
                (!rows.is_empty()).then_some(rows)
            }
        })
        .await
        .unwrap();
        assert_eq!(rows, vec![(1, "delivered".to_string(), rows[0].2)]);
    }
    assert_eq!(audit_rows(&db, &webhook.request_id).await[0].2, Some(204));
    running.stop().await;
}

/// Runs `esctl` with the stack's settings.
fn esctl(setup: &Setup, args: &[&str]) -> String {
    let output = Command::new(workspace_bin("esctl"))
        .args(args)
        .env(
            "SUBSTRATE_KAFKA__BOOTSTRAP_SERVERS",
            &setup.stack.bootstrap_servers,
        )
        .env("SUBSTRATE_SCHEMA_REGISTRY__URL", &setup.stack.registry_url)
        .env("SUBSTRATE_DATABASE__URL", &setup.stack.database_url)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "esctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_on_schedule_then_dead_letter_then_replay_delivers() {
    let setup = Setup::new(&["300ms", "600ms"]).await;
    let running = setup.start().await;
    let receiver = Receiver::start(Answer::Status(503)).await;
    let producer = setup.producer();
    let db = setup.stack.db().await;

    let request = setup
        .send(
            &producer,
            json!({"type": "webhook", "url": receiver.url("/flaky"), "secrets": [SECRET]}),
            purchase("VIP", 900.0),
        )
        .await;
    let hits = receiver
        .wait_for(&request.request_id, 3, Duration::from_secs(20))
        .await;
    assert_eq!(hits.len(), 3, "three attempts: the first and one per delay");
    let gaps: Vec<Duration> = hits.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps[0] >= Duration::from_millis(300),
        "retry 1 waited its delay: {gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(600),
        "retry 2 waited its delay: {gaps:?}"
    );
    // The id is stable across retries (receivers deduplicate on it).
    assert!(hits
        .iter()
        .all(|h| h.webhook_id() == request.request_id.to_string()));

    // Dead letter with error, attempts and the origin of the request.
    let listed = eventually(Duration::from_secs(10), "dead letter", || async {
        let out = esctl(
            &setup,
            &[
                "dlq",
                "list",
                "--topic",
                &setup.dead_letter_topic,
                "--request-id",
                &request.request_id.to_string(),
            ],
        );
        (!out.trim().is_empty()).then_some(out)
    })
    .await
    .unwrap();
    let record: Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(record["attempts"], 3);
    assert!(
        record["error"].as_str().unwrap().contains("HTTP 503"),
        "{record}"
    );
    assert_eq!(record["source"]["topic"], setup.requests_topic);
    assert!(record["source"]["offset"].as_i64().is_some());
    assert_eq!(record["request"]["sink"], "webhook");
    assert_eq!(record["service"], "dispatcher");

    // Audit rows = attempts.
    let rows = eventually(Duration::from_secs(10), "three audit rows", || async {
        let rows = audit_rows(&db, &request.request_id).await;
        (rows.len() == 3).then_some(rows)
    })
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (1, "retry".into(), Some(503)),
            (2, "retry".into(), Some(503)),
            (3, "failed".into(), Some(503))
        ]
    );
    assert_eq!(rows.len(), receiver.hits_for(&request.request_id).len());

    // The endpoint recovers; replaying the dead letter (filtered by sink) delivers it.
    receiver.answer(Answer::Status(200));
    let out = esctl(
        &setup,
        &[
            "dlq",
            "replay",
            "--topic",
            &setup.dead_letter_topic,
            "--sink",
            "webhook",
            "--request-id",
            &request.request_id.to_string(),
        ],
    );
    assert!(out.contains("replayed 1 dead letter"), "{out}");
    let hits = receiver
        .wait_for(&request.request_id, 4, Duration::from_secs(20))
        .await;
    assert_eq!(hits.len(), 4);
    let rows = eventually(Duration::from_secs(10), "replay audit row", || async {
        let rows = audit_rows(&db, &request.request_id).await;
        (rows.len() == 4).then_some(rows)
    })
    .await
    .unwrap();
    assert_eq!(
        rows[3],
        (1, "delivered".into(), Some(200)),
        "attempts start over"
    );

    // 429 with Retry-After: the retry waits at least that long (moved to a longer delay topic).
    receiver.answer(Answer::RetryAfter(429, 1));
    let throttled = setup
        .send(
            &producer,
            json!({"type": "webhook", "url": receiver.url("/throttled")}),
            purchase("VIP", 901.0),
        )
        .await;
    let first = receiver
        .wait_for(&throttled.request_id, 1, Duration::from_secs(20))
        .await;
    receiver.answer(Answer::Status(200));
    let both = receiver
        .wait_for(&throttled.request_id, 2, Duration::from_secs(20))
        .await;
    assert_eq!(both.len(), 2);
    assert!(
        both[1].at - first[0].at >= Duration::from_millis(600),
        "Retry-After moved the retry to the 600ms topic"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_until_an_operator_enables_it() {
    let setup = Setup::new(&["300ms"]).await;
    let running = setup.start().await;
    let receiver = Receiver::start(Answer::Status(410)).await;
    let producer = setup.producer();
    let db = setup.stack.db().await;
    let url = receiver.url(&format!("/gone/{}", uuid::Uuid::new_v4()));
    let action = json!({"type": "webhook", "url": url});

    let first = setup
        .send(&producer, action.clone(), purchase("VIP", 1.0))
        .await;
    assert_eq!(
        receiver
            .wait_for(&first.request_id, 1, Duration::from_secs(20))
            .await
            .len(),
        1
    );
    let rows = eventually(Duration::from_secs(10), "disabled row", || async {
        let rows = audit_rows(&db, &first.request_id).await;
        (!rows.is_empty()).then_some(rows)
    })
    .await
    .unwrap();
    assert_eq!(rows, vec![(1, "disabled".into(), Some(410))]);
    let endpoints = esctl(&setup, &["endpoints", "list"]);
    assert!(
        endpoints
            .lines()
            .any(|l| l.contains(&url) && l.contains("\"disabled\":true")),
        "{endpoints}"
    );

    // The next request is not sent; it waits in the dead letter.
    receiver.answer(Answer::Status(200));
    let second = setup
        .send(&producer, action.clone(), purchase("VIP", 2.0))
        .await;
    let rows = eventually(Duration::from_secs(20), "skipped row", || async {
        let rows = audit_rows(&db, &second.request_id).await;
        (!rows.is_empty()).then_some(rows)
    })
    .await
    .unwrap();
    assert_eq!(rows[0].1, "skipped");
    assert!(receiver.hits_for(&second.request_id).is_empty());

    // Enabled again: deliveries resume (the dispatcher re-reads endpoints every second here).
    let out = esctl(&setup, &["endpoints", "enable", &url]);
    assert!(out.contains("enabled"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let third = setup.send(&producer, action, purchase("VIP", 3.0)).await;
    assert_eq!(
        receiver
            .wait_for(&third.request_id, 1, Duration::from_secs(20))
            .await
            .len(),
        1
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_requests_to_a_hanging_endpoint_do_not_stall_the_others() {
    let mut setup = Setup::new(&["1h"]).await;
    setup.timeout_ms = 10_000;
    let running = setup.start().await;
    let hanging = Receiver::start(Answer::Hang).await;
    let healthy = Receiver::start(Answer::Status(200)).await;
    let producer = setup.producer();

    // 5,000 requests to an endpoint that never answers, with 100 to a healthy one among them
    // (one after every fifty), all written before most are read.
    let mut requests = Vec::new();
    let mut healthy_ids = Vec::new();
    for i in 0..5100 {
        let url = if i % 51 == 50 {
            healthy.url("/ok")
        } else {
            hanging.url("/hang")
        };
        let request = Request::new(json!({"type": "webhook", "url": url}), purchase("VIP", 1.0));
        if i % 51 == 50 {
            healthy_ids.push(request.request_id);
        }
        requests.push(request);
    }
    assert_eq!(healthy_ids.len(), 100);
    let started = Instant::now();
    setup.send_many(&producer, &requests).await;
    let sent = started.elapsed();
    for id in &healthy_ids {
        assert_eq!(
            healthy.wait_for(id, 1, Duration::from_secs(60)).await.len(),
            1
        );
    }
    let last = healthy.hits().iter().map(|h| h.at).max().unwrap();
    // The hanging endpoint's 10 s timeout never came into it: every healthy delivery landed
    // while its first requests were still hanging.
    assert!(
        last - started < sent + Duration::from_secs(8),
        "healthy deliveries took {:?} (sending took {sent:?})",
        last - started
    );
    // The fault landed: the hanging endpoint had its 64 slots taken, held at most half of the
    // in-flight slots while it might still answer, and then, answering nothing, had the rest
    // deferred.
    let hung = hanging.hits().len();
    assert!(
        (1..=64).contains(&hung),
        "the hanging endpoint got at most its concurrency: {hung}"
    );
    let metrics = substrate_runtime::ops::metrics_handle().render();
    let deferred: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("dispatcher_deferred_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        deferred >= 2500.0,
        "requests beyond what the endpoint may hold were deferred: {deferred}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_does_not_delay_another() {
    let mut setup = Setup::new(&["1h"]).await;
    setup.timeout_ms = 10_000;
    let running = setup.start().await;
    let hanging = Receiver::start(Answer::Hang).await;
    let healthy = Receiver::start(Answer::Status(200)).await;
    let producer = setup.producer();

    let started = Instant::now();
    let mut healthy_ids = Vec::new();
    for i in 0..20 {
        setup
            .send(
                &producer,
                json!({"type": "webhook", "url": hanging.url("/hang")}),
                purchase("VIP", i as f64),
            )
            .await;
        healthy_ids.push(
            setup
                .send(
                    &producer,
                    json!({"type": "webhook", "url": healthy.url("/ok")}),
                    purchase("VIP", i as f64),
                )
                .await
                .request_id,
        );
    }
    for id in &healthy_ids {
        assert_eq!(
            healthy.wait_for(id, 1, Duration::from_secs(20)).await.len(),
            1
        );
    }
    let last = healthy.hits().iter().map(|h| h.at).max().unwrap();
    // Every healthy delivery landed while the hanging ones were still waiting for their
    // 10 s timeout.
    assert!(
        last - started < Duration::from_secs(8),
        "healthy deliveries took {:?}",
        last - started
    );
    assert_eq!(
        hanging.hits().len(),
        20,
        "the hanging endpoint got its requests too"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_unless_allowed() {
    let mut setup = Setup::new(&["300ms"]).await;
    setup.allow_private = false;
    let running = setup.start().await;
    let receiver = Receiver::start(Answer::Status(200)).await;
    let producer = setup.producer();
    let db = setup.stack.db().await;
    let literal = setup
        .send(
            &producer,
            json!({"type": "webhook", "url": receiver.url("/internal")}),
            purchase("VIP", 1.0),
        )
        .await;
    let named = setup
        .send(
            &producer,
            json!({"type": "slack", "webhook_url": format!("http://localhost:{}/internal", receiver.addr.port()), "template": "x"}),
            purchase("VIP", 1.0),
        )
        .await;
    for request in [&literal, &named] {
        let rows = eventually(Duration::from_secs(20), "refused row", || async {
            let rows = audit_rows(&db, &request.request_id).await;
            (!rows.is_empty()).then_some(rows)
        })
        .await
        .unwrap();
        assert_eq!(rows.len(), 1, "refusals are not retried");
        assert_eq!(rows[0].1, "failed");
    }
    let error: String = db
        .query_one(
            "SELECT error FROM public.dispatch_attempts WHERE request_id = $1",
            &[&named.request_id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(error.contains("private targets are not allowed"), "{error}");
    assert!(receiver.hits().is_empty(), "nothing reached the receiver");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_and_duplicates_keep_their_id() {
    let setup = Setup::new(&["500ms"]).await;
    // 64 deliveries in flight × 100 ms: about 640/s, so the kill lands mid-stream after
    // offsets were committed (every second).
    let receiver = Receiver::start(Answer::Slow(Duration::from_millis(100))).await;
    let producer = setup.producer();
    let config = std::env::temp_dir().join(format!("{}.yaml", setup.group));
    std::fs::write(&config, setup.yaml()).unwrap();
    let spawn = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dispatcher"));
        // Only this test's file configures it (the stack's SUBSTRATE_* would take precedence).
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SUBSTRATE_")) {
            command.env_remove(key);
        }
        command
            .env("SUBSTRATE_CONFIG", &config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };

    const N: usize = 2000;
    let mut sent = HashSet::new();
    for i in 0..N {
        let request = harness::Request::new(
            json!({"type": "webhook", "url": receiver.url("/kill"), "secrets": [SECRET]}),
            purchase("VIP", i as f64),
        );
        sent.insert(request.request_id.to_string());
        setup.send_request(&producer, &request).await;
    }
    let mut child = spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.hits().len() < N / 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = receiver.hits().len();
    assert!(before < N, "killed mid-stream ({before} delivered)");

    let mut child = spawn();
    let delivered = eventually(
        Duration::from_secs(90),
        "every request delivered",
        || async {
            let ids: HashSet<String> = receiver
                .hits()
                .iter()
                .map(|h| h.webhook_id().to_string())
                .collect();
            (ids.len() >= N).then_some(ids)
        },
    )
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let delivered = delivered.unwrap();
    assert_eq!(delivered, sent, "every request delivered, nothing else");
    let hits = receiver.hits();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for hit in &hits {
        *per_id.entry(hit.webhook_id()).or_default() += 1;
        assert!(hit.headers.contains_key("webhook-signature"));
    }
    let duplicates = hits.len() - per_id.len();
    eprintln!(
        "sigkill after {before} deliveries: {} total, {duplicates} duplicates (all with their request's webhook-id)",
        hits.len()
    );
    assert!(
        duplicates < before,
        "offsets committed before the kill were not delivered again"
    );
    assert!(status.success(), "SIGTERM drains and exits 0");
    let _ = std::fs::remove_file(config);
}
