//! One test's media saga: its own topics (a unique prefix), consumer group and settings, the
//! stack's Kafka, registry, Postgres and S3 server, and a collector of everything the saga
//! produces.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use media_saga::emit::{Topic, Topics};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message};
use serde_json::{json, Value};
use substrate_avro::{avro_to_json, Catalog};
use substrate_testkit::{init_test_logs, repo_root, unique, InProcess, Stack};
use uuid::Uuid;

pub const SECRET: &str = "media-test-webhook-secret";

pub struct Setup {
    pub stack: Stack,
    pub topics: Topics,
    pub prefix: String,
    pub group: String,
    pub bucket: String,
    pub ttl_secs: u64,
    pub move_timeout_ms: u64,
    pub max_move_retries: i32,
    pub starting_credits: i32,
    /// The endpoint the saga's S3 client uses (a cuttable proxy in fault tests).
    pub s3_endpoint: String,
    catalog: Catalog,
}

impl Setup {
    pub async fn new() -> Self {
        init_test_logs();
        let stack = Stack::load();
        let id = unique("m");
        let prefix = format!("test.{id}.");
        let catalog = Catalog::load(&repo_root().join("avro")).unwrap();
        let topics = Topics::new(prefix.clone());
        for topic in Topic::ALL {
            let name = topics.name(topic);
            stack.create_topic(&name, 3).await;
            let schema = catalog.get(topic.name()).unwrap();
            stack
                .registry()
                .register(&name, &schema.text)
                .await
                .expect("register schema");
        }
        stack
            .create_topic(&format!("{prefix}{}", media_saga::DEAD_LETTER_TOPIC), 1)
            .await;
        Self {
            s3_endpoint: stack.s3.endpoint.clone(),
            bucket: std::env::var("S3_MEDIA_BUCKET").unwrap_or_else(|_| "media-uploads".into()),
            stack,
            topics,
            prefix,
            group: format!("test-media-saga-{id}"),
            ttl_secs: 900,
            move_timeout_ms: 30_000,
            max_move_retries: 3,
            starting_credits: 10,
            catalog,
        }
    }

    /// The configuration as YAML (also usable as a `SUBSTRATE_CONFIG` file for the binary); the
    /// saga's S3 client goes to `s3_endpoint`, presigned URLs name the stack's S3 server.
    pub fn yaml(&self, listen: &str) -> String {
        format!(
            "media_saga:\n  listen: {listen}\n  group_id: {group}\n  topic_prefix: \"{prefix}\"\n  avro_dir: {avro}\n  bucket: {bucket}\n  public_s3_endpoint: {public}\n  starting_credits: {credits}\n  upload_url_ttl_secs: {ttl}\n  move_timeout_ms: {move_timeout}\n  max_move_retries: {retries}\n  deadline_poll_ms: 100\n  uploads_lifecycle_days: 0\n  webhook_secret: {secret}\n{connections}",
            group = self.group,
            prefix = self.prefix,
            avro = repo_root().join("avro").display(),
            bucket = self.bucket,
            public = self.stack.s3.endpoint,
            credits = self.starting_credits,
            ttl = self.ttl_secs,
            move_timeout = self.move_timeout_ms,
            retries = self.max_move_retries,
            secret = SECRET,
            connections = self.stack.connections_yaml(&self.s3_endpoint),
        )
    }

    /// Runs the saga in this process until the returned handle is stopped.
    pub async fn start(&self) -> Running {
        let config: media_saga::Config = substrate_runtime::config::load_config_from(
            media_saga::config::DEFAULTS,
            &self.yaml("127.0.0.1:0"),
        )
        .unwrap();
        InProcess::start(|listener, shutdown| media_saga::serve(config, listener, shutdown)).await
    }

    pub fn producer(&self) -> FutureProducer {
        self.stack.kafka().producer_config().create().unwrap()
    }

