//! A dispatcher with its own topics against the local stack, local HTTP receivers whose answers
//! the test controls, and helpers to produce dispatch requests. Requests carry the public part
//! of their action, as the rule-evaluator writes them; the secret part is sealed into
//! `substrate_private.action_secrets` with the stack's key first, as `esctl rules save` does.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Value};
use substrate_testkit::{init_test_logs, repo_root, unique, InProcess, Stack};
use uuid::Uuid;

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub fn webhook_id(&self) -> &str {
        self.headers
            .get("webhook-id")
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// How a receiver answers.
#[derive(Debug, Clone)]
pub enum Answer {
    Status(u16),
    /// Status with a `Retry-After` header (seconds).
    RetryAfter(u16, u64),
    /// Never answers (until the client gives up).
    Hang,
    /// Answers 200 after a pause.
    Slow(Duration),
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    answer: Arc<Mutex<Answer>>,
}

#[derive(Clone)]
struct ReceiverState {
    hits: Arc<Mutex<Vec<Hit>>>,
    answer: Arc<Mutex<Answer>>,
}

async fn receive(
    State(state): State<ReceiverState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.hits.lock().unwrap().push(Hit {
        path: uri.path().to_string(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    });
    let answer = state.answer.lock().unwrap().clone();
    match answer {
        Answer::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        Answer::RetryAfter(s, secs) => (
            StatusCode::from_u16(s).unwrap(),
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Answer::Slow(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
    }
}

impl Receiver {
    pub async fn start(answer: Answer) -> Self {
        let hits = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(ReceiverState {
                hits: hits.clone(),
                answer: answer.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, hits, answer }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// How many hits so far (cheap, unlike [`Receiver::hits`] on a long history).
    pub fn hit_count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }

    /// The hits from the `start`-th on, in arrival order.
    pub fn hits_from(&self, start: usize) -> Vec<Hit> {
        let hits = self.hits.lock().unwrap();
        hits.get(start..).map(<[Hit]>::to_vec).unwrap_or_default()
    }

    pub fn hits_for(&self, id: &Uuid) -> Vec<Hit> {
        let id = id.to_string();
        self.hits()
            .into_iter()
            .filter(|h| h.webhook_id() == id)
            .collect()
    }

    /// Waits until `count` hits carry `webhook-id` = `id`.
    pub async fn wait_for(&self, id: &Uuid, count: usize, timeout: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + timeout;
        loop {
            let hits = self.hits_for(id);
            if hits.len() >= count || Instant::now() > deadline {
                return hits;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Topics and settings of one test's dispatcher.
pub struct Setup {
    pub stack: Stack,
    pub requests_topic: String,
    pub retry_prefix: String,
    pub dead_letter_topic: String,
    pub group: String,
    pub delays: Vec<&'static str>,
    pub timeout_ms: u64,
    pub allow_private: bool,
    /// `max_in_flight` and `http.per_endpoint_queue`, when not the defaults.
    pub max_in_flight: Option<usize>,
    pub per_endpoint_queue: Option<usize>,
    /// Rules whose action secret is sealed already.
    sealed: Mutex<HashSet<Uuid>>,
}

impl Setup {
    /// Creates the topics: requests (3 partitions), one per delay, and the dead letter.
    pub async fn new(delays: &[&'static str]) -> Self {
        init_test_logs();
        let stack = Stack::load();
        let id = unique("d");
        let setup = Self {
            stack,
            requests_topic: format!("test.dispatch.requests.{id}"),
            retry_prefix: format!("test.dispatch.retry.{id}"),
            dead_letter_topic: format!("test.dispatch.dead-letter.{id}"),
            group: format!("test-dispatcher-{id}"),
            delays: delays.to_vec(),
            timeout_ms: 15_000,
            allow_private: true,
            max_in_flight: None,
            per_endpoint_queue: None,
            sealed: Mutex::default(),
        };
        setup.stack.create_topic(&setup.requests_topic, 3).await;
        setup.stack.create_topic(&setup.dead_letter_topic, 1).await;
        for d in delays {
            setup
                .stack
                .create_topic(&format!("{}.{d}", setup.retry_prefix), 3)
                .await;
        }
        setup
    }

    /// The configuration as YAML (also usable as a `SUBSTRATE_CONFIG` file for the binary).
    pub fn yaml(&self) -> String {
        format!(
            "dispatcher:\n  listen: 127.0.0.1:0\n  group_id: {group}\n  requests_topic: {requests}\n  dead_letter_topic: {dlq}\n  avro_dir: {avro}\n  endpoint_refresh_secs: 1\n{max_in_flight}  retry:\n    topic_prefix: {prefix}\n    delays: [{delays}]\n  http:\n    timeout_ms: {timeout}\n    connect_timeout_ms: 2000\n    per_endpoint_concurrency: 64\n{queue}    allow_private_targets: {private}\n  archive:\n    max_records: 1000\n    max_bytes: 4194304\n    max_wait_ms: 200\n{connections}",
            group = self.group,
            requests = self.requests_topic,
            dlq = self.dead_letter_topic,
            avro = repo_root().join("avro").display(),
            prefix = self.retry_prefix,
            delays = self.delays.join(", "),
            timeout = self.timeout_ms,
            private = self.allow_private,
            max_in_flight = self
                .max_in_flight
                .map(|n| format!("  max_in_flight: {n}\n"))
                .unwrap_or_default(),
            queue = self
                .per_endpoint_queue
                .map(|n| format!("    per_endpoint_queue: {n}\n"))
                .unwrap_or_default(),
            connections = self.stack.connections_yaml(&self.stack.s3.endpoint),
        )
    }

    /// Runs the dispatcher in this process until the returned handle is stopped.
    pub async fn start(&self) -> Running {
        self.start_with(&self.yaml()).await
    }

    /// Runs the dispatcher configured by `yaml` (a variant of [`Setup::yaml`]).
    pub async fn start_with(&self, yaml: &str) -> Running {
        let config: dispatcher::Config =
            substrate_runtime::config::load_config_from(dispatcher::config::DEFAULTS, yaml)
                .unwrap();
        InProcess::start(|listener, shutdown| dispatcher::serve(config, listener, shutdown)).await
    }

    pub fn producer(&self) -> FutureProducer {
        self.stack.kafka().producer_config().create().unwrap()
    }

    /// Produces a request for `action` on a purchase event; returns its request id.
    pub async fn send(&self, producer: &FutureProducer, action: Value, payload: Value) -> Request {
        let request = Request::new(action, payload);
        self.send_request(producer, &request).await;
        request
    }

    /// Sends the request's rule as it is: its secret is not sealed by [`Setup::seal`] (the test
    /// stored something of its own, or nothing).
    pub fn mark_sealed(&self, request: &Request) {
        self.sealed.lock().unwrap().insert(request.rule_id);
    }

    /// Seals the secret of the request's (full) action, once per rule, as version 1, action 0
    /// of its rule; requests that carry their secrets inline are left alone.
    pub async fn seal(&self, request: &Request) {
        if request.inline || self.sealed.lock().unwrap().contains(&request.rule_id) {
            return;
        }
        let action: substrate_rules::Action =
            serde_json::from_value(request.action.clone()).expect("a full action");
        if let (_, Some(secret)) = action.split() {
            let aad = substrate_secrets::action_aad(&request.rule_id, 1, 0);
            let row = substrate_db::secrets::ActionSecretRow {
                rule_id: request.rule_id,
                rule_version: 1,
                action_index: 0,
                sealed: self.stack.keyring().seal(&secret.to_bytes(), &aad),
            };
            let db = self.stack.db().await;
            substrate_db::secrets::insert(&db, &[row]).await.unwrap();
        }
        self.sealed.lock().unwrap().insert(request.rule_id);
    }

    /// Produces many requests concurrently (in chunks), in the order given per key; returns
    /// where each landed (partition, offset), in the order of `requests`.
    pub async fn send_many(
        &self,
        producer: &FutureProducer,
        requests: &[Request],
    ) -> Vec<(i32, i64)> {
        let catalog = substrate_avro::Catalog::load(&repo_root().join("avro")).unwrap();
        let schema = catalog.get("internal.dispatch.requests").unwrap().clone();
        let registry = self.stack.registry();
        let mut positions = Vec::with_capacity(requests.len());
        for request in requests {
            self.seal(request).await;
        }
        for chunk in requests.chunks(500) {
            let mut encoded = Vec::with_capacity(chunk.len());
            for request in chunk {
                let value = registry
                    .encode(
                        "internal.dispatch.requests",
                        request_avro_with(&schema, request),
                    )
                    .await
                    .unwrap();
                encoded.push((request, value));
            }
            let sends = encoded.iter().map(|(request, value)| {
                let id = request.request_id.to_string();
                async move {
                    let headers = OwnedHeaders::new().insert(Header {
                        key: "ce_id",
                        value: Some(id.as_str()),
                    });
                    let delivery = producer
                        .send(
                            FutureRecord::<str, [u8]>::to(&self.requests_topic)
                                .key(&request.event_id)
                                .payload(value)
                                .headers(headers),
                            Duration::from_secs(10),
                        )
                        .await
                        .map_err(|(e, _)| e)
                        .unwrap();
                    (delivery.partition, delivery.offset)
                }
            });
            positions.extend(futures::future::join_all(sends).await);
        }
        positions
    }

    pub async fn send_request(&self, producer: &FutureProducer, request: &Request) {
        self.seal(request).await;
        let value = self
            .stack
            .registry()
            .encode("internal.dispatch.requests", request_avro(request))
            .await
            .unwrap();
        let id = request.request_id.to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: "ce_id",
            value: Some(id.as_str()),
        });
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&self.requests_topic)
                    .key(&request.event_id)
                    .payload(&value)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
}

/// A topic and one of its partitions.
pub type Partition = (String, i32);

/// One record of a topic: where it is and its `ce_id` header (the request id).
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: Partition,
    pub offset: i64,
    pub ce_id: Option<String>,
    /// Create time (ms since the epoch).
    pub timestamp_ms: Option<i64>,
}

/// Read-only views of this test's topics and of the dispatcher group's committed offsets, from
/// a client that never joins the group (so the dispatcher's assignment is not disturbed).
impl Setup {
    fn client(&self, group: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.stack.bootstrap_servers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .create()
            .expect("kafka client")
    }

    /// What the dispatcher's group committed per partition of `topics` (OffsetFetch only): the
    /// offset a restarted dispatcher resumes at; 0 where nothing was committed (it then reads
    /// from the start, `auto.offset.reset: earliest`).
    pub async fn committed(&self, topics: &[String]) -> HashMap<Partition, i64> {
        let client = self.client(&self.group);
        let topics = topics.to_vec();
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(10);
            let mut list = TopicPartitionList::new();
            for topic in &topics {
                for partition in partitions(&client, topic) {
                    list.add_partition(topic, partition);
                }
            }
            let committed = client
                .committed_offsets(list, timeout)
                .expect("committed offsets");
            committed
                .elements()
                .iter()
                .map(|e| {
                    let offset = match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    };
                    ((e.topic().to_string(), e.partition()), offset)
                })
                .collect()
        })
        .await
        .unwrap()
    }

    /// The end (high watermark) of every partition of `topics`.
    pub async fn end_offsets(&self, topics: &[String]) -> HashMap<Partition, i64> {
        let client = self.client(&unique("test-ends"));
        let topics = topics.to_vec();
        tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(10);
            let mut ends = HashMap::new();
            for topic in &topics {
                for partition in partitions(&client, topic) {
                    let (_, high) = client
                        .fetch_watermarks(topic, partition, timeout)
                        .expect("watermarks");
                    ends.insert((topic.clone(), partition), high);
                }
            }
            ends
        })
        .await
        .unwrap()
    }

    /// Every record now in `topic` (all partitions, up to their current ends).
    pub async fn records(&self, topic: &str) -> Vec<Record> {
        let ends = self.end_offsets(&[topic.to_string()]).await;
        let client = self.client(&unique("test-read"));
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let mut list = TopicPartitionList::new();
            for ((_, partition), _) in ends.iter().filter(|(_, end)| **end > 0) {
                list.add_partition_offset(&topic, *partition, Offset::Beginning)
                    .unwrap();
            }
            let mut records = Vec::new();
            if list.count() == 0 {
                return records;
            }
            client.assign(&list).expect("assign");
            let mut remaining: HashMap<i32, i64> = ends
                .iter()
                .filter(|(_, end)| **end > 0)
                .map(|((_, p), end)| (*p, *end))
                .collect();
            let deadline = Instant::now() + Duration::from_secs(30);
            while !remaining.is_empty() {
                assert!(Instant::now() < deadline, "reading {topic} timed out");
                let Some(message) = client.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let message = message.expect("consume");
                let ce_id = message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == "ce_id")
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                });
                records.push(Record {
                    partition: (topic.clone(), message.partition()),
                    offset: message.offset(),
                    ce_id,
                    timestamp_ms: message.timestamp().to_millis(),
                });
                if remaining
                    .get(&message.partition())
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    remaining.remove(&message.partition());
                }
            }
            records
        })
        .await
        .unwrap()
    }
}

