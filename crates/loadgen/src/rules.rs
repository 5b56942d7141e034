//! rule-evaluator throughput: N purchase events (half of them VIP purchases over 500) produced
//! to the purchase topic, then the evaluator timed through its own events counter from the first
//! to the last event of this run (consume → evaluate → produce requests and unified events).

use std::time::{Duration, Instant};

use serde_json::json;
use substrate_kafka::{CloudEvent, TraceParent};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: crate::TopicTarget,
    /// The evaluator's metrics endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8092/metrics")]
    metrics_url: String,
    #[arg(long, default_value_t = 50_000)]
    events: u64,
}

async fn evaluated(client: &reqwest::Client, url: &str, topic: &str) -> anyhow::Result<u64> {
    let series = format!("rule_evaluator_events_total{{topic=\"{topic}\"}}");
    Ok(crate::counter(client, url, &series).await? as u64)
}

pub async fn run(mut args: Args) -> anyhow::Result<()> {
    if args.target.topic == "public.user.message.events" {
        args.target.topic = "public.commerce.purchase.events".into();
    }
    let (schema, registry) = args.target.open()?;
    let client = reqwest::Client::new();
    let before = evaluated(&client, &args.metrics_url, &args.target.topic).await?;
    let trace = TraceParent::new_root();
    let started = Instant::now();
    let mut records = crate::Sender::new(&args.target)?;
    for i in 0..args.events {
        let id = Uuid::now_v7();
        let (segment, amount) = if i % 2 == 0 {
            ("VIP", 750.0)
        } else {
            ("REGULAR", 120.0)
        };
        let event = json!({
            "event_id": id, "event_time": chrono::Utc::now().timestamp_millis(),
            "user": {"id": Uuid::new_v4(), "email": null, "segment": segment, "country": null},
            "purchase": {"id": format!("o-{i}"), "amount": amount, "currency": "EUR", "items": 1, "tags": [], "coupon": null}
        });
        let value = schema.to_avro(&event).map_err(|e| anyhow::anyhow!("{e}"))?;
        let payload = registry.encode(&args.target.topic, value).await?;
        let headers = CloudEvent::new(id, "commerce.purchase", "/loadgen").to_headers(&trace);
        records.send(id.to_string(), payload, headers).await?;
    }
    records.finish().await?;
    println!(
        "produced {} events in {:.2} s",
        args.events,
        started.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let n = evaluated(&client, &args.metrics_url, &args.target.topic).await? - before;
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= args.events {
            let (t0, n0) = first.expect("events seen");
            crate::report("rule-evaluator", n - n0, t0.elapsed(), None);
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out with {n} of {} events evaluated",
            args.events
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
