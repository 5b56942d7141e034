//! The ceiling: the gateway's Avro payload and headers produced straight to the broker with the
//! platform's producer settings (idempotent, acks=all), as many in flight as the queue takes.

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
    /// Records in flight at once.
    #[arg(long, default_value_t = 20_000)]
    in_flight: usize,
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
    let payload = registry.encode(&args.target.topic, value).await?;
    let mut kafka = KafkaConfig::local(&args.target.bootstrap_servers);
    kafka.linger_ms = args.linger_ms;
    let producer: FutureProducer = kafka.producer_config().create()?;
    let key = Uuid::new_v4().to_string();

    let started = Instant::now();
    let deadline = started + args.duration;
    let mut in_flight = FuturesUnordered::new();
    let mut acked = 0u64;
    let mut failed = 0u64;
    let trace = TraceParent::new_root();
    while Instant::now() < deadline {
        while in_flight.len() < args.in_flight && Instant::now() < deadline {
            let headers =
                CloudEvent::new(Uuid::now_v7(), "user.message", "/loadgen").to_headers(&trace);
            let producer = producer.clone();
            let (topic, key, payload) = (args.target.topic.clone(), key.clone(), payload.clone());
            in_flight.push(async move {
                let record = FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers);
                producer.send(record, Duration::from_secs(5)).await.is_ok()
            });
        }
        match in_flight.next().await {
            Some(true) => acked += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    while let Some(ok) = in_flight.next().await {
        if ok {
            acked += 1
        } else {
            failed += 1
        }
    }
    report("raw producer", acked, started.elapsed(), None);
    if failed > 0 {
        println!("raw producer: {failed} failed");
    }
    Ok(())
}