fn partitions(client: &BaseConsumer, topic: &str) -> Vec<i32> {
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect()
}

fn request_avro(request: &Request) -> apache_avro::types::Value {
    let catalog = substrate_avro::Catalog::load(&repo_root().join("avro")).unwrap();
    request_avro_with(catalog.get("internal.dispatch.requests").unwrap(), request)
}

fn request_avro_with(
    schema: &substrate_avro::TopicSchema,
    request: &Request,
) -> apache_avro::types::Value {
    schema
        .to_avro(&json!({
            "request_id": request.request_id.to_string(),
            "event_id": request.event_id,
            "event_type": "commerce.purchase",
            "event_time": chrono::Utc::now().timestamp_millis(),
            "source_topic": "public.commerce.purchase.events",
            "rule_id": request.rule_id.to_string(),
            "rule_name": "test-rule",
            "rule_version": 1,
            "action_index": 0,
            "action": request.wire_action().to_string(),
            "payload": request.payload.to_string(),
            "traceparent": null,
        }))
        .unwrap()
}

#[derive(Debug, Clone)]
pub struct Request {
    pub request_id: Uuid,
    pub event_id: String,
    /// The same for every request of one action (its secret is sealed once).
    pub rule_id: Uuid,
    /// The full action, secrets included (what an operator saves).
    pub action: Value,
    pub payload: Value,
    /// Send the full action, as records written before secrets were sealed did.
    pub inline: bool,
}

