//! PostgreSQL stopped for 60 s while messages keep arriving, and the notification-writer
//! restarted in the middle of the outage: the group's committed offsets never pass the rows
//! written, nothing is dead-lettered, and after recovery every message is exactly one row.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use substrate_testkit::{
    count_rows, eventually, message_event, message_topic, repo_root, unique, workspace_bin, Stack,
};
use uuid::Uuid;

use crate::{listening, stack_script, Restore};

const OUTAGE: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 3;
/// Messages produced per second for the whole test.
const RATE: u64 = 200;

fn spawn_writer(config: &std::path::Path, log: &std::path::Path) -> Child {
    substrate_testkit::spawn_configured(&workspace_bin("notification-writer"), config, log)
}

/// SIGTERM, then the exit status (the drain gives up on the unwritten batch after the grace).
fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("notification-writer did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The group's committed offsets per partition (-1: nothing committed yet).
fn committed(stack: &Stack, group: &str, topic: &str) -> Vec<i64> {
    (0..PARTITIONS)
        .map(|p| stack.committed(group, topic, p).unwrap_or(-1))
        .collect()
}

/// The end of a one-partition topic.
fn high_watermark(stack: &Stack, topic: &str) -> i64 {
    let consumer: BaseConsumer = stack
        .kafka()
        .consumer_config(&unique("hwm"))
        .create()
        .unwrap();
    consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .expect("watermarks")
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_without_postgres_and_a_writer_restart_lose_and_dead_letter_nothing() {
    let stack = Stack::load();
    let db_addr = stack
        .database_url
        .rsplit('@')
        .next()
        .and_then(|rest| rest.split('/').next())
        .expect("host:port in the database url")
        .to_string();
    assert!(listening(&db_addr), "postgres is up before the test");
    let topic = unique("test.faults.pg");
    let dlq = unique("test.faults.pg.dlq");
    let event_type = format!("test.pg_{}", &Uuid::new_v4().simple().to_string()[..8]);
    message_topic(&stack, &topic, PARTITIONS).await;
    stack.create_topic(&dlq, 1).await;

    let dir = std::env::temp_dir().join(unique("faults-pg"));
    std::fs::create_dir_all(&dir).unwrap();
    let group = unique("faults-pg");
    let config = dir.join("notification-writer.yaml");
    // Only this test's topic: every default mapping is switched off.
    let defaults: notification_writer::Config =
        substrate_runtime::config::load_config_from(&notification_writer::config::defaults(), "{}")
            .unwrap();
    let disabled: String = defaults
        .notification_writer
        .topics
        .keys()
        .map(|t| format!("    {t}:\n      enabled: false\n"))
        .collect();
    std::fs::write(
        &config,
        format!(
            "notification_writer:\n  listen: 127.0.0.1:0\n  group_id: {group}\n  batch_max_rows: 500\n  batch_max_ms: 20\n  dead_letter_topic: {dlq}\n  topics:\n{disabled}    {topic}:\n      event_type: {event_type}\n      visibility_field: visibility\n      recipient_field: recipient_id\n      sender_field: sender_id\n\
             lifecycle:\n  shutdown_grace_ms: 2000\n\
             kafka:\n  bootstrap_servers: {kafka}\n\
             schema_registry:\n  url: {registry}\n\
             database:\n  url: {db}\n",
            kafka = stack.bootstrap_servers,
            registry = stack.registry_url,
            db = stack.database_url,
        ),
    )
    .unwrap();

    // The schema is registered and cached before the outage (the registry keeps its schemas in
    // the same PostgreSQL, so it is down too while the database is).
    let text =
        std::fs::read_to_string(repo_root().join("avro/public/user/message.events.avsc")).unwrap();
    let schema = substrate_avro::Schema::parse_str(&text).unwrap();
    let registry = stack.registry();
    let producer: FutureProducer = stack.kafka().producer_config().create().unwrap();
    let produced = Arc::new(AtomicI64::new(0));
    let stop_load = Arc::new(AtomicBool::new(false));
    let first =
        substrate_avro::json_to_avro(&schema, &message_event(Uuid::new_v4(), None, "x")).unwrap();
    registry.encode(&topic, first).await.expect("register");

    // Load: RATE messages per second until told to stop, each with its CloudEvents id.
    let load = {
        let (producer, topic, produced, stop) = (
            producer.clone(),
            topic.clone(),
            produced.clone(),
            stop_load.clone(),
        );
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let event = message_event(Uuid::new_v4(), None, &format!("load {i}"));
                i += 1;
                let value = substrate_avro::json_to_avro(&schema, &event).unwrap();
                let payload = registry.encode(&topic, value).await.expect("cached schema");
                let id = event["event_id"].as_str().unwrap().to_string();
                let record = FutureRecord::<str, [u8]>::to(&topic)
                    .key(&id)
                    .payload(&payload)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "ce_id",
                        value: Some(id.as_str()),
                    }));
                producer
                    .send(record, Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| e)
                    .expect("produce");
                produced.fetch_add(1, Ordering::SeqCst);
            }
        })
    };

    let db = stack.db().await;
    let mut writer = spawn_writer(&config, &dir.join("before.log"));
    eventually(Duration::from_secs(60), "rows flowing", || async {
        (count_rows(&db, &event_type).await > 500).then_some(())
    })
    .await
    .unwrap();
    drop(db);

    // The outage. Restore starts PostgreSQL again however this test ends.
    let restore = Restore("postgres");
    stack_script("postgres", "stop");
    let down_at = Instant::now();
    assert!(!listening(&db_addr), "postgres is down");
    let produced_at_stop = produced.load(Ordering::SeqCst);

    // Offsets: whatever was written before the stop may still be committed by the next
    // auto-commit (every second); after that nothing may move until the database is back.
    let mut samples: Vec<(Duration, Vec<i64>)> = Vec::new();
    let mut restarted = false;
    while down_at.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if down_at.elapsed() >= Duration::from_secs(2) {
            samples.push((down_at.elapsed(), committed(&stack, &group, &topic)));
        }
        if !restarted && down_at.elapsed() >= OUTAGE / 2 {
            // Restart the writer while the database (and the registry) are still down.
            let status = terminate(&mut writer);
            assert!(
                status.success(),
                "the writer stops cleanly during the outage: {status}"
            );
            writer = spawn_writer(&config, &dir.join("during.log"));
            restarted = true;
        }
    }
    assert!(restarted);
    let produced_during = produced.load(Ordering::SeqCst) - produced_at_stop;
    assert!(
        produced_during > (RATE as i64) * 30,
        "load kept arriving during the outage ({produced_during} messages)"
    );
    let baseline = samples[0].1.clone();
    for (at, offsets) in &samples {
        assert_eq!(
            offsets, &baseline,
            "committed offsets moved {at:?} into the outage"
        );
    }
    stack_script("postgres", "start");
    std::mem::forget(restore);
    let outage = down_at.elapsed();

    // Stop the load, then every message is one row.
    stop_load.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let total = produced.load(Ordering::SeqCst);
    let db = stack.db().await;
    eventually(
        Duration::from_secs(120),
        "every message written after recovery",
        || async { (count_rows(&db, &event_type).await >= total).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(count_rows(&db, &event_type).await, total, "one row each");
    assert_eq!(high_watermark(&stack, &dlq), 0, "nothing dead-lettered");
    let after: HashMap<i32, i64> = (0..PARTITIONS)
        .zip(committed(&stack, &group, &topic))
        .collect();
    eprintln!(
        "outage {outage:?}: {total} messages ({produced_during} during the outage), committed offsets held at {baseline:?} through the writer restart, now {after:?}"
    );
    let status = terminate(&mut writer);
    assert!(status.success(), "graceful stop: {status}");
    let _ = std::fs::remove_dir_all(dir);
}
