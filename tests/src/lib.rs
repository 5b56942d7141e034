//! Test kit for suites that run against the local stack started by `./taskw start`: reads the
//! stack's settings (`.local/stack.env` or the environment), mints JWTs, and gives Kafka,
//! registry and Postgres handles plus polling helpers. Nothing here fakes a component.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::{encode, EncodingKey, Header};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use substrate_avro::{Registry, RegistryConfig};
use substrate_kafka::KafkaConfig;
use uuid::Uuid;

pub mod traces;

/// Repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A binary of the workspace built next to the running test (`cargo test --workspace` builds
/// every binary before running tests).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with cargo build -p {name}",
        path.display()
    );
    path
}

/// Starts a service binary configured only by the file `config` (no inherited environment, so
/// the stack's `SUBSTRATE_*` cannot override it), logging at `info` to `log`.
pub fn spawn_configured(binary: &Path, config: &Path, log: &Path) -> std::process::Child {
    std::process::Command::new(binary)
        .env_clear()
        .env("SUBSTRATE_CONFIG", config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()))
}

/// A Python with the `standardwebhooks` package (scripts/test.sh provides it).
pub fn test_python() -> PathBuf {
    std::env::var_os("SUBSTRATE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".local/tools/test-venv/bin/python"))
}

/// Settings of the running local stack, with one schema-registry client per `Stack` (its
/// connections belong to the runtime of the test that loaded it; a process-wide client would
/// hand one test's dead connections to the next).
#[derive(Clone)]
pub struct Stack {
    pub gateway_url: String,
    /// The stack gateway's operational listener (`/readyz`, `/metrics`).
    pub gateway_ops_url: String,
    /// The gateway's `api_keys.pepper` (for minting API keys).
    pub api_key_pepper: String,
    pub bootstrap_servers: String,
    pub registry_url: String,
    pub database_url: String,
    pub jwt_secret: String,
    pub login_webhook_secret: String,
    pub audience: Option<String>,
    /// The object store (`S3_*` of stack.env).
    pub s3: substrate_s3::S3Config,
    pub s3_archive_bucket: String,
    /// The keys that seal rule action secrets (`SUBSTRATE_SECRETS__KEYS`, the running
    /// dispatcher's `secrets.keys`).
    pub secrets_keys: String,
    /// The running rule-evaluator's `/metrics`.
    pub rule_evaluator_metrics: String,
    registry: Registry,
}

impl Stack {
    /// Environment first, then `.local/stack.env`.
    pub fn load() -> Self {
        let file = read_dotenv(&repo_root().join(".local/stack.env"));
        let get = |key: &str| -> String {
            std::env::var(key)
                .ok()
                .or_else(|| file.get(key).cloned())
                .unwrap_or_else(|| {
                    panic!("{key} is not set: start the stack with ./taskw start (it writes .local/stack.env)")
                })
        };
        let optional = |key: &str| std::env::var(key).ok().or_else(|| file.get(key).cloned());
        let registry_url = get("SCHEMA_REGISTRY_URL");
        let registry = Registry::new(&RegistryConfig {
            url: registry_url.clone(),
            timeout_ms: 10_000,
        })
        .expect("registry settings");
        Self {
            registry,
            gateway_url: get("GATEWAY_URL"),
            gateway_ops_url: get("GATEWAY_OPS_URL"),
            api_key_pepper: get("API_KEY_PEPPER"),
            bootstrap_servers: get("KAFKA_BOOTSTRAP_SERVERS"),
            registry_url,
            database_url: get("DATABASE_URL"),
            jwt_secret: get("JWT_SECRET"),
            login_webhook_secret: get("LOGIN_WEBHOOK_SECRET"),
            audience: optional("SUBSTRATE_AUTH__AUDIENCE"),
            s3: substrate_s3::S3Config::new(
                get("S3_ENDPOINT"),
                get("S3_REGION"),
                get("S3_ACCESS_KEY_ID"),
                get("S3_SECRET_ACCESS_KEY"),
            ),
            s3_archive_bucket: get("S3_ARCHIVE_BUCKET"),
            secrets_keys: get("SUBSTRATE_SECRETS__KEYS"),
            rule_evaluator_metrics: format!(
                "http://{}/metrics",
                optional("SUBSTRATE_RULE_EVALUATOR__LISTEN")
                    .unwrap_or_else(|| "127.0.0.1:8092".into())
            ),
        }
    }

    /// The keyring of the running dispatcher (what `esctl` seals rule secrets with).
    pub fn keyring(&self) -> substrate_secrets::Keyring {
        self.secrets_config()
            .keyring("secrets")
            .expect("SUBSTRATE_SECRETS__KEYS of the stack")
    }

    /// `secrets.keys` of the stack, for a service configuration.
    pub fn secrets_config(&self) -> substrate_secrets::SecretsConfig {
        substrate_secrets::SecretsConfig {
            keys: self
                .secrets_keys
                .split(',')
                .map(|k| k.trim().to_string())
                .collect(),
            active_key_id: None,
        }
    }

    pub fn kafka(&self) -> KafkaConfig {
        KafkaConfig::local(&self.bootstrap_servers)
    }

    /// The registry client (shared by clones of this `Stack`, so its schema cache is reused).
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Encodes `value` for `topic` (registering its schema when new), retrying what the
    /// registry client calls retriable (a dropped connection under a loaded suite) for up to
    /// 10 s: test setup, not the behaviour under test.
    pub async fn encode(&self, topic: &str, value: substrate_avro::Value) -> Vec<u8> {
        let started = Instant::now();
        loop {
            match self.registry.encode(topic, value.clone()).await {
                Ok(bytes) => return bytes,
                Err(e) if e.retriable && started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("encoding for {topic}: {e:?}"),
            }
        }
    }

    pub async fn db(&self) -> tokio_postgres::Client {
        substrate_db::connect_one(&substrate_db::DbConfig::from_url(&self.database_url))
            .await
            .expect("connect to the stack's PostgreSQL")
    }

    /// Mints an API key of `source` for `routes`, as `esctl keys create` does; the stack's
    /// gateway accepts it within its refresh interval (see [`Stack::wait_for_key`]).
    pub async fn api_key(&self, source: &str, routes: &[&str]) -> String {
        let routes: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
        substrate_db::api_keys::create(
            &self.db().await,
            self.api_key_pepper.as_bytes(),
            source,
            &routes,
            Some("test"),
        )
        .await
        .expect("create an API key")
        .key
    }

    /// Waits until a gateway at `gateway_url` accepts `key` on `route` (it re-reads keys every
    /// `api_keys.refresh_secs`): posts `{}` (which no schema with required fields accepts, so
    /// nothing is produced) until the answer is no longer 401 or 503.
    pub async fn wait_for_key(&self, gateway_url: &str, route: &str, key: &str) {
        let client = reqwest::Client::new();
        let url = format!("{gateway_url}/api/v1/events/{route}");
        eventually(
            Duration::from_secs(15),
            "the gateway accepts the new API key",
            || {
                let (client, url) = (client.clone(), url.clone());
                async move {
                    let status = client
                        .post(&url)
                        .header("x-api-key", key)
                        .json(&json!({}))
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    (status != 401 && status != 503 && status != 0).then_some(())
                }
            },
        )
        .await
        .expect("API key accepted");
    }

    /// An HS256 token for `user` as the local gateway accepts it (Supabase claims).
    pub fn token(&self, user: Uuid, email: &str) -> String {
        self.token_with(json!({"sub": user, "email": email, "role": "authenticated"}))
    }

    /// An HS256 token with these claims plus `exp` in an hour and the stack's audience,
    /// unless the claims set them.
    pub fn token_with(&self, mut claims: Value) -> String {
        let now = chrono::Utc::now().timestamp();
        let object = claims.as_object_mut().expect("claims are an object");
        object.entry("exp").or_insert(json!(now + 3600));
        object.entry("iat").or_insert(json!(now));
        if let Some(aud) = &self.audience {
            object.entry("aud").or_insert(json!(aud));
        }
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(self.jwt_secret.as_bytes()),
        )
        .expect("sign token")
    }

    /// Creates a topic (3 partitions); an existing topic is fine.
    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> =
            self.kafka().admin_config().create().expect("admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .expect("create topic");
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => panic!("creating {name}: {code}"),
            }
        }
    }

    /// A consumer in a fresh group reading `topic` from the start.
    pub fn consumer(&self, topic: &str) -> StreamConsumer {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", format!("test-{}", Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        consumer
    }
}

