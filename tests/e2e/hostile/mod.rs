//! Hostile input at the public doors, as property tests (proptest) against real components: a
//! gateway in this process on the stack's Kafka, registry and PostgreSQL (JWTs, route names, event
//! and batch bodies, API keys, the login webhook, media intents, unknown paths and methods) and a
//! media-saga in this process (its S3 event webhook). Whatever arrives: never a 5xx, every
//! refusal a JSON `{"error": {"code", "message"}}`, the service still serving afterwards; clients
//! that trickle a request head or body are cut off by the listeners' timeouts.
//!
//! Each property runs a bounded number of cases on one shared multi-thread runtime; a failure
//! names the property and proptest's shrunk input. The services are shared by the properties and
//! write only to topics of their own.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::{Config as ProptestConfig, TestCaseResult, TestRunner};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};
use substrate_kafka::media::{Topic as MediaTopic, Topics as MediaTopics};
use substrate_testkit::{repo_root, unique, InProcess, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use uuid::Uuid;

use crate::harness::TestGateway;

mod auth;
mod bodies;
mod paths;
mod slow;
mod strategies;
mod webhooks;

// ---------------------------------------------------------------------------------------------
// The services under test
// ---------------------------------------------------------------------------------------------

/// One runtime for every property: the shared services' tasks and connections live on it.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("test runtime")
    })
}

/// Runs `test` on `cases` inputs of `strategy`; a failure panics with the shrunk input.
fn property<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> TestCaseResult,
) {
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    if let Err(failure) = runner.run(&strategy, test) {
        panic!("property `{name}`: {failure}");
    }
}

const AUDIENCE: &str = "authenticated";
const ES256_KID: &str = "ec-1";
const MEDIA_SECRET: &str = "hostile-media-webhook-secret";

/// The gateway with this file's routes (`message`: JWT, `purchase`: API key) on topics of its
/// own, JWKS-backed ES256 besides HS256, an API key, the login webhook and media intents.
struct Edge {
    stack: Stack,
    gateway: TestGateway,
    /// `host:port` of the gateway.
    addr: String,
    api_key: String,
    es256: EncodingKey,
}

fn edge() -> &'static Edge {
    static EDGE: OnceLock<Edge> = OnceLock::new();
    EDGE.get_or_init(|| runtime().block_on(Edge::start()))
}

