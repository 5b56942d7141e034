//! The dispatcher against the local stack (Kafka, registry, Postgres, S3) with real HTTP
//! receivers: every sink, Standard Webhooks signatures checked by an independent implementation,
//! retries through delay topics into the dead letter and back by replay, 410, isolation of a
//! hanging endpoint, the SSRF guard, secrets resolved from Postgres (and what happens when they
//! cannot be), and ten SIGKILLs mid-stream.

mod harness;
mod secrets;

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
    // Known by the hash of its URL and shown redacted: the URL itself is nowhere.
    let endpoints = esctl(&setup, &["endpoints", "list"]);
    let shown = substrate_secrets::redact_url(&url);
    assert!(
        endpoints.lines().any(|l| l.contains(&shown)
            && l.contains(&substrate_secrets::url_hash(&url))
            && l.contains("\"disabled\":true")),
        "{endpoints}"
    );
    assert!(!endpoints.contains(&url), "{endpoints}");

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
    // The hanging endpoint got its requests too (each is still waiting for its timeout; the
    // last may arrive a moment after the healthy deliveries finished).
    eventually(
        Duration::from_secs(5),
        "the hanging endpoint got all 20 requests",
        || async { (hanging.hits().len() == 20).then_some(()) },
    )
    .await
    .unwrap();
    assert!(
        Instant::now() - started < Duration::from_secs(10),
        "all hanging requests arrived within their timeout"
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

/// The dispatcher binary under test, SIGKILLed (or stopped) by the test; killed on drop so a
/// failing test leaves no process behind.
struct Dispatcher(std::process::Child);

impl Dispatcher {
    fn spawn(config: &std::path::Path, log: &std::path::Path) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dispatcher"));
        // Only this test's file configures it (the stack's SUBSTRATE_* would take precedence).
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SUBSTRATE_")) {
            command.env_remove(key);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        // Proxy variables pointing nowhere: deliveries must ignore them (no `http.proxy` set).
        for var in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
        ] {
            command.env(var, "http://127.0.0.1:9");
        }
        Self(
            command
                .env("SUBSTRATE_CONFIG", config)
                .env("RUST_LOG", "warn")
                .env("NO_COLOR", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }

    fn sigkill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }

    fn sigterm(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        self.0.wait().unwrap()
    }

    /// Sends a signal (`TERM`, `INT`) without waiting for the process.
    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    fn assert_running(&mut self, what: &str) {
        if let Some(status) = self.0.try_wait().unwrap() {
            panic!("the dispatcher exited ({status}) while {what}");
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The distinct `webhook-id`s a receiver got, read incrementally.
#[derive(Default)]
struct Delivered {
    ids: HashSet<String>,
    read: usize,
}

impl Delivered {
    fn update(&mut self, receiver: &Receiver) -> usize {
        let new = receiver.hits_from(self.read);
        self.read += new.len();
        self.ids
            .extend(new.iter().map(|h| h.webhook_id().to_string()));
        self.ids.len()
    }

    /// Polls until `done(distinct ids)`; fails when `deadline` passes or the dispatcher exits.
    async fn wait(
        &mut self,
        receiver: &Receiver,
        dispatcher: &mut Dispatcher,
        deadline: Instant,
        what: &str,
        done: impl Fn(usize) -> bool,
    ) {
        loop {
            let distinct = self.update(receiver);
            if done(distinct) {
                return;
            }
            dispatcher.assert_running(what);
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what} ({distinct} distinct delivered)"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One run of the dispatcher that ended with a SIGKILL.
struct Killed {
    /// Hits from this index on came after the kill (from the next run).
    boundary: usize,
    distinct: usize,
    new_distinct: usize,
    hits: usize,
    /// From the restart to the first hit, and to the kill.
    first_hit: Duration,
    lasted: Duration,
    /// Where the group resumes: offsets below were committed before the kill.
    committed: HashMap<harness::Partition, i64>,
}

fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The receiver answers each webhook after 100 ms; the dispatcher holds up to 64 deliveries to
/// one endpoint at once, so it delivers about 640 requests a second. Ten times in one run it is
/// SIGKILLed once it delivered N/25 requests it had not delivered before (each kill lands with
/// most of the work left), and restarted. Offsets are stored below the lowest request still in
/// flight and auto-committed every second, so each kill may redeliver what was in flight or
/// finished since the last commit (and a request deferred to the delay topic whose record was
/// not committed is delivered from both): duplicates, each with its request's `webhook-id`,
/// never from a record committed before the kill, and never a request lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_sigkills_mid_stream_lose_nothing_and_duplicates_keep_their_id() {
    const N: usize = 4000;
    const KILLS: usize = 10;
    const MARGIN: usize = N / 25;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(220);
    let mut setup = Setup::new(&["500ms"]).await;
    // The endpoint may hold everything the dispatcher reads ahead (queue = max_in_flight - 1),
    // so only the odd request is deferred to the delay topic. With the defaults (4096 read
    // ahead; beyond a queue of 256 the endpoint holds more only while its measured answer rate
    // says it will reach them) every start defers hundreds to thousands. A deferred record's
    // offset is stored only once the records below it are done, so after a kill the record is
    // handled again (deferred again, or delivered) and its copy is delivered too: ten kills
    // turned 4000 requests into ~25 000 copies and ~26 000 deliveries, and left hardly a request
    // whose records were all committed at a kill, i.e. nothing for the commit check below.
    setup.max_in_flight = Some(512);
    setup.per_endpoint_queue = Some(511);
    let retry_topic = format!("{}.500ms", setup.retry_prefix);
    let topics = [setup.requests_topic.clone(), retry_topic.clone()];
    let receiver = Receiver::start(Answer::Slow(Duration::from_millis(100))).await;
    let producer = setup.producer();
    let config = std::env::temp_dir().join(format!("{}.yaml", setup.group));
    let log = std::env::temp_dir().join(format!("{}.log", setup.group));
    std::fs::write(&config, setup.yaml()).unwrap();

    let requests: Vec<Request> = (0..N)
        .map(|i| {
            Request::new(
                json!({"type": "webhook", "url": receiver.url("/kill"), "secrets": [SECRET]}),
                purchase("VIP", i as f64),
            )
        })
        .collect();
    let positions = setup.send_many(&producer, &requests).await;
    let sent: HashSet<String> = requests.iter().map(|r| r.request_id.to_string()).collect();
    eprintln!("{N} requests produced in {:?}", started.elapsed());

    let mut delivered = Delivered::default();
    let mut kills: Vec<Killed> = Vec::new();
    let mut run_started = Instant::now();
    let mut run_started_ms = vec![wall_ms()];
    let mut dispatcher = Dispatcher::spawn(&config, &log);
    for kill in 1..=KILLS {
        let (run_from, distinct_before) = (delivered.read, delivered.ids.len());
        let run_deadline = deadline.min(Instant::now() + Duration::from_secs(60));
        delivered
            .wait(
                &receiver,
                &mut dispatcher,
                run_deadline,
                &format!("run {kill} delivered something"),
                |_| receiver.hit_count() > run_from,
            )
            .await;
        let first_hit = run_started.elapsed();
        delivered
            .wait(
                &receiver,
                &mut dispatcher,
                run_deadline,
                &format!("run {kill} delivered {MARGIN} new requests"),
                |distinct| distinct >= distinct_before + MARGIN,
            )
            .await;
        dispatcher.sigkill();
        let lasted = run_started.elapsed();
        let committed = setup.committed(&topics).await;
        let distinct = delivered.update(&receiver);
        let boundary = delivered.read;
        assert!(
            distinct < N,
            "kill {kill} landed mid-stream ({distinct} of {N} delivered)"
        );
        kills.push(Killed {
            boundary,
            distinct,
            new_distinct: distinct - distinct_before,
            hits: boundary - run_from,
            first_hit,
            lasted,
            committed,
        });
        run_started = Instant::now();
        run_started_ms.push(wall_ms());
        dispatcher = Dispatcher::spawn(&config, &log);
    }

    let final_from = delivered.read;
    delivered
        .wait(
            &receiver,
            &mut dispatcher,
            deadline,
            "every request was delivered",
            |distinct| distinct >= N,
        )
        .await;
    let final_first_to_all = run_started.elapsed();
    // Then every record (deferred copies in the delay topic too) is finished and committed.
    loop {
        let ends = setup.end_offsets(&topics).await;
        let committed = setup.committed(&topics).await;
        if ends.iter().all(|(p, end)| committed.get(p) == Some(end)) {
            break;
        }
        dispatcher.assert_running("committing its last offsets");
        assert!(
            Instant::now() < deadline,
            "the group never committed the ends {ends:?}: {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = dispatcher.sigterm();
    assert!(status.success(), "SIGTERM drains and exits 0 ({status})");
    let elapsed = started.elapsed();

    // Where every request was: its record in the requests topic, and the copies the dispatcher
    // put into the delay topic (deferred while the endpoint was saturated), with when each copy
    // was made.
    let mut records: HashMap<String, Vec<(harness::Partition, i64, i64)>> = HashMap::new();
    for (request, (partition, offset)) in requests.iter().zip(&positions) {
        records
            .entry(request.request_id.to_string())
            .or_default()
            .push((
                (setup.requests_topic.clone(), *partition),
                *offset,
                i64::MIN,
            ));
    }
    let deferred = setup.records(&retry_topic).await;
    for record in &deferred {
        let id = record.ce_id.clone().expect("a deferred copy keeps ce_id");
        assert!(
            sent.contains(&id),
            "deferred copy of an unknown request {id}"
        );
        records.entry(id).or_default().push((
            record.partition.clone(),
            record.offset,
            record.timestamp_ms.expect("a create time"),
        ));
    }
    let dead = setup
        .end_offsets(std::slice::from_ref(&setup.dead_letter_topic))
        .await;
    assert!(
        dead.values().all(|end| *end == 0),
        "nothing dead-lettered: {dead:?}"
    );

    // Nothing lost, nothing else.
    assert_eq!(delivered.ids, sent, "every request delivered, nothing else");
    let hits = receiver.hits();
    // Every hit is signed, and carries its request's id (duplicates too).
    let by_event: HashMap<&str, String> = requests
        .iter()
        .map(|r| (r.event_id.as_str(), r.request_id.to_string()))
        .collect();
    for hit in &hits {
        assert!(hit.headers.contains_key("webhook-signature"), "signed");
        let event_id = hit.json()["event_id"].as_str().unwrap().to_string();
        assert_eq!(
            hit.webhook_id(),
            by_event[event_id.as_str()],
            "a delivery carries its request's webhook-id"
        );
    }
    let verified = verify_with_python(&hits, &[SECRET]);
    assert!(
        verified.iter().all(|row| row[0]),
        "every delivery verifies with the request's secret"
    );

    // Offsets committed before a kill were not delivered again. A restarted dispatcher resumes
    // at the committed offsets, so once every record of a request that existed at kill k lay
    // below them, nothing after the restart may deliver that request or copy it again.
    let done_at = |k: usize, id: &str| {
        let kill = &kills[k];
        let restarted = run_started_ms[k + 1];
        records[id]
            .iter()
            .filter(|(_, _, made)| *made < restarted)
            .all(|(p, offset, _)| *offset < kill.committed.get(p).copied().unwrap_or(0))
    };
    let mut protected = Vec::new();
    let mut violations = Vec::new();
    for (k, kill) in kills.iter().enumerate() {
        if k > 0 {
            for (p, before) in &kills[k - 1].committed {
                if kill.committed[p] < *before {
                    violations.push(format!(
                        "committed offset of {p:?} went back at kill {}",
                        k + 1
                    ));
                }
            }
        }
        let delivered_again: Vec<&str> = hits[kill.boundary..]
            .iter()
            .map(|h| h.webhook_id())
            .filter(|id| done_at(k, id))
            .collect();
        if !delivered_again.is_empty() {
            violations.push(format!(
                "{} deliveries after kill {} of requests committed before it, e.g. {:?}",
                delivered_again.len(),
                k + 1,
                &delivered_again[..delivered_again.len().min(3)]
            ));
        }
        let copied_again: Vec<&str> = deferred
            .iter()
            .filter(|d| d.timestamp_ms.unwrap() >= run_started_ms[k + 1])
            .map(|d| d.ce_id.as_deref().unwrap())
            .filter(|id| done_at(k, id))
            .collect();
        if !copied_again.is_empty() {
            violations.push(format!(
                "{} requests committed before kill {} were deferred again after it, e.g. {:?}",
                copied_again.len(),
                k + 1,
                &copied_again[..copied_again.len().min(3)]
            ));
        }
        // How many of the requests delivered so far that check covered.
        let before: HashSet<&str> = hits[..kill.boundary]
            .iter()
            .map(|h| h.webhook_id())
            .collect();
        protected.push(before.iter().filter(|id| done_at(k, id)).count());
    }

    // Report per run: duplicates are hits of a request delivered before (in an earlier run or
    // earlier in the same run).
    let mut seen: HashSet<&str> = HashSet::new();
    let mut run_bounds: Vec<(usize, usize)> = Vec::new();
    let mut from = 0;
    for kill in &kills {
        run_bounds.push((from, kill.boundary));
        from = kill.boundary;
    }
    run_bounds.push((final_from, hits.len()));
    let mut duplicates_per_run = Vec::new();
    for (from, to) in &run_bounds {
        let mut in_run: HashSet<&str> = HashSet::new();
        let (mut again, mut twice_in_run) = (0, 0);
        for hit in &hits[*from..*to] {
            let id = hit.webhook_id();
            if !in_run.insert(id) {
                twice_in_run += 1;
            }
            if !seen.insert(id) {
                again += 1;
            }
        }
        duplicates_per_run.push((again, twice_in_run));
    }
    let deferred_per_run: Vec<usize> = (0..run_started_ms.len())
        .map(|r| {
            let from = run_started_ms[r];
            let to = run_started_ms.get(r + 1).copied().unwrap_or(i64::MAX);
            deferred
                .iter()
                .filter(|d| d.timestamp_ms.is_some_and(|t| t >= from && t < to))
                .count()
        })
        .collect();
    for (k, kill) in kills.iter().enumerate() {
        let committed: i64 = kill.committed.values().sum();
        eprintln!(
            "run {:>2}: first hit {:>5.1?} after the start, {:>4} hits of which {:>3} duplicates ({:>3} twice in the run), {:>3} new, {:>3} deferred; killed after {:>5.1?} with {:>4} of {N} distinct delivered; {:>4} offsets committed, covering {:>4} delivered requests",
            k + 1,
            kill.first_hit,
            kill.hits,
            duplicates_per_run[k].0,
            duplicates_per_run[k].1,
            kill.new_distinct,
            deferred_per_run[k],
            kill.lasted,
            kill.distinct,
            committed,
            protected[k],
        );
    }
    let total_duplicates = hits.len() - delivered.ids.len();
    eprintln!(
        "final run: {} hits of which {} duplicates ({} twice in the run), {} deferred; all {N} delivered {:.1?} after the start. In all {} hits, {total_duplicates} duplicates (each with its request's webhook-id), {} deferred copies, {:.1?}",
        hits.len() - final_from,
        duplicates_per_run[KILLS].0,
        duplicates_per_run[KILLS].1,
        deferred_per_run[KILLS],
        final_first_to_all,
        hits.len(),
        deferred.len(),
        elapsed,
    );
    assert!(violations.is_empty(), "{violations:#?}");
    // The check above had something to check: by the last kill, requests delivered earlier
    // were committed (a dispatcher that never commits would redeliver everything).
    assert!(
        protected[KILLS - 1] >= MARGIN,
        "by kill {KILLS} at least {MARGIN} delivered requests were committed ({protected:?})"
    );
    let warnings = std::fs::read_to_string(&log).unwrap_or_default();
    // (The stack's session.timeout.ms applies to consumers only; librdkafka says so.)
    let warnings: Vec<&str> = warnings
        .lines()
        .filter(|l| l.contains("WARN") && !l.contains("is a consumer property"))
        .collect();
    eprintln!("{} other warnings from the dispatcher", warnings.len());
    for line in warnings.iter().take(5) {
        eprintln!("  {line}");
    }
    assert!(elapsed < Duration::from_secs(240), "took {elapsed:?}");
    let _ = std::fs::remove_file(config);
    let _ = std::fs::remove_file(log);
}

/// The lifecycle's second signal: while the drain after a first SIGTERM waits for a delivery
/// that hangs (grace 30 s), a second SIGTERM ends the process at once with exit code 130. (The
/// process runs with `HTTP_PROXY` & co. pointing at a closed port: the delivery reaching the
/// receiver also shows that environment proxies are ignored.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once_while_the_drain_waits() {
    let mut setup = Setup::new(&["500ms"]).await;
    setup.timeout_ms = 60_000;
    let receiver = Receiver::start(Answer::Hang).await;
    let producer = setup.producer();
    let config = std::env::temp_dir().join(format!("{}.yaml", setup.group));
    let log = std::env::temp_dir().join(format!("{}.log", setup.group));
    std::fs::write(
        &config,
        format!("{}lifecycle:\n  shutdown_grace_ms: 30000\n", setup.yaml()),
    )
    .unwrap();
    let mut dispatcher = Dispatcher::spawn(&config, &log);
    let request = Request::new(
        json!({"type": "webhook", "url": receiver.url("/hang"), "secrets": [SECRET]}),
        purchase("VIP", 1.0),
    );
    setup.send_request(&producer, &request).await;
    eventually(
        Duration::from_secs(30),
        "the delivery in flight",
        || async { (receiver.hit_count() > 0).then_some(()) },
    )
    .await
    .unwrap();

    // First SIGTERM: intake stops and the drain waits for the hanging delivery.
    dispatcher.signal("TERM");
    let first = Instant::now();
    while first.elapsed() < Duration::from_secs(1) {
        dispatcher.assert_running("the drain waits for the delivery in flight");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Second SIGTERM: no more waiting.
    dispatcher.signal("TERM");
    let second = Instant::now();
    let status = loop {
        if let Some(status) = dispatcher.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            second.elapsed() < Duration::from_secs(5),
            "still running 5 s after the second signal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "first SIGTERM held the drain {:?}; exited {:?} after the second with {status}",
        second - first,
        second.elapsed()
    );
    assert_eq!(status.code(), Some(130), "a second signal exits with 130");
    let _ = std::fs::remove_file(config);
    let _ = std::fs::remove_file(log);
}