impl Stack {
    /// Every NDJSON line under `prefix` in the archive bucket, with the key of its object;
    /// `None` while the bucket cannot be listed or read.
    pub async fn archived_lines(&self, prefix: &str) -> Option<Vec<(String, Value)>> {
        let s3 = self.s3.client();
        let bucket = &self.s3_archive_bucket;
        let listed = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .ok()?;
        let mut lines = Vec::new();
        for object in listed.contents() {
            let key = object.key()?;
            let bytes = s3
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .ok()?
                .body
                .collect()
                .await
                .ok()?
                .into_bytes();
            for line in String::from_utf8_lossy(&bytes).lines() {
                lines.push((key.to_string(), serde_json::from_str(line).ok()?));
            }
        }
        Some(lines)
    }
}

impl Stack {
    /// The next offset `group` will read in a partition (its committed offset), if any.
    pub fn committed(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        use rdkafka::consumer::BaseConsumer;
        use rdkafka::{Offset, TopicPartitionList};
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .ok()?;
        let mut list = TopicPartitionList::new();
        list.add_partition(topic, partition);
        let offsets = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .ok()?;
        match offsets.find_partition(topic, partition)?.offset() {
            Offset::Offset(next) => Some(next),
            _ => None,
        }
    }

    /// A consumer positioned at the current end of every partition of `topic`: it sees only
    /// records produced after this call, however long the topic is.
    pub fn consumer_at_end(&self, topic: &str) -> StreamConsumer {
        use rdkafka::{Offset, TopicPartitionList};
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", format!("test-{}", Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let timeout = Duration::from_secs(10);
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .expect("topic metadata");
        let mut assignment = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition.id(), timeout)
                .expect("watermarks");
            assignment
                .add_partition_offset(topic, partition.id(), Offset::Offset(high))
                .unwrap();
        }
        consumer.assign(&assignment).expect("assign");
        consumer
    }
}

