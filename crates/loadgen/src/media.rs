//! Upload sagas through the running stack, as browsers drive them: POST upload-intent at the
//! gateway, wait for the `media.upload_ready` notification (the notification-writer's row),
//! PUT the bytes to the presigned URL, POST upload-complete, wait for `media.upload_confirmed`.
//! Reports sagas completed per second and the saga latency from intent to confirmed
//! notification without the client's PUT: (ready − intent) + (confirmed − upload-complete).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::oneshot;
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:8080")]
    gateway_url: String,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "JWT_SECRET")]
    jwt_secret: String,
    /// Upload sagas to run.
    #[arg(long, default_value_t = 1000)]
    uploads: usize,
    /// Sagas in flight at once (closed loop).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Bytes per upload.
    #[arg(long, default_value_t = 1024)]
    size: usize,
}

type Waiters = Arc<Mutex<HashMap<(String, String), oneshot::Sender<Value>>>>;

/// Reads new media notifications every 5 ms and wakes whoever waits for them.
async fn watch(
    db: tokio_postgres::Client,
    waiters: Waiters,
    early: Arc<Mutex<HashMap<(String, String), Value>>>,
) {
    let mut last: i64 = db
        .query_one(
            "SELECT COALESCE(max(id), 0) FROM public.user_notifications",
            &[],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
    loop {
        let rows = match db
            .query(
                "SELECT id, event_type, payload FROM public.user_notifications
                 WHERE id > $1 AND event_type LIKE 'media.%' ORDER BY id",
                &[&last],
            )
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("watching notifications: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for row in &rows {
            last = last.max(row.get(0));
            let event_type: String = row.get(1);
            let payload: Value = row.get(2);
            let request = payload["request_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let key = (request, event_type);
            let waiter = waiters.lock().unwrap().remove(&key);
            match waiter {
                Some(tx) => {
                    let _ = tx.send(payload);
                }
                None => {
                    early.lock().unwrap().insert(key, payload);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

struct Watcher {
    waiters: Waiters,
    early: Arc<Mutex<HashMap<(String, String), Value>>>,
}

impl Watcher {
    async fn wait(&self, request: &str, event_type: &str) -> anyhow::Result<Value> {
        let key = (request.to_string(), event_type.to_string());
        let rx = {
            let mut waiters = self.waiters.lock().unwrap();
            if let Some(v) = self.early.lock().unwrap().remove(&key) {
                return Ok(v);
            }
            let (tx, rx) = oneshot::channel();
            waiters.insert(key, tx);
            rx
        };
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(v)) => Ok(v),
            _ => anyhow::bail!("no {event_type} notification for {request} within 60 s"),
        }
    }
}

struct Timing {
    without_put: Duration,
    to_ready: Duration,
    to_confirmed: Duration,
}

async fn one(
    http: &reqwest::Client,
    args: &Args,
    watcher: &Watcher,
    token: &str,
    body: Vec<u8>,
) -> anyhow::Result<Timing> {
    let t0 = Instant::now();
    let answer: Value = http
        .post(format!("{}/api/v1/media/upload-intent", args.gateway_url))
        .bearer_auth(token)
        .json(
            &json!({"file_name": "bench.png", "media_type": "image/png", "file_size": body.len()}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let request = answer["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ready = watcher.wait(&request, "media.upload_ready").await?;
    let t1 = Instant::now();
    http.put(ready["upload_url"].as_str().unwrap_or_default())
        .header("content-type", "image/png")
        .body(body)
        .send()
        .await?
        .error_for_status()?;
    let t2 = Instant::now();
    http.post(format!("{}/api/v1/media/upload-complete", args.gateway_url))
        .bearer_auth(token)
        .json(&json!({"request_id": request}))
        .send()
        .await?
        .error_for_status()?;
    watcher.wait(&request, "media.upload_confirmed").await?;
    let t3 = Instant::now();
    Ok(Timing {
        without_put: (t1 - t0) + (t3 - t2),
        to_ready: t1 - t0,
        to_confirmed: t3 - t2,
    })
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let db =
        substrate_db::connect_one(&substrate_db::DbConfig::from_url(&args.database_url)).await?;
    let watcher = Arc::new(Watcher {
        waiters: Arc::default(),
        early: Arc::default(),
    });
    tokio::spawn(watch(db, watcher.waiters.clone(), watcher.early.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let args = Arc::new(args);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    // Five uploads per user (the starting balance is 10).
    let users: Vec<String> = (0..args.uploads.div_ceil(5))
        .map(|_| {
            crate::mint_token(
                &args.jwt_secret,
                Some("authenticated"),
                Uuid::new_v4(),
                "media@example.com",
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::with_capacity(args.uploads)));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (args, http, watcher, users, next, results) = (
            args.clone(),
            http.clone(),
            watcher.clone(),
            users.clone(),
            next.clone(),
            results.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= args.uploads {
                    return Ok::<_, anyhow::Error>(());
                }
                let body = vec![(i % 251) as u8; args.size];
                let timing = one(&http, &args, &watcher, &users[i / 5], body).await?;
                results.lock().unwrap().push(timing);
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let elapsed = started.elapsed();
    let results = results.lock().unwrap();
    let mut total = crate::new_histogram();
    let mut ready = crate::new_histogram();
    let mut confirmed = crate::new_histogram();
    for t in results.iter() {
        total.record(t.without_put.as_micros() as u64).ok();
        ready.record(t.to_ready.as_micros() as u64).ok();
        confirmed.record(t.to_confirmed.as_micros() as u64).ok();
    }
    println!(
        "media sagas: {} uploads confirmed in {:.2} s = {:.0} sagas/s ({} in flight, {} B each)",
        results.len(),
        elapsed.as_secs_f64(),
        results.len() as f64 / elapsed.as_secs_f64(),
        args.concurrency,
        args.size
    );
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for (label, h) in [
        ("intent → confirmed, without the PUT", &total),
        ("intent → upload_ready notification", &ready),
        ("upload-complete → confirmed notification", &confirmed),
    ] {
        println!(
            "media sagas: {label}: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(h, 0.5),
            ms(h, 0.99),
            h.max() as f64 / 1000.0
        );
    }
    Ok(())
}
