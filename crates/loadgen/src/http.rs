//! HTTP load against the gateway: `--connections` workers in a closed loop, or `--rate` requests
//! per second on a fixed schedule (latency counted from the scheduled time, so a stalled server
//! is not hidden). `--batch N` posts N events per request to the batch endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::{new_histogram, parse_duration, report};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    gateway: crate::GatewayArgs,
    #[arg(long, default_value = "message")]
    route: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    duration: Duration,
    /// Fixed request rate per second (open loop) instead of a closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Events per request to the batch endpoint; 0 posts single events.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Size of the message text in bytes.
    #[arg(long, default_value_t = 100)]
    message_bytes: usize,
}

struct Totals {
    events: AtomicU64,
    failures: AtomicU64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    args.gateway.ensure_loopback()?;
    let token = args.gateway.token(Uuid::new_v4(), "load@example.com")?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs(10))
        .build()?;
    let body = request_body(&args);
    let url = if args.batch > 0 {
        format!("{}/api/v1/events/{}/batch", args.gateway.url, args.route)
    } else {
        format!("{}/api/v1/events/{}", args.gateway.url, args.route)
    };
    let per_request = args.batch.max(1) as u64;
    let totals = Arc::new(Totals {
        events: AtomicU64::new(0),
        failures: AtomicU64::new(0),
    });
    let histogram = Arc::new(Mutex::new(new_histogram()));

    // Warm-up: one request so the gateway's schema cache and connections exist.
    let warm = client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .context("warm-up request")?;
    anyhow::ensure!(
        warm.status().is_success(),
        "warm-up answered {}",
        warm.status()
    );

    let started = Instant::now();
    let deadline = started + args.duration;
    let mut workers = Vec::new();
    match args.rate {
        None => {
            for _ in 0..args.connections {
                let (client, url, token, body) =
                    (client.clone(), url.clone(), token.clone(), body.clone());
                let (totals, histogram) = (totals.clone(), histogram.clone());
                workers.push(tokio::spawn(async move {
                    let mut local = new_histogram();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let ok = send(&client, &url, &token, &body).await;
                        record(&totals, &mut local, t, ok, per_request);
                    }
                    histogram.lock().await.add(local).ok();
                }));
            }
        }
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate as f64);
            let mut next = Instant::now();
            let mut local = Vec::new();
            while next < deadline {
                tokio::time::sleep_until(next.into()).await;
                let scheduled = next;
                let (client, url, token, body) =
                    (client.clone(), url.clone(), token.clone(), body.clone());
                let (totals, histogram) = (totals.clone(), histogram.clone());
                local.push(tokio::spawn(async move {
                    let ok = send(&client, &url, &token, &body).await;
                    let mut h = histogram.lock().await;
                    record(&totals, &mut h, scheduled, ok, per_request);
                }));
                next += interval;
            }
            workers.extend(local);
        }
    }
    for w in workers {
        w.await?;
    }
    let elapsed = started.elapsed();
    let label = match (args.rate, args.batch) {
        (Some(r), _) => format!("http rate={r}/s"),
        (None, 0) => format!("http single c={}", args.connections),
        (None, b) => format!("http batch={b} c={}", args.connections),
    };
    report(
        &label,
        totals.events.load(Ordering::Relaxed),
        elapsed,
        Some(&*histogram.lock().await),
    );
    let failures = totals.failures.load(Ordering::Relaxed);
    if failures > 0 {
        println!("{label}: {failures} failed requests");
    }
    Ok(())
}

fn record(
    totals: &Totals,
    h: &mut hdrhistogram::Histogram<u64>,
    since: Instant,
    ok: bool,
    events: u64,
) {
    if ok {
        totals.events.fetch_add(events, Ordering::Relaxed);
        let _ = h.record(since.elapsed().as_micros().max(1) as u64);
    } else {
        totals.failures.fetch_add(1, Ordering::Relaxed);
    }
}

async fn send(client: &reqwest::Client, url: &str, token: &str, body: &str) -> bool {
    matches!(
        client.post(url).bearer_auth(token).header("content-type", "application/json").body(body.to_owned()).send().await,
        Ok(r) if r.status().is_success()
    )
}

fn request_body(args: &Args) -> String {
    let event = json!({"message": "x".repeat(args.message_bytes), "visibility": "broadcast"});
    if args.batch > 0 {
        json!(vec![event; args.batch]).to_string()
    } else {
        event.to_string()
    }
}