/// One setting of the running stack: `key` from the environment, else from `.local/stack.env`
/// (for settings [`Stack`] does not carry, e.g. `KRATOS_PUBLIC_URL`).
pub fn stack_setting(key: &str) -> Option<String> {
    std::env::var(key)
        .ok()
        .or_else(|| read_dotenv(&repo_root().join(".local/stack.env")).remove(key))
}

fn read_dotenv(path: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// The value of one series (`name` or `name{labels}`) on a Prometheus `/metrics` page; `None`
/// while the page does not answer or the series is absent.
pub async fn metric(url: &str, series: &str) -> Option<f64> {
    let page = reqwest::get(url).await.ok()?.text().await.ok()?;
    page.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if started.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rows of `user_notifications` for an event id.
pub async fn notification_rows(
    db: &tokio_postgres::Client,
    event_id: Uuid,
) -> anyhow::Result<Vec<tokio_postgres::Row>> {
    db.query(
        "SELECT event_type, payload, visibility, recipient_id, sender_id FROM public.user_notifications WHERE event_id = $1",
        &[&event_id],
    )
    .await
    .context("query user_notifications")
}

/// The payload of `user`'s notification of `event_type` about media request `request`, once
/// the notification-writer has written it (waits at most `timeout`).
pub async fn media_notification(
    db: &tokio_postgres::Client,
    user: Uuid,
    event_type: &str,
    request: &str,
    timeout: Duration,
) -> Value {
    eventually(timeout, &format!("{event_type} for {request}"), || async {
        let rows = db
            .query(
                "SELECT payload FROM public.user_notifications
                 WHERE recipient_id = $1 AND event_type = $2",
                &[&user, &event_type],
            )
            .await
            .ok()?;
        rows.iter()
            .map(|r| r.get::<_, Value>(0))
            .find(|p| p["request_id"] == request)
    })
    .await
    .unwrap()
}

/// Logs of in-process services at `RUST_LOG` (default `warn`), set up once per test binary.
pub fn init_test_logs() {
    static LOGS: std::sync::Once = std::sync::Once::new();
    LOGS.call_once(|| {
        substrate_runtime::telemetry::init(&substrate_runtime::telemetry::TelemetryConfig {
            log_format: "plain".into(),
            log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            ..Default::default()
        });
    });
}

impl Stack {
    /// The `kafka`, `schema_registry`, `database`, `s3` and `secrets` sections of a service configuration
    /// pointing at this stack (a 6 s consumer session, so a killed member is replaced quickly);
    /// the S3 client goes to `s3_endpoint` (the stack's, or a proxy in front of it).
    pub fn connections_yaml(&self, s3_endpoint: &str) -> String {
        let s3 = &self.s3;
        format!(
            "kafka:\n  bootstrap_servers: {kafka}\n  extra:\n    session.timeout.ms: \"6000\"\n\
             schema_registry:\n  url: {registry}\n\
             database:\n  url: {db}\n\
             s3:\n  endpoint: {s3e}\n  region: {s3r}\n  access_key_id: {s3a}\n  secret_access_key: {s3s}\n\
             secrets:\n  keys: \"{keys}\"\n",
            kafka = self.bootstrap_servers,
            registry = self.registry_url,
            db = self.database_url,
            s3e = s3_endpoint,
            s3r = s3.region,
            s3a = s3.access_key_id,
            s3s = s3.secret_access_key,
            keys = self.secrets_keys,
        )
    }
}

/// A service's `serve(config, listener, shutdown)` running in this process on a loopback port.
pub struct InProcess {
    pub shutdown: substrate_runtime::Shutdown,
    pub addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcess {
    pub async fn start<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener, substrate_runtime::Shutdown) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = substrate_runtime::Shutdown::default();
        let task = tokio::spawn(serve(listener, shutdown.clone()));
        Self {
            shutdown,
            addr,
            task,
        }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cancels it and waits for a clean exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the service stopped within 30 s")
            .expect("the service task")
            .expect("the service exited cleanly");
    }
}

/// A unique name for test topics and groups.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", Uuid::new_v4().simple())
}