    /// Produces a record to one of this test's topics (as the gateway would).
    pub async fn produce(&self, producer: &FutureProducer, topic: Topic, record: &Value) {
        let schema = self.catalog.get(topic.name()).unwrap();
        let value = schema.to_avro(record).expect("record fits its schema");
        let name = self.topics.name(topic);
        let bytes = self.stack.registry().encode(&name, value).await.unwrap();
        let key = record["request_id"].as_str().unwrap().to_string();
        producer
            .send(
                FutureRecord::to(&name).payload(&bytes).key(&key),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    /// An upload intent; returns its request id.
    pub async fn intent(
        &self,
        producer: &FutureProducer,
        user: Uuid,
        file_name: &str,
        size: usize,
    ) -> Uuid {
        let request = Uuid::now_v7();
        self.intent_with_id(producer, request, user, file_name, size)
            .await;
        request
    }

    pub async fn intent_with_id(
        &self,
        producer: &FutureProducer,
        request: Uuid,
        user: Uuid,
        file_name: &str,
        size: usize,
    ) {
        let record = json!({"request_id": request, "user_id": user, "file_name": file_name,
            "media_type": "image/png", "file_size": size,
            "requested_at": chrono::Utc::now().timestamp_millis()});
        self.produce(producer, Topic::UploadIntent, &record).await;
    }

    /// Starts collecting every record of the saga's output topics.
    pub fn collect(&self) -> Collector {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.stack.bootstrap_servers)
            .set("group.id", format!("test-{}", Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let names: Vec<String> = Topic::ALL.iter().map(|t| self.topics.name(*t)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).expect("subscribe");
        let records = Arc::new(Mutex::new(Vec::new()));
        let positions = Arc::new(Mutex::new(HashMap::new()));
        let sink = records.clone();
        let read = positions.clone();
        let registry = self.stack.registry();
        let topics = self.topics.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok(m) = consumer.recv().await else {
                    continue;
                };
                if let Some(topic) = topics.of(m.topic()) {
                    if let Ok((value, _)) = registry.decode(m.payload().unwrap_or_default()).await {
                        let ce_id = m
                            .headers()
                            .and_then(|h| substrate_kafka::headers::header_str(h, "ce_id"))
                            .unwrap_or_default()
                            .to_string();
                        sink.lock()
                            .unwrap()
                            .push((topic, avro_to_json(&value), ce_id));
                    }
                }
                // Read (kept or skipped) only once it is in `records`.
                read.lock()
                    .unwrap()
                    .insert((m.topic().to_string(), m.partition()), m.offset() + 1);
            }
        });
        Collector {
            records,
            positions,
            bootstrap_servers: self.stack.bootstrap_servers.clone(),
            topics: self.topics.clone(),
            task,
        }
    }
}