impl Edge {
    async fn start() -> Self {
        let stack = Stack::load();
        let name = unique("hostile").replace('.', "");
        let dir = std::env::temp_dir().join(&name);
        let avro = dir.join("avro");
        std::fs::create_dir_all(avro.join("test/hostile")).unwrap();
        let mut topics = Vec::new();
        for (kind, schema) in [
            ("msg", "avro/public/user/message.events.avsc"),
            ("buy", "avro/public/commerce/purchase.events.avsc"),
            ("login", "avro/public/identity/login.events.avsc"),
        ] {
            let text = std::fs::read_to_string(repo_root().join(schema)).unwrap();
            std::fs::write(avro.join(format!("test/hostile/{name}{kind}.avsc")), &text).unwrap();
            let topic = format!("test.hostile.{name}{kind}");
            stack.create_topic(&topic, 1).await;
            stack.registry().register(&topic, &text).await.unwrap();
            topics.push(topic);
        }
        // Media intents go to topics of this test (the media schemas under their own names).
        let media_prefix = format!("test.{name}.");
        let media_topics = MediaTopics::new(media_prefix.clone());
        let catalog = substrate_avro::Catalog::load(&repo_root().join("avro")).unwrap();
        for topic in [
            MediaTopic::UploadIntent,
            MediaTopic::DownloadIntent,
            MediaTopic::DeleteIntent,
            MediaTopic::UploadReceived,
        ] {
            let schema = catalog.get(topic.name()).unwrap();
            let relative = schema.path.strip_prefix(repo_root().join("avro")).unwrap();
            let path = avro.join(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &schema.text).unwrap();
            let prefixed = media_topics.name(topic);
            stack.create_topic(&prefixed, 1).await;
            stack
                .registry()
                .register(&prefixed, &schema.text)
                .await
                .unwrap();
        }
        let routes = dir.join("routes.yaml");
        std::fs::write(
            &routes,
            format!(
                "routes:\n  message:\n    topic: {}\n    event_type: test.message\n    auth: jwt\n    \
                 key_field: sender_id\n    enrich: {{sender_id: sub, sender_email: email}}\n    \
                 require:\n      - field: recipient_id\n        when: {{visibility: direct}}\n  \
                 purchase:\n    topic: {}\n    event_type: test.purchase\n    auth: api_key\n",
                topics[0], topics[1]
            ),
        )
        .unwrap();
        let es256 = EncodingKey::from_ec_pem(
            &std::fs::read(repo_root().join("tests/fixtures/es256-test-key.pem")).unwrap(),
        )
        .unwrap();
        let mut jwk = Jwk::from_encoding_key(&es256, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(ES256_KID.into());
        let jwks_url = serve_jwks(JwkSet { keys: vec![jwk] }).await;
        let s3 = &stack.s3;
        let overlay = format!(
            "gateway:\n  avro_dir: {avro}\n\
             api_keys:\n  pepper: {pepper}\n  refresh_secs: 1\n\
             auth:\n  audience: {AUDIENCE}\n  jwks_url: {jwks_url}\n  jwks_refresh_min_secs: 1\n\
             webhooks:\n  login_topic: {login}\n\
             media:\n  topic_prefix: \"{media_prefix}\"\n\
             s3:\n  endpoint: {s3e}\n  region: {s3r}\n  access_key_id: {s3a}\n  secret_access_key: {s3s}\n",
            avro = avro.display(),
            pepper = stack.api_key_pepper,
            login = topics[2],
            s3e = s3.endpoint,
            s3r = s3.region,
            s3a = s3.access_key_id,
            s3s = s3.secret_access_key,
        );
        let gateway = TestGateway::start(&stack, &routes, &overlay).await;
        let api_key = stack.api_key(&unique("hostile"), &["purchase"]).await;
        stack.wait_for_key(&gateway.url, "purchase", &api_key).await;
        Self {
            addr: gateway.url.trim_start_matches("http://").to_string(),
            stack,
            gateway,
            api_key,
            es256,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url)
    }

    /// An HS256 token of the stack's secret with `claims` as they are (nothing added).
    fn hs256(&self, claims: &Value) -> String {
        let key = EncodingKey::from_secret(self.stack.jwt_secret.as_bytes());
        jsonwebtoken::encode(&Header::default(), claims, &key).unwrap()
    }

    /// A token the gateway accepts, for a new user.
    fn token(&self) -> String {
        self.hs256(&good_claims())
    }

    /// The gateway still serves: a valid event is stored (202).
    async fn alive(&self) {
        assert!(!self.gateway.handle.is_finished(), "the gateway stopped");
        let answer = http()
            .post(self.url("/api/v1/events/message"))
            .bearer_auth(self.token())
            .json(&json!({"message": "still here", "visibility": "broadcast"}))
            .send()
            .await
            .expect("the gateway answers");
        assert_eq!(answer.status(), 202, "{:?}", answer.text().await);
    }
}

fn good_claims() -> Value {
    let now = chrono::Utc::now().timestamp();
    json!({"sub": Uuid::new_v4(), "email": "hostile@example.com", "role": "authenticated",
           "aud": AUDIENCE, "iat": now, "exp": now + 3600})
}

async fn serve_jwks(set: JwkSet) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let set = set.clone();
            async move { axum::Json(set) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/jwks.json")
}

/// A media-saga with topics and a consumer group of its own, its webhook secret, and listener
/// timeouts short enough to watch slow clients being cut off.
struct Saga {
    service: InProcess,
    addr: String,
}

const SAGA_HEAD_TIMEOUT: Duration = Duration::from_millis(1000);
const SAGA_BODY_TIMEOUT: Duration = Duration::from_millis(1500);

fn saga() -> &'static Saga {
    static SAGA: OnceLock<Saga> = OnceLock::new();
    SAGA.get_or_init(|| runtime().block_on(Saga::start()))
}

