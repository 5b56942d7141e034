//! The ceiling: the gateway's Avro payload and headers produced straight to the broker with the
//! platform's producer settings (idempotent, acks=all), from several tasks, keys spread over every
//! partition, as many in flight as the queue takes. Kafka's own ProducerPerformance
//! (scripts/bench.sh) is the other ceiling; the higher of the two is the broker's real limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use substrate_avro::json_to_avro;
use substrate_kafka::{CloudEvent, KafkaConfig, TraceParent};
use uuid::Uuid;

use crate::{parse_duration, report};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: crate::TopicTarget,
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    duration: Duration,
    /// Records in flight at once, over all tasks.
    #[arg(long, default_value_t = 20_000)]
    in_flight: usize,
    /// Tasks producing at once (each keeps its share of `in_flight` records in flight).
    #[arg(long, default_value_t = 4)]
    tasks: usize,
    #[arg(long, default_value_t = 100)]
    message_bytes: usize,
    /// librdkafka linger.ms (the gateway uses 1; a little more lets the ceiling batch more).
    #[arg(long, default_value_t = 2)]
    linger_ms: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (schema, registry) = args.target.open()?;
    let event = json!({
        "event_id": Uuid::now_v7(), "event_time": chrono::Utc::now().timestamp_millis(),
        "sender_id": Uuid::new_v4(), "sender_email": "load@example.com",
        "message": "x".repeat(args.message_bytes), "visibility": "broadcast", "recipient_id": null
    });
    let value = json_to_avro(&schema.schema, &event).map_err(|e| anyhow::anyhow!("{e}"))?;
    let payload = Arc::new(registry.encode(&args.target.topic, value).await?);
    let mut kafka = KafkaConfig::local(&args.target.bootstrap_servers);
    kafka.linger_ms = args.linger_ms;
    let producer: FutureProducer = kafka.producer_config().create()?;
    println!(
        "raw producer: {} tasks, {} B records (+ headers), keys over every partition",
        args.tasks.max(1),
        payload.len()
    );

    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + args.duration;
    let per_task = (args.in_flight / args.tasks.max(1)).max(1);
    let mut tasks = Vec::new();
    for _ in 0..args.tasks.max(1) {
        let (producer, payload, topic) =
            (producer.clone(), payload.clone(), args.target.topic.clone());
        let (acked, failed) = (acked.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let trace = TraceParent::new_root();
            let mut in_flight = FuturesUnordered::new();
            let count = |ok: bool| {
                if ok {
                    acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            };
            while Instant::now() < deadline {
                while in_flight.len() < per_task && Instant::now() < deadline {
                    let id = Uuid::now_v7();
                    let headers =
                        CloudEvent::new(id, "user.message", "/loadgen").to_headers(&trace);
                    let (producer, topic, payload) =
                        (producer.clone(), topic.clone(), payload.clone());
                    in_flight.push(async move {
                        // A key per record, as the gateway's events have: every partition.
                        let key = id.to_string();
                        let record = FutureRecord::to(&topic)
                            .key(&key)
                            .payload(payload.as_slice())
                            .headers(headers);
                        producer.send(record, Duration::from_secs(5)).await.is_ok()
                    });
                }
                match in_flight.next().await {
                    Some(ok) => count(ok),
                    None => break,
                }
            }
            while let Some(ok) = in_flight.next().await {
                count(ok);
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let (acked, failed) = (
        acked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    report("raw producer", acked, started.elapsed(), None);
    if failed > 0 {
        println!("raw producer: {failed} failed");
    }
    Ok(())
}
