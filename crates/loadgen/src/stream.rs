//! `loadgen stream`: end-to-end latency of the read side. One reader holds a notification stream
//! open on the gateway while broadcast messages are posted at a fixed rate through the same
//! gateway (gateway → Kafka → notification-writer → PostgreSQL → the gateway's feed → SSE). Each
//! message carries its sequence number; the time from just before its POST to its arrival on the
//! stream is recorded. Optionally `--idle-streams` more streams are held open to measure the
//! memory of a stream in the gateway (its RSS before and after, from `/proc/<pid>/status`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    gateway: crate::GatewayArgs,
    /// Messages per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Streams held open besides the measuring one (for memory per stream).
    #[arg(long, default_value_t = 0)]
    idle_streams: usize,
    /// The gateway's process id, for its resident memory.
    #[arg(long)]
    gateway_pid: Option<u32>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn open(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> anyhow::Result<reqwest::Response> {
    let response = client
        .get(format!("{url}/api/v1/notifications/stream"))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "stream answered {}",
        response.status()
    );
    Ok(response)
}

/// `p50 … p90 … p99 … max …` in ms of a histogram of microseconds.
fn quantiles(h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0
    )
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // Streams: a connection each (never pooled). Posts: keep-alive connections reused from a
    // pool, as a browser or a backend posts.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let posting = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let user = Uuid::new_v4();
    args.gateway.ensure_loopback()?;
    let token = args.gateway.token(user, "bench@example.com")?;
    let run_id = Uuid::new_v4().simple().to_string();

    // Idle streams first, for the memory of a stream.
    let before = args.gateway_pid.and_then(rss_kib);
    let mut idle = Vec::with_capacity(args.idle_streams);
    for chunk in (0..args.idle_streams).collect::<Vec<_>>().chunks(100) {
        let opens = chunk
            .iter()
            .map(|_| open(&client, &args.gateway.url, &token));
        for response in futures::future::join_all(opens).await {
            idle.push(response?);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = args.gateway_pid.and_then(rss_kib);

    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let histogram = Arc::new(Mutex::new(crate::new_histogram()));
    // POST → 202 (the event is in Kafka): the first part of the path.
    let acked = Arc::new(Mutex::new(crate::new_histogram()));
    let response = open(&client, &args.gateway.url, &token).await?;
    let reader = {
        let (sent, histogram, run_id) = (sent.clone(), histogram.clone(), run_id.clone());
        tokio::spawn(async move {
            let mut response = response;
            let mut buffer = Vec::new();
            let mut received = 0u64;
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = buffer.drain(..end + 2).collect();
                    let text = String::from_utf8_lossy(&block);
                    let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else {
                        continue;
                    };
                    let Ok(row) = serde_json::from_str::<Value>(data) else {
                        continue;
                    };
                    let message = row["payload"]["message"].as_str().unwrap_or_default();
                    let Some(seq) = message
                        .strip_prefix(&format!("{run_id}:"))
                        .and_then(|s| s.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    if let Some(at) = sent.lock().unwrap().remove(&seq) {
                        let micros = at.elapsed().as_micros() as u64;
                        histogram.lock().unwrap().record(micros.max(1)).ok();
                        received += 1;
                    }
                }
            }
            received
        })
    };

    // Open-loop: one message every 1/rate, whatever the answers take.
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq = 0u64;
    let mut posts = Vec::new();
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    while started.elapsed() < args.duration {
        ticker.tick().await;
        seq += 1;
        sent.lock().unwrap().insert(seq, Instant::now());
        let (client, url, token, run_id, failed, acked) = (
            posting.clone(),
            args.gateway.url.clone(),
            token.clone(),
            run_id.clone(),
            failed.clone(),
            acked.clone(),
        );
        posts.push(tokio::spawn(async move {
            let at = Instant::now();
            let ok = client
                .post(format!("{url}/api/v1/events/message"))
                .bearer_auth(token)
                .json(&json!({"message": format!("{run_id}:{seq}"), "visibility": "broadcast"}))
                .send()
                .await
                .is_ok_and(|r| r.status() == 202);
            if ok {
                let micros = at.elapsed().as_micros() as u64;
                acked.lock().unwrap().record(micros.max(1)).ok();
            } else {
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    futures::future::join_all(posts).await;
    // Let the last messages arrive.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sent.lock().unwrap().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();
    let missing = sent.lock().unwrap().len();
    let h = histogram.lock().unwrap();
    println!(
        "stream: posted {seq} at {} msg/s for {:?}; received {} ({missing} missing, {} posts failed)",
        args.rate,
        args.duration,
        h.len(),
        failed.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("post → stream latency ms: {}", quantiles(&h));
    println!(
        "post → 202 (in Kafka) ms:   {}",
        quantiles(&acked.lock().unwrap())
    );
    if let (Some(before), Some(after)) = (before, after) {
        if args.idle_streams > 0 {
            println!(
                "streams held: {} idle + 1; gateway RSS {} → {} MiB, {:.1} KiB per stream",
                args.idle_streams,
                before / 1024,
                after / 1024,
                (after.saturating_sub(before)) as f64 / args.idle_streams as f64
            );
        }
    }
    drop(idle);
    Ok(())
}