impl Saga {
    async fn start() -> Self {
        let stack = Stack::load();
        let id = unique("hostile").replace('.', "");
        let prefix = format!("test.{id}.");
        let catalog = substrate_avro::Catalog::load(&repo_root().join("avro")).unwrap();
        let topics = MediaTopics::new(prefix.clone());
        for topic in MediaTopic::ALL {
            let name = topics.name(topic);
            stack.create_topic(&name, 1).await;
            let schema = catalog.get(topic.name()).unwrap();
            stack
                .registry()
                .register(&name, &schema.text)
                .await
                .unwrap();
        }
        stack
            .create_topic(&format!("{prefix}{}", media_saga::DEAD_LETTER_TOPIC), 1)
            .await;
        let yaml = format!(
            "media_saga:\n  listen: 127.0.0.1:0\n  group_id: test-{id}\n  topic_prefix: \"{prefix}\"\n  \
             avro_dir: {avro}\n  bucket: {bucket}\n  public_s3_endpoint: {s3}\n  uploads_lifecycle_days: 0\n  \
             webhook_secret: {MEDIA_SECRET}\n  http:\n    header_read_timeout_ms: {head}\n    \
             body_read_timeout_ms: {body}\n{connections}",
            avro = repo_root().join("avro").display(),
            bucket = std::env::var("S3_MEDIA_BUCKET").unwrap_or_else(|_| "media-uploads".into()),
            s3 = stack.s3.endpoint,
            head = SAGA_HEAD_TIMEOUT.as_millis(),
            body = SAGA_BODY_TIMEOUT.as_millis(),
            connections = stack.connections_yaml(&stack.s3.endpoint),
        );
        let config: media_saga::Config =
            substrate_runtime::config::load_config_from(media_saga::config::DEFAULTS, &yaml)
                .expect("media-saga test config");
        let service =
            InProcess::start(|listener, shutdown| media_saga::serve(config, listener, shutdown))
                .await;
        let saga = Self {
            addr: service.addr.to_string(),
            service,
        };
        // Serving once `/healthz` answers (it binds before it starts accepting).
        let started = Instant::now();
        while http().get(saga.url("/healthz")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "media-saga did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        saga
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.service.url())
    }

    /// media-saga still serves: an event about another bucket is read and ignored (200).
    async fn alive(&self) {
        let event = json!({"Records": [{"eventName": "s3:ObjectCreated:Put",
            "s3": {"bucket": {"name": "elsewhere"}, "object": {"key": "uploads/x", "size": 1}}}]});
        let answer = http()
            .post(self.url("/webhooks/media-upload"))
            .bearer_auth(MEDIA_SECRET)
            .json(&event)
            .send()
            .await
            .expect("media-saga answers");
        assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    }
}

// ---------------------------------------------------------------------------------------------
// Answers and what every answer must be
// ---------------------------------------------------------------------------------------------

fn http() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap()
        })
        .clone()
}

/// Bytes that print as (lossy, shortened) text in proptest's failure reports.
#[derive(Clone, PartialEq)]
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = String::from_utf8_lossy(&self.0);
        let shown: String = text.chars().take(300).collect();
        write!(f, "{} bytes: {shown:?}", self.0.len())?;
        if shown.len() < text.len() {
            write!(f, "…")?;
        }
        Ok(())
    }
}

impl From<String> for Bytes {
    fn from(text: String) -> Self {
        Self(text.into_bytes())
    }
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} {}",
            self.status,
            self.headers.get("content-type"),
            String::from_utf8_lossy(&self.body)
        )
    }
}