impl Request {
    pub fn new(action: Value, payload: Value) -> Self {
        Self {
            request_id: Uuid::new_v4(),
            event_id: Uuid::now_v7().to_string(),
            rule_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, action.to_string().as_bytes()),
            action,
            payload,
            inline: false,
        }
    }

    /// The action as the record carries it: the public part (or the full action, `inline`).
    pub fn wire_action(&self) -> Value {
        if self.inline {
            return self.action.clone();
        }
        let action: substrate_rules::Action =
            serde_json::from_value(self.action.clone()).expect("a full action");
        serde_json::to_value(action.split().0).unwrap()
    }
}

pub fn purchase(segment: &str, amount: f64) -> Value {
    json!({
        "event_id": Uuid::now_v7(), "event_time": chrono::Utc::now().timestamp_millis(),
        "user": {"id": Uuid::new_v4(), "email": "buyer@example.com", "segment": segment, "country": null},
        "purchase": {"id": "o-1", "amount": amount, "currency": "EUR", "items": 2, "tags": [], "coupon": null}
    })
}

pub type Running = InProcess;

/// `dispatch_attempts` rows of a request: (attempt, outcome, status).
pub async fn audit_rows(
    db: &tokio_postgres::Client,
    request: &Uuid,
) -> Vec<(i32, String, Option<i32>)> {
    substrate_db::dispatch::attempts_of(db, *request)
        .await
        .unwrap()
}
