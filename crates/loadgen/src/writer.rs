//! notification-writer throughput: N events produced to a mapped topic, then the writer is
//! timed from its first to its last row of this run. Start the writer after the `produced` line
//! to measure the drain of a backlog (scripts/bench.sh does).

use std::time::{Duration, Instant};

use serde_json::json;
use substrate_avro::json_to_avro;
use substrate_kafka::{CloudEvent, TraceParent};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: crate::TopicTarget,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, default_value_t = 100_000)]
    events: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (schema, registry) = args.target.open()?;
    let (db, connection) =
        tokio_postgres::connect(&args.database_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
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
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let n = count().await?;
        if n > 0 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= args.events {
            let (t0, n0) = first.expect("rows seen");
            let elapsed = t0.elapsed();
            crate::report("notification-writer", n - n0, elapsed, None);
            println!(
                "notification-writer: from the start of producing to the last row {:.2} s",
                produce_started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out with {n} of {} rows",
            args.events
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
