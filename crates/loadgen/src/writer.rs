//! notification-writer throughput: N events produced to a mapped topic, then the writer is
//! timed from its first to its last row of this run by its own counter of rows inserted (read
//! from its `/metrics`; counting rows in PostgreSQL while it writes would load the database it
//! is measured against), and the rows are checked once at the end. Start the writer after the
//! `produced` line to measure the drain of a backlog (scripts/bench.sh does).

use std::time::{Duration, Instant};

use serde_json::json;
use substrate_avro::json_to_avro;
use substrate_kafka::{CloudEvent, TraceParent};
use uuid::Uuid;

const ROWS_INSERTED: &str = "notification_writer_rows_inserted_total";

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: crate::TopicTarget,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// The writer's metrics endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8091/metrics")]
    metrics_url: String,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (schema, registry) = args.target.open()?;
    let db =
        substrate_db::connect_one(&substrate_db::DbConfig::from_url(&args.database_url)).await?;
    let marker = format!("loadgen-{}", Uuid::new_v4().simple());
    let sender = Uuid::new_v4();
    let trace = TraceParent::new_root();

    let produce_started = Instant::now();
    let mut records = crate::Sender::new(&args.target)?;
    for _ in 0..args.events {
        let id = Uuid::now_v7();
        let event = json!({"event_id": id, "event_time": chrono::Utc::now().timestamp_millis(),
            "sender_id": sender, "sender_email": null, "message": marker, "visibility": "broadcast", "recipient_id": null});
        let value = json_to_avro(&schema.schema, &event).map_err(|e| anyhow::anyhow!("{e}"))?;
        let payload = registry.encode(&args.target.topic, value).await?;
        let headers = CloudEvent::new(id, "user.message", "/loadgen").to_headers(&trace);
        records.send(id.to_string(), payload, headers).await?;
    }
    records.finish().await?;
    println!(
        "produced {} events in {:.2} s",
        args.events,
        produce_started.elapsed().as_secs_f64()
    );

    let count = || async {
        db.query_one(
            "SELECT count(*) FROM public.user_notifications WHERE sender_id = $1",
            &[&sender],
        )
        .await
        .map(|r| r.get::<_, i64>(0) as u64)
    };
    let client = reqwest::Client::new();
    let inserted = || crate::counter(&client, &args.metrics_url, ROWS_INSERTED);
    let base = inserted().await.unwrap_or(0.0) as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    let (t0, n0, done, n) = loop {
        // The writer may restart after the `produced` line: its counter starts again at 0.
        let n = (inserted().await.unwrap_or(0.0) as u64).saturating_sub(base);
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= args.events {
            let (t0, n0) = first.expect("rows seen");
            break (t0, n0, Instant::now(), n);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out with {n} of {} rows",
            args.events
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Exactly one row per event (the counter may include rows of other topics).
    loop {
        let rows = count().await?;
        anyhow::ensure!(
            rows <= args.events,
            "{rows} rows of this run, expected {}",
            args.events
        );
        if rows == args.events {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out with {rows} of {} rows",
            args.events
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    crate::report("notification-writer", n - n0, done - t0, None);
    println!(
        "notification-writer: from the start of producing to the last row {:.2} s",
        (done - produce_started).as_secs_f64()
    );
    Ok(())
}