/// A TCP proxy on loopback that can be switched off (refusing and cutting connections) and on
/// again: a real outage of the component behind it, seen from one client.
pub struct Outage {
    pub addr: std::net::SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refused: std::sync::Arc<std::sync::atomic::AtomicU64>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl Outage {
    pub async fn proxy(target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let flag = up.clone();
        let refusals = refused.clone();
        let cut = generation.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    break;
                };
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    refusals.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let mut cut = cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            up,
            refused,
            generation,
        }
    }

    /// Connections refused while down: how often the client tried to reconnect.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Cuts every open connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Registers the message schema for a test topic and returns the encoded record of `event`.
pub async fn encode_message(stack: &Stack, topic: &str, event: &Value) -> Vec<u8> {
    let text =
        std::fs::read_to_string(repo_root().join("avro/public/user/message.events.avsc")).unwrap();
    let schema = substrate_avro::Schema::parse_str(&text).unwrap();
    let value = substrate_avro::json_to_avro(&schema, event).expect("valid test event");
    stack.encode(topic, value).await
}

/// Creates `topic` and registers the message schema under its subject.
pub async fn message_topic(stack: &Stack, topic: &str, partitions: i32) {
    stack.create_topic(topic, partitions).await;
    let text =
        std::fs::read_to_string(repo_root().join("avro/public/user/message.events.avsc")).unwrap();
    stack
        .registry()
        .register(topic, &text)
        .await
        .expect("register schema");
}

/// A message event for tests (broadcast unless a recipient is given).
pub fn message_event(sender: Uuid, recipient: Option<Uuid>, text: &str) -> Value {
    json!({
        "event_id": Uuid::now_v7(),
        "event_time": chrono::Utc::now().timestamp_millis(),
        "sender_id": sender,
        "sender_email": null,
        "message": text,
        "visibility": if recipient.is_some() { "direct" } else { "broadcast" },
        "recipient_id": recipient,
    })
}

/// Count of rows of one event type.
pub async fn count_rows(db: &tokio_postgres::Client, event_type: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM public.user_notifications WHERE event_type = $1",
        &[&event_type],
    )
    .await
    .map(|r| r.get(0))
    .unwrap_or(-1)
}