async fn send(request: reqwest::RequestBuilder) -> Result<Answer, TestCaseError> {
    let response = request
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer (a panic or a hang?): {e:?}")))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|e| TestCaseError::fail(format!("the answer was cut short: {e}")))?
        .to_vec();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// What every answer must be: one of `allowed`, never a 5xx, JSON, and a refusal in the shape
/// `{"error": {"code": <string>, "message": <string>}}`. Returns the JSON body.
fn check(answer: &Answer, allowed: &[u16]) -> Result<Value, TestCaseError> {
    prop_assert!(answer.status < 500, "a server error: {answer:?}");
    prop_assert!(
        allowed.contains(&answer.status),
        "expected one of {allowed:?}: {answer:?}"
    );
    let content_type = answer
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    prop_assert!(
        content_type.starts_with("application/json"),
        "not JSON: {answer:?}"
    );
    let body: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| TestCaseError::fail(format!("the body is not JSON ({e}): {answer:?}")))?;
    if !(200..300).contains(&answer.status) {
        prop_assert!(
            body["error"]["code"].is_string() && body["error"]["message"].is_string(),
            "not an error of the documented shape: {answer:?}"
        );
    }
    Ok(body)
}

/// A refusal that left the request's body unread says the connection closes (else the client's
/// next request on it would get no answer).
fn closes(answer: &Answer) -> Result<(), TestCaseError> {
    let connection = answer
        .headers
        .get("connection")
        .and_then(|v| v.to_str().ok());
    prop_assert_eq!(connection, Some("close"), "{:?}", answer);
    Ok(())
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// Sends raw bytes on a fresh connection (`Connection: close`) and reads the whole answer: for
/// request targets and headers a client library would normalize or refuse.
async fn raw(addr: &str, request: &[u8]) -> Result<Answer, TestCaseError> {
    let fail = |what: String| TestCaseError::fail(what);
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| fail(format!("connect: {e}")))?;
    stream
        .write_all(request)
        .await
        .map_err(|e| fail(format!("write: {e}")))?;
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut bytes))
        .await
        .map_err(|_| fail("no answer within 15 s".into()))?
        .map_err(|e| fail(format!("read: {e}")))?;
    parse_answer(&bytes).ok_or_else(|| fail(format!("no HTTP answer: {:?}", Bytes(bytes))))
}

/// Posts `body` as a careful client does with a large body: `Expect: 100-continue`, and the
/// body only once the server asks for it. A server that refuses at the head (a declared length
/// over its limit) answers at once, where a client that sends everything would still be
/// writing into a connection the server has closed.
async fn post_expecting(
    addr: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> Result<Answer, TestCaseError> {
    let fail = |what: String| TestCaseError::fail(what);
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: edge\r\n{headers}Content-Length: {}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(head.as_bytes()).await?;
        let mut received = Vec::new();
        let mut buf = [0u8; 8192];
        let end = loop {
            let n = stream.read(&mut buf).await?;
            received.extend_from_slice(&buf[..n]);
            match received.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => break end,
                None if n == 0 => return Ok(received),
                None => {}
            }
        };
        if received.starts_with(b"HTTP/1.1 100") {
            received.drain(..end + 4);
            stream.write_all(body).await?;
        }
        stream.read_to_end(&mut received).await?;
        Ok::<_, std::io::Error>(received)
    };
    let received = tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .map_err(|_| fail("no answer within 15 s".into()))?
        .map_err(|e| fail(format!("exchange: {e}")))?;
    parse_answer(&received).ok_or_else(|| fail(format!("no HTTP answer: {:?}", Bytes(received))))
}

fn parse_answer(bytes: &[u8]) -> Option<Answer> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
            HeaderValue::from_str(value.trim()).ok()?,
        );
    }
    let mut body = bytes[end + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        let mut rest = &body[..];
        let mut decoded = Vec::new();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?.trim(), 16)
                    .ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = decoded;
    }
    Some(Answer {
        status,
        headers,
        body,
    })
}