pub struct Collector {
    records: Arc<Mutex<Vec<(Topic, Value, String)>>>,
    /// The next offset to read, by (topic name, partition).
    positions: Arc<Mutex<HashMap<(String, i32), i64>>>,
    bootstrap_servers: String,
    topics: Topics,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    /// `(record, CloudEvents id)` of `topic`'s records, for `request` when given.
    fn select(&self, topic: Topic, request: Option<Uuid>) -> Vec<(Value, String)> {
        let id = request.map(|r| r.to_string());
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, v, _)| *t == topic && id.as_deref().is_none_or(|id| v["request_id"] == id))
            .map(|(_, v, ce)| (v.clone(), ce.clone()))
            .collect()
    }

    /// Records of `topic` for `request`.
    pub fn of(&self, topic: Topic, request: Uuid) -> Vec<Value> {
        self.select(topic, Some(request))
            .into_iter()
            .map(|(v, _)| v)
            .collect()
    }

    /// Every record of `topic`.
    pub fn all(&self, topic: Topic) -> Vec<Value> {
        self.select(topic, None)
            .into_iter()
            .map(|(v, _)| v)
            .collect()
    }

    /// CloudEvents ids of `topic`'s records for `request`.
    pub fn ids(&self, topic: Topic, request: Uuid) -> Vec<String> {
        self.select(topic, Some(request))
            .into_iter()
            .map(|(_, ce)| ce)
            .collect()
    }

    /// Waits until the collector has read every record `topic` holds now (up to the end offset of
    /// each partition): what it has not seen afterwards was produced after this call.
    pub async fn read_to_end(&self, topic: Topic, timeout: Duration) {
        let name = self.topics.name(topic);
        let bootstrap = self.bootstrap_servers.clone();
        let topic_name = name.clone();
        let ends = tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .expect("metadata client");
            let metadata = consumer
                .fetch_metadata(Some(&topic_name), Duration::from_secs(10))
                .expect("topic metadata");
            metadata.topics()[0]
                .partitions()
                .iter()
                .map(|p| {
                    let (_, high) = consumer
                        .fetch_watermarks(&topic_name, p.id(), Duration::from_secs(10))
                        .expect("end offsets");
                    (p.id(), high)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert!(!ends.is_empty(), "{name} has partitions");
        substrate_testkit::eventually(timeout, &format!("{name} read to its end"), || async {
            let read = self.positions.lock().unwrap();
            ends.iter()
                .all(|(partition, end)| {
                    *end == 0
                        || read
                            .get(&(name.clone(), *partition))
                            .is_some_and(|p| p >= end)
                })
                .then_some(())
        })
        .await
        .unwrap();
    }

    /// Waits for the first record of `topic` for `request`.
    pub async fn wait(&self, topic: Topic, request: Uuid, timeout: Duration) -> Value {
        substrate_testkit::eventually(
            timeout,
            &format!("{} for {request}", topic.name()),
            || async { self.of(topic, request).into_iter().next() },
        )
        .await
        .unwrap()
    }
}

pub type Running = InProcess;

/// The value of `name` on a service's `/metrics`, summed over its series whose labels include
/// `labels` (0 when there is none). The Prometheus recorder is process-wide: every saga running
/// in this test binary counts into the same series.
pub async fn metric(base: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics reachable")
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

/// PUTs `bytes` to a presigned URL as a browser would.
pub async fn put(url: &str, bytes: Vec<u8>, content_type: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .put(url)
        .header("content-type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("PUT to the S3 server")
        .status()
}

/// An S3 (MinIO) "object created" notification for `key` in `bucket`.
pub fn s3_event(bucket: &str, key: &str, size: usize) -> Value {
    let encoded: String = key
        .split('/')
        .map(url_encode)
        .collect::<Vec<_>>()
        .join("%2F");
    json!({
        "EventName": "s3:ObjectCreated:Put",
        "Key": format!("{bucket}/{key}"),
        "Records": [{
            "eventVersion": "2.0",
            "eventSource": "minio:s3",
            "awsRegion": "",
            "eventTime": chrono::Utc::now().to_rfc3339(),
            "eventName": "s3:ObjectCreated:Put",
            "s3": {
                "s3SchemaVersion": "1.0",
                "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
                "object": {"key": encoded, "size": size, "contentType": "image/png"}
            }
        }]
    })
}

fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Posts an S3 event to the saga's webhook; the answer's status and body.
pub async fn notify(base: &str, secret: &str, event: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/webhooks/media-upload"))
        .bearer_auth(secret)
        .json(event)
        .send()
        .await
        .expect("webhook reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Posts an S3 event that must be answered 200 with `accepted` records taken.
pub async fn notify_accepted(base: &str, event: &Value, accepted: i64) {
    let (status, body) = notify(base, SECRET, event).await;
    assert_eq!(
        (status, body["accepted"].as_i64()),
        (200, Some(accepted)),
        "{body}"
    );
}

/// The saga row's state.
pub async fn saga_state(db: &tokio_postgres::Client, request: Uuid) -> Option<String> {
    db.query_opt(
        "SELECT state FROM public.media_sagas WHERE request_id = $1",
        &[&request],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

/// Ledger rows of a request by reason.
pub async fn ledger_rows(db: &tokio_postgres::Client, request: Uuid, reason: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM public.credit_ledger WHERE request_id = $1 AND reason = $2",
        &[&request, &reason],
    )
    .await
    .unwrap()
    .get(0)
}

/// A PNG-ish payload of `size` bytes.
pub fn bytes(size: usize, seed: u8) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}
