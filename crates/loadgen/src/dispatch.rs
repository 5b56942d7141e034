//! dispatcher throughput: N signed-webhook requests are produced to a fresh requests topic, then
//! a dispatcher process (the release binary, with the stack's settings and its own group and
//! topic) delivers them to a local receiver; deliveries/s is timed at the receiver from the first
//! to the last request, and the audit rows are counted afterwards. The action's URL and signing
//! secret are sealed first, as `esctl rules save` does, so every request is resolved as in
//! production (one database read, then the dispatcher's cache).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use serde_json::json;
use substrate_kafka::{CloudEvent, TraceParent};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: crate::TopicTarget,
    /// The dispatcher binary to run.
    #[arg(long)]
    dispatcher_bin: std::path::PathBuf,
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// The keys the dispatcher opens sealed secrets with (the stack's).
    #[arg(long, env = "SUBSTRATE_SECRETS__KEYS", hide_env_values = true)]
    secrets_keys: String,
    #[arg(long, default_value_t = 50_000)]
    requests: u64,
    #[arg(long, default_value_t = 6)]
    partitions: i32,
}

#[derive(Default)]
struct Counter {
    hits: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

async fn receive(
    axum::extract::State(counter): axum::extract::State<Arc<Counter>>,
) -> axum::http::StatusCode {
    let now = Instant::now();
    counter.first.lock().unwrap().get_or_insert(now);
    *counter.last.lock().unwrap() = Some(now);
    counter.hits.fetch_add(1, Ordering::Relaxed);
    axum::http::StatusCode::NO_CONTENT
}

pub async fn run(mut args: Args) -> anyhow::Result<()> {
    let requests_topic = format!("bench.dispatch.requests.{}", Uuid::new_v4().simple());
    args.target.topic = "internal.dispatch.requests".into();
    let (schema, registry) = args.target.open()?;

    let admin: AdminClient<DefaultClientContext> =
        substrate_kafka::KafkaConfig::local(&args.target.bootstrap_servers)
            .admin_config()
            .create()?;
    admin
        .create_topics(
            &[NewTopic::new(
                &requests_topic,
                args.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await?;

    let counter = Arc::new(Counter::default());
    let app = axum::Router::new()
        .fallback(receive)
        .with_state(counter.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let rule_id = Uuid::new_v4();
    let full: substrate_rules::Action = serde_json::from_value(
        json!({"type": "webhook", "url": url, "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}),
    )?;
    let (public, secret) = full.split();
    let keyring = substrate_secrets::SecretsConfig {
        keys: args
            .secrets_keys
            .split(',')
            .map(|k| k.trim().to_string())
            .collect(),
        active_key_id: None,
    }
    .keyring("secrets")?;
    let db =
        substrate_db::connect_one(&substrate_db::DbConfig::from_url(&args.database_url)).await?;
    substrate_db::secrets::insert(
        &db,
        &[substrate_db::secrets::ActionSecretRow {
            rule_id,
            rule_version: 1,
            action_index: 0,
            sealed: keyring.seal(
                &secret.expect("a webhook has a secret").to_bytes(),
                &substrate_secrets::action_aad(&rule_id, 1, 0),
            ),
        }],
    )
    .await?;
    let action = serde_json::to_string(&public)?;
    let trace = TraceParent::new_root();
    let started = Instant::now();
    let mut sender = crate::Sender::new(&crate::TopicTarget {
        bootstrap_servers: args.target.bootstrap_servers.clone(),
        schema_registry_url: args.target.schema_registry_url.clone(),
        topic: requests_topic.clone(),
        avro_dir: args.target.avro_dir.clone(),
    })?;
    for i in 0..args.requests {
        let id = Uuid::new_v4();
        let record = json!({
            "request_id": id.to_string(), "event_id": Uuid::now_v7().to_string(),
            "event_type": "commerce.purchase", "event_time": chrono::Utc::now().timestamp_millis(),
            "source_topic": "public.commerce.purchase.events", "rule_id": rule_id.to_string(),
            "rule_name": "bench", "rule_version": 1, "action_index": 0, "action": action,
            "payload": json!({"purchase": {"id": format!("o-{i}"), "amount": 750.0}}).to_string(),
            "traceparent": trace.to_string(),
        });
        let value = schema
            .to_avro(&record)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let payload = registry.encode(&args.target.topic, value).await?;
        let headers = CloudEvent::new(id, "dispatch.request", "/loadgen").to_headers(&trace);
        sender.send(id.to_string(), payload, headers).await?;
    }
    sender.finish().await?;
    println!(
        "produced {} requests in {:.2} s",
        args.requests,
        started.elapsed().as_secs_f64()
    );

    let group = format!("bench-dispatcher-{}", Uuid::new_v4().simple());
    let mut child = tokio::process::Command::new(&args.dispatcher_bin)
        .env("SUBSTRATE_DISPATCHER__REQUESTS_TOPIC", &requests_topic)
        .env("SUBSTRATE_DISPATCHER__GROUP_ID", &group)
        .env("SUBSTRATE_DISPATCHER__LISTEN", "127.0.0.1:0")
        .env("SUBSTRATE_DISPATCHER__HTTP__ALLOW_PRIVATE_TARGETS", "true")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while counter.hits.load(Ordering::Relaxed) < args.requests {
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out with {} of {} delivered",
            counter.hits.load(Ordering::Relaxed),
            args.requests
        );
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the dispatcher exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = counter.first.lock().unwrap().expect("hits");
    let last = counter.last.lock().unwrap().expect("hits");
    crate::report("dispatcher deliveries", args.requests, last - first, None);
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;

    let rows: i64 = db
        .query_one(
            "SELECT count(*) FROM public.dispatch_attempts WHERE rule_id = $1",
            &[&rule_id],
        )
        .await?
        .get(0);
    println!(
        "dispatcher deliveries: {} hits at the receiver, {rows} audit rows",
        counter.hits.load(Ordering::Relaxed)
    );
    Ok(())
}
