//! A dispatcher with its own topics against the local stack, local HTTP receivers whose answers
//! the test controls, and helpers to produce dispatch requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
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
            "dispatcher:\n  listen: 127.0.0.1:0\n  group_id: {group}\n  requests_topic: {requests}\n  dead_letter_topic: {dlq}\n  avro_dir: {avro}\n  endpoint_refresh_secs: 1\n  retry:\n    topic_prefix: {prefix}\n    delays: [{delays}]\n  http:\n    timeout_ms: {timeout}\n    connect_timeout_ms: 2000\n    per_endpoint_concurrency: 64\n    allow_private_targets: {private}\n  archive:\n    max_records: 1000\n    max_bytes: 4194304\n    max_wait_ms: 200\n{connections}",
            group = self.group,
            requests = self.requests_topic,
            dlq = self.dead_letter_topic,
            avro = repo_root().join("avro").display(),
            prefix = self.retry_prefix,
            delays = self.delays.join(", "),
            timeout = self.timeout_ms,
            private = self.allow_private,
            connections = self.stack.connections_yaml(&self.stack.s3.endpoint),
        )
    }

    /// Runs the dispatcher in this process until the returned handle is stopped.
    pub async fn start(&self) -> Running {
        let config: dispatcher::Config =
            substrate_runtime::config::load_config_from(dispatcher::config::DEFAULTS, &self.yaml())
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

    /// Produces many requests concurrently (in chunks), in the order given per key.
    pub async fn send_many(&self, producer: &FutureProducer, requests: &[Request]) {
        let catalog = substrate_avro::Catalog::load(&repo_root().join("avro")).unwrap();
        let schema = catalog.get("internal.dispatch.requests").unwrap().clone();
        let registry = self.stack.registry();
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
                    producer
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
                }
            });
            futures::future::join_all(sends).await;
        }
    }

    pub async fn send_request(&self, producer: &FutureProducer, request: &Request) {
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
            "action": request.action.to_string(),
            "payload": request.payload.to_string(),
            "traceparent": null,
        }))
        .unwrap()
}

#[derive(Debug, Clone)]
pub struct Request {
    pub request_id: Uuid,
    pub event_id: String,
    pub rule_id: Uuid,
    pub action: Value,
    pub payload: Value,
}

impl Request {
    pub fn new(action: Value, payload: Value) -> Self {
        Self {
            request_id: Uuid::new_v4(),
            event_id: Uuid::now_v7().to_string(),
            rule_id: Uuid::new_v4(),
            action,
            payload,
        }
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
