//! The notification-writer binary against the local stack: killed with SIGKILL ten times in the
//! middle of 20,000 events (each kill asserted to land mid-stream, after the previous run made
//! progress) and restarted, it leaves exactly 20,000 rows (at-least-once delivery plus the
//! unique event id).

use std::process::{Child, Command};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use substrate_testkit::{
    count_rows, encode_message, eventually, message_event, message_topic, unique, Stack,
};
use uuid::Uuid;

const EVENTS: i64 = 20_000;
const KILLS: usize = 10;

fn spawn_writer(config: &std::path::Path, log: &std::path::Path) -> Child {
    substrate_testkit::spawn_configured(
        std::path::Path::new(env!("CARGO_BIN_EXE_notification-writer")),
        config,
        log,
    )
}

#[tokio::test]
async fn killed_ten_times_mid_stream_it_leaves_exactly_one_row_per_event() {
    let stack = Stack::load();
    let topic = unique("test.writer.kill");
    let event_type = format!("test.kill_{}", &Uuid::new_v4().simple().to_string()[..8]);
    message_topic(&stack, &topic, 3).await;
    let dlq = unique("test.writer.dlq");
    stack.create_topic(&dlq, 1).await;

    // Produce every event first (with CloudEvents ids), so the writer has a backlog to chew.
    let producer: FutureProducer = stack.kafka().producer_config().create().unwrap();
    let mut sends = Vec::new();
    for i in 0..EVENTS {
        let event = message_event(Uuid::new_v4(), None, &format!("event {i}"));
        let payload = encode_message(&stack, &topic, &event).await;
        let id = event["event_id"].as_str().unwrap().to_string();
        let producer = producer.clone();
        let topic = topic.clone();
        sends.push(async move {
            let headers = OwnedHeaders::new().insert(Header {
                key: "ce_id",
                value: Some(id.as_str()),
            });
            let record = FutureRecord::<str, [u8]>::to(&topic)
                .key(&id)
                .payload(&payload)
                .headers(headers);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
    }
    for result in futures::future::join_all(sends).await {
        result.expect("produce");
    }

    let dir = std::env::temp_dir().join(unique("writer-kill"));
    std::fs::create_dir_all(&dir).unwrap();
    // The killed runs write one row per batch, slow enough that a kill always lands with rows
    // left to write even on a loaded machine; the last run writes in batches of 1,000.
    let group = unique("kill-test");
    let config_with = |batch: usize| {
        let path = dir.join(format!("notification-writer-{batch}.yaml"));
        std::fs::write(
            &path,
            format!(
            "notification_writer:\n  listen: 127.0.0.1:0\n  group_id: {group}\n  batch_max_rows: {batch}\n  batch_max_ms: 20\n  dead_letter_topic: {dlq}\n  topics:\n    public.identity.login.events:\n      enabled: false\n    public.user.message.events:\n      enabled: false\n    {topic}:\n      event_type: {event_type}\n      visibility_field: visibility\n      recipient_field: recipient_id\n      sender_field: sender_id\n\
             kafka:\n  bootstrap_servers: {kafka}\n  extra:\n    session.timeout.ms: \"6000\"\n\
             schema_registry:\n  url: {registry}\n\
             database:\n  url: {db}\n",
            kafka = stack.bootstrap_servers,
            registry = stack.registry_url,
            db = stack.database_url,
        ),
        )
        .unwrap();
        path
    };
    let slow = config_with(1);
    let fast = config_with(1000);

    let db = stack.db().await;
    let mut previous = 0;
    for kill in 0..KILLS {
        let mut writer = spawn_writer(&slow, &dir.join(format!("run-{kill}.log")));
        // Kill as soon as this run has written something, so the kill lands while rows flow.
        let started = std::time::Instant::now();
        let progressed = loop {
            let n = count_rows(&db, &event_type).await;
            if n > previous {
                break n;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no progress in run {kill}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        writer.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
        writer.wait().unwrap();
        let after_kill = count_rows(&db, &event_type).await;
        eprintln!("kill {kill}: {progressed}..{after_kill} of {EVENTS} rows");
        assert!(
            after_kill < EVENTS,
            "kill {kill} landed mid-stream ({after_kill} of {EVENTS} rows written)"
        );
        previous = after_kill;
    }

    let mut writer = spawn_writer(&fast, &dir.join("last.log"));
    eventually(
        Duration::from_secs(180),
        "all rows after the last restart",
        || async { (count_rows(&db, &event_type).await >= EVENTS).then_some(()) },
    )
    .await
    .unwrap();
    // Redelivered batches after each kill wrote nothing twice.
    assert_eq!(count_rows(&db, &event_type).await, EVENTS);
    terminate(&mut writer);
    let _ = std::fs::remove_dir_all(dir);
}

/// Stops the restarted writer with SIGTERM (its graceful path), falling back to SIGKILL.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    for _ in 0..100 {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "graceful shutdown exits 0, got {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("notification-writer did not stop within 10 s of SIGTERM");
}
