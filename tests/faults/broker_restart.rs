//! Kafka restarted while clients keep posting to the running gateway: while the broker is down
//! the gateway answers 503 (never 202), and every event it answered 202 — before, during and
//! after the restart — is in the topic exactly once and becomes exactly one notification row.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::Message;
use serde_json::json;
use substrate_testkit::{eventually, Stack};
use uuid::Uuid;

use crate::{listening, stack_script, Restore};

const POSTERS: usize = 8;

#[derive(Default)]
struct Answers {
    accepted: Mutex<Vec<Uuid>>,
    unavailable: AtomicUsize,
    other: Mutex<Vec<String>>,
}

impl Answers {
    fn accepted(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

/// What the reader saw: records of the test's sender by CloudEvents id, and the next offset
/// read per partition.
#[derive(Default)]
struct Seen {
    records: HashMap<Uuid, usize>,
    next: HashMap<i32, i64>,
}

/// Reads `public.user.message.events` from where it ended when the test began and counts the
/// records of `sender` by their event id.
fn count_records(stack: Stack, consumer: StreamConsumer, sender: Uuid, seen: Arc<Mutex<Seen>>) {
    tokio::spawn(async move {
        let registry = stack.registry();
        loop {
            let Ok(message) = consumer.recv().await else {
                continue;
            };
            let record = match message.payload() {
                Some(payload) => {
                    let (value, _) = registry.decode(payload).await.expect("decode");
                    Some(substrate_avro::avro_to_json(&value))
                }
                None => None,
            };
            let mut seen = seen.lock().unwrap();
            seen.next.insert(message.partition(), message.offset() + 1);
            if let Some(record) = record.filter(|r| r["sender_id"] == json!(sender.to_string())) {
                let id = Uuid::parse_str(record["event_id"].as_str().unwrap()).unwrap();
                *seen.records.entry(id).or_default() += 1;
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_under_load_loses_and_duplicates_no_accepted_event() {
    let stack = Stack::load();
    let kafka_addr = stack
        .bootstrap_servers
        .split(',')
        .next()
        .unwrap()
        .to_string();
    assert!(listening(&kafka_addr), "kafka is up before the test");
    let sender = Uuid::new_v4();
    let token = stack.token(sender, "restart@example.com");
    let url = format!("{}/api/v1/events/message", stack.gateway_url);
    let starts = end_offsets(&stack, "public.user.message.events");
    let consumer = stack.consumer_at_end("public.user.message.events");
    let seen = Arc::new(Mutex::new(Seen::default()));
    count_records(stack.clone(), consumer, sender, seen.clone());

    // Clients post one message at a time, as fast as they are answered, until told to stop.
    let answers = Arc::new(Answers::default());
    let stop_posting = Arc::new(AtomicBool::new(false));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut posters = Vec::new();
    for poster in 0..POSTERS {
        let (client, url, token, answers, stop) = (
            client.clone(),
            url.clone(),
            token.clone(),
            answers.clone(),
            stop_posting.clone(),
        );
        posters.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let body =
                    json!({"message": format!("restart {poster}-{i}"), "visibility": "broadcast"});
                let answer = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                match answer {
                    Ok(r) if r.status() == 202 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        let id = Uuid::parse_str(body["event_id"].as_str().unwrap()).unwrap();
                        answers.accepted.lock().unwrap().push(id);
                    }
                    Ok(r) if r.status() == 503 => {
                        assert!(
                            r.headers().contains_key("retry-after"),
                            "503 has Retry-After"
                        );
                        answers.unavailable.fetch_add(1, Ordering::SeqCst);
                        // A client honouring Retry-After would wait longer; the test keeps
                        // the pressure on.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        answers
                            .other
                            .lock()
                            .unwrap()
                            .push(format!("{status} {text}"));
                    }
                    Err(e) => answers.other.lock().unwrap().push(e.to_string()),
                }
            }
        }));
    }

    let waited = Duration::from_secs(60);
    eventually(waited, "accepted events before the restart", || async {
        (answers.accepted() >= 300).then_some(())
    })
    .await
    .unwrap();

    // The restart. Restore starts Kafka again however this test ends.
    let restore = Restore("kafka");
    let accepted_before = answers.accepted();
    stack_script("kafka", "stop");
    let stopped_at = Instant::now();
    assert!(!listening(&kafka_addr), "kafka is down");
    eventually(waited, "503 while the broker is down", || async {
        (answers.unavailable.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await
    .unwrap();
    let accepted_while_down = answers.accepted();
    stack_script("kafka", "start");
    std::mem::forget(restore);
    let downtime = stopped_at.elapsed();
    let restarted = answers.accepted();
    if let Err(e) = eventually(
        Duration::from_secs(120),
        "accepted events after the restart",
        || async { (answers.accepted() >= restarted + 300).then_some(()) },
    )
    .await
    {
        // What the clients got meanwhile, to tell a stuck producer from a gateway that answers.
        let other = answers.other.lock().unwrap();
        panic!(
            "{e}: {} accepted since the restart, {} answered 503 in all, {} other answers \
             (the last: {:?})",
            answers.accepted() - restarted,
            answers.unavailable.load(Ordering::SeqCst),
            other.len(),
            other.iter().rev().take(5).collect::<Vec<_>>()
        );
    }
    stop_posting.store(true, Ordering::SeqCst);
    for poster in posters {
        poster.await.unwrap();
    }

    let accepted: Vec<Uuid> = answers.accepted.lock().unwrap().clone();
    let unique: HashSet<Uuid> = accepted.iter().copied().collect();
    assert_eq!(
        unique.len(),
        accepted.len(),
        "every answer names its own event"
    );
    let other = answers.other.lock().unwrap().clone();
    assert!(other.is_empty(), "only 202 or 503: {other:?}");

    // Every accepted event becomes exactly one row…
    let db = stack.db().await;
    let rows = eventually(
        Duration::from_secs(120),
        "a row for every accepted event",
        || async {
            let rows = db
                .query(
                    "SELECT event_id FROM public.user_notifications WHERE sender_id = $1",
                    &[&sender],
                )
                .await
                .ok()?;
            let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
            let present: HashSet<Uuid> = ids.iter().copied().collect();
            unique.is_subset(&present).then_some(ids)
        },
    )
    .await
    .unwrap();
    let row_ids: HashSet<Uuid> = rows.iter().copied().collect();
    assert_eq!(row_ids.len(), rows.len(), "one row per event");

    // …and is in the topic exactly once (the idempotent producer did not write a retry twice):
    // read the topic up to its end now that every client was answered.
    let ends = end_offsets(&stack, "public.user.message.events");
    eventually(
        Duration::from_secs(60),
        "the topic read to its end",
        || async {
            let seen = seen.lock().unwrap();
            ends.iter()
                .all(|(p, end)| seen.next.get(p).or(starts.get(p)).copied().unwrap_or(0) >= *end)
                .then_some(())
        },
    )
    .await
    .unwrap();
    let seen = std::mem::take(&mut seen.lock().unwrap().records);
    for id in &unique {
        assert_eq!(seen.get(id), Some(&1), "{id} accepted: once in the topic");
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "records written twice: {twice:?}");
    eprintln!(
        "broker down {downtime:?}: {} accepted ({accepted_before} before the stop, {} while it went down, {} after the restart), {} answered 503, {} records in the topic",
        accepted.len(),
        accepted_while_down - accepted_before,
        accepted.len() - restarted,
        answers.unavailable.load(Ordering::SeqCst),
        seen.len(),
    );
}

/// The high watermark of every partition of `topic`.
fn end_offsets(stack: &Stack, topic: &str) -> HashMap<i32, i64> {
    let consumer: BaseConsumer = stack
        .kafka()
        .consumer_config(&substrate_testkit::unique("ends"))
        .create()
        .unwrap();
    let timeout = Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (_, high) = consumer.fetch_watermarks(topic, p.id(), timeout).unwrap();
            (p.id(), high)
        })
        .collect()
}
