//! The gateway's edge against the real stack: API keys per source (create, use, wrong kind of
//! credential, rotation with overlap, revocation on a running gateway), rate limits with
//! `RateLimit-*` headers and 429 + `Retry-After`, CORS with preflight, and `Idempotency-Key`
//! replays across gateway instances, with the broker's own watermarks showing nothing new was
//! produced.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use substrate_testkit::{eventually, repo_root, unique, Stack};
use uuid::Uuid;

use crate::harness::{http, post_json, TestGateway};

/// Topics of this test's own (one partition each) with the message and purchase schemas,
/// behind routes `msg` (jwt) and `buy` (api_key) plus whatever `extra` adds to `msg`.
struct Edge {
    dir: PathBuf,
    msg_topic: String,
    buy_topic: String,
}

impl Edge {
    async fn new(stack: &Stack, msg_extra: &str) -> Self {
        let name = unique("edge").replace('-', "");
        let dir = std::env::temp_dir().join(&name);
        let avro = dir.join("avro/test/edge");
        std::fs::create_dir_all(&avro).unwrap();
        let mut topics = Vec::new();
        for (kind, schema) in [
            ("msg", "avro/public/user/message.events.avsc"),
            ("buy", "avro/public/commerce/purchase.events.avsc"),
        ] {
            let text = std::fs::read_to_string(repo_root().join(schema)).unwrap();
            std::fs::write(avro.join(format!("{name}{kind}.avsc")), &text).unwrap();
            let topic = format!("test.edge.{name}{kind}");
            stack.create_topic(&topic, 1).await;
            stack.registry().register(&topic, &text).await.unwrap();
            topics.push(topic);
        }
        let edge = Self {
            dir,
            msg_topic: topics[0].clone(),
            buy_topic: topics[1].clone(),
        };
        std::fs::write(
            edge.routes_file(),
            format!(
                "routes:\n  msg:\n    topic: {}\n    event_type: test.message\n    auth: jwt\n    \
                 key_field: sender_id\n    enrich: {{sender_id: sub, sender_email: email}}\n{msg_extra}\
                 \n  buy:\n    topic: {}\n    event_type: test.purchase\n    auth: api_key\n",
                edge.msg_topic, edge.buy_topic
            ),
        )
        .unwrap();
        edge
    }

    fn routes_file(&self) -> PathBuf {
        self.dir.join("routes.yaml")
    }

    /// The gateway settings these tests share (plus `extra`).
    fn overlay(&self, stack: &Stack, extra: &str) -> String {
        let base = format!(
            "gateway:\n  avro_dir: {}\napi_keys:\n  pepper: {}\n  refresh_secs: 1\n",
            self.dir.join("avro").display(),
            stack.api_key_pepper
        );
        crate::harness::merge_yaml(&base, extra)
    }

    async fn gateway(&self, stack: &Stack, extra: &str) -> TestGateway {
        TestGateway::start(stack, &self.routes_file(), &self.overlay(stack, extra)).await
    }
}

/// Records stored in a one-partition topic, from the broker's watermarks.
fn records(stack: &Stack, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &stack.bootstrap_servers)
        .create()
        .unwrap();
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap();
    high - low
}

fn purchase() -> Value {
    json!({
        "user": {"id": Uuid::new_v4(), "email": "buyer@example.com", "segment": "VIP"},
        "purchase": {"id": unique("order"), "amount": 12.5, "currency": "EUR", "items": 1}
    })
}

async fn post_with(
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = http().post(url).json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn api_keys_per_source_rotate_and_revoke() {
    let stack = Stack::load();
    let edge = Edge::new(&stack, "").await;
    let gw = edge.gateway(&stack, "").await;
    let buy = format!("{}/api/v1/events/buy", gw.url);
    let msg = format!("{}/api/v1/events/msg", gw.url);
    let source = unique("shop");
    let key = stack.api_key(&source, &["buy"]).await;
    stack.wait_for_key(&gw.url, "buy", &key).await;

    // Both ways of presenting the key work; only a salted hash of it is stored.
    let (status, _, body) = post_with(&buy, &[("x-api-key", &key)], &purchase()).await;
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = post_json(&buy, Some(&key), &purchase()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(records(&stack, &edge.buy_topic), 2);
    let id = substrate_db::api_keys::parse_id(&key).unwrap().to_string();
    let db = stack.db().await;
    let stored: String = db
        .query_one(
            "SELECT row_to_json(k)::text FROM substrate_private.api_keys k WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    let secret = key.rsplit('_').next().unwrap();
    assert!(
        !stored.contains(secret),
        "the key's secret is not stored: {stored}"
    );

    // The wrong kind of credential is named, with the expected one.
    let user = stack.token(Uuid::new_v4(), "u@example.com");
    let (status, _, body) = post_json(&buy, Some(&user), &purchase()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "wrong_credential");
    assert_eq!(body["error"]["expected"], "api_key");
    let message = json!({"message": "hi", "visibility": "broadcast"});
    let (status, _, body) = post_with(&msg, &[("x-api-key", &key)], &message).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["expected"], "jwt");
    let (status, _, body) = post_json(&buy, None, &purchase()).await;
    assert_eq!(
        (status, body["error"]["expected"].clone()),
        (401, json!("api_key"))
    );
    // A key that is not this one, or not for this route.
    let mut forged = key.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'a' { 'b' } else { 'a' });
    let (status, _, body) = post_with(&buy, &[("x-api-key", &forged)], &purchase()).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    let other = stack.api_key(&source, &["elsewhere"]).await;
    let refused = eventually(Duration::from_secs(10), "the other key loaded", || async {
        let (status, _, body) = post_with(&buy, &[("x-api-key", &other)], &purchase()).await;
        (status == 403).then_some(body)
    })
    .await
    .unwrap();
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&source));
    assert_eq!(
        records(&stack, &edge.buy_topic),
        2,
        "refused posts produced nothing"
    );

    // Rotation: the new key works, the old one too until its overlap ends, then not.
    let mut client = stack.db().await;
    let overlap = Duration::from_secs(4);
    let rotated_at = Instant::now();
    let new =
        substrate_db::api_keys::rotate(&mut client, stack.api_key_pepper.as_bytes(), &id, overlap)
            .await
            .unwrap();
    stack.wait_for_key(&gw.url, "buy", &new.key).await;
    let (status, _, _) = post_with(&buy, &[("x-api-key", &key)], &purchase()).await;
    assert!(rotated_at.elapsed() < overlap, "checked within the overlap");
    assert_eq!(status, 202, "the old key works during the overlap");
    eventually(Duration::from_secs(15), "the old key expires", || async {
        let (status, _, _) = post_with(&buy, &[("x-api-key", &key)], &purchase()).await;
        (status == 401).then_some(())
    })
    .await
    .unwrap();
    assert!(
        rotated_at.elapsed() >= overlap,
        "not before the overlap ended"
    );
    let (status, _, body) = post_with(&buy, &[("x-api-key", &new.key)], &purchase()).await;
    assert_eq!(status, 202, "{body}");

    // Revocation reaches the running gateway within seconds.
    substrate_db::api_keys::revoke(&client, &new.id)
        .await
        .unwrap();
    let revoked_at = Instant::now();
    eventually(
        Duration::from_secs(10),
        "the revoked key refused",
        || async {
            let (status, _, _) = post_with(&buy, &[("x-api-key", &new.key)], &purchase()).await;
            (status == 401).then_some(())
        },
    )
    .await
    .unwrap();
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(5), "revocation took {took:?}");
    gw.stop().await;
}

#[tokio::test]
async fn rate_limits_per_principal_and_route() {
    let stack = Stack::load();
    // Each user: 3 at once, then 1/s. The route: 5 at once, then one per 10 s.
    let edge = Edge::new(
        &stack,
        "    rate_limit:\n      principal: {per_second: 1, burst: 3}\n      route: {per_minute: 6, burst: 5}\n",
    )
    .await;
    let gw = edge.gateway(&stack, "").await;
    let url = format!("{}/api/v1/events/msg", gw.url);
    let message = json!({"message": "m", "visibility": "broadcast"});
    let alice = stack.token(Uuid::new_v4(), "alice@example.com");
    for remaining in ["2", "1", "0"] {
        let (status, headers, body) = post_json(&url, Some(&alice), &message).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(headers["ratelimit-limit"], "3");
        assert_eq!(headers["ratelimit-remaining"], remaining);
        assert_eq!(headers["ratelimit-policy"], "1;w=1;burst=3");
    }
    let (status, headers, body) = post_json(&url, Some(&alice), &message).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("for you"));
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert_eq!(retry_after, 1);
    assert_eq!(headers["ratelimit-remaining"], "0");
    // After Retry-After the user's bucket has room again.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, _, body) = post_json(&url, Some(&alice), &message).await;
    assert_eq!(status, 202, "{body}");

    // Bob has a bucket of his own and takes the route's last event; Carol finds it spent.
    let bob = stack.token(Uuid::new_v4(), "bob@example.com");
    let (status, headers, _) = post_json(&url, Some(&bob), &message).await;
    assert_eq!(status, 202);
    assert_eq!(
        headers["ratelimit-remaining"], "0",
        "the route's bucket is the tighter one"
    );
    let carol = stack.token(Uuid::new_v4(), "carol@example.com");
    let (status, _, body) = post_json(&url, Some(&carol), &message).await;
    assert_eq!(status, 429, "the route allows 5 in a burst: {body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("this route"));
    // A batch counts every event; one larger than any burst can never pass.
    let batch = json!([message, message, message, message]);
    let (status, _, body) = post_json(&format!("{url}/batch"), Some(&bob), &batch).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("send smaller batches"));
    assert_eq!(
        records(&stack, &edge.msg_topic),
        5,
        "refused events were not produced"
    );
    gw.stop().await;
}

#[tokio::test]
async fn cors_answers_preflight_for_configured_origins_only() {
    let stack = Stack::load();
    let edge = Edge::new(&stack, "").await;
    let app = "https://app.example.com";
    let gw = edge
        .gateway(
            &stack,
            &format!(
                "gateway:\n  cors:\n    allowed_origins: ['{app}']\n    allow_credentials: true\n"
            ),
        )
        .await;
    let url = format!("{}/api/v1/events/msg", gw.url);
    let preflight = |origin: &'static str| {
        http()
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key",
            )
            .send()
    };
    let answer = preflight(app).await.unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    let headers = answer.headers();
    assert_eq!(headers["access-control-allow-origin"], app);
    assert_eq!(headers["access-control-allow-credentials"], "true");
    let allowed = headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    for header in [
        "authorization",
        "content-type",
        "idempotency-key",
        "x-api-key",
    ] {
        assert!(allowed.contains(header), "{allowed}");
    }
    assert!(headers["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());

    // The actual request carries the CORS headers and exposes the rate-limit ones.
    let token = stack.token(Uuid::new_v4(), "cors@example.com");
    let response = http()
        .post(&url)
        .header("origin", app)
        .bearer_auth(&token)
        .json(&json!({"message": "from the browser", "visibility": "broadcast"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["access-control-allow-origin"], app);
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(exposed.contains("retry-after") && exposed.contains("ratelimit-remaining"));
    gw.stop().await;

    // Credentials are never allowed with the wildcard origin: the configuration is refused.
    let wildcard = "gateway:\n  cors:\n    allowed_origins: ['*']\n    allow_credentials: true\n";
    let merged = edge.overlay(&stack, wildcard);
    let error = substrate_runtime::config::load_config_from::<gateway::Config>(
        gateway::config::DEFAULTS,
        &format!("{merged}\nauth:\n  jwt_secret: {}\n", stack.jwt_secret),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("gateway.cors.allow_credentials"), "{error}");
}

fn key_header(key: &str) -> [(&'static str, &str); 1] {
    [("idempotency-key", key)]
}

async fn post_idem(
    url: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let auth = format!("Bearer {token}");
    let [(name, value)] = key_header(key);
    post_with(url, &[(name, value), ("authorization", &auth)], body).await
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_answer_across_instances() {
    let stack = Stack::load();
    let edge = Edge::new(&stack, "").await;
    let first = edge.gateway(&stack, "").await;
    let second = edge.gateway(&stack, "").await;
    let url = |gw: &TestGateway| format!("{}/api/v1/events/msg", gw.url);
    let user = Uuid::new_v4();
    let token = stack.token(user, "idem@example.com");
    let body = json!({"message": "pay once", "visibility": "broadcast"});
    let key = unique("idem");

    let (status, headers, answer) = post_idem(&url(&first), &token, &key, &body).await;
    assert_eq!(status, 202, "{answer}");
    assert!(headers.get("idempotent-replayed").is_none());
    let event_id = answer["event_id"].clone();
    // The same request again, on this instance and on another: the first answer, nothing new.
    for gw in [&first, &second] {
        let (status, headers, again) = post_idem(&url(gw), &token, &key, &body).await;
        assert_eq!((status, again["event_id"].clone()), (202, event_id.clone()));
        assert_eq!(headers["idempotent-replayed"], "true");
    }
    assert_eq!(records(&stack, &edge.msg_topic), 1);
    // The same key with another body is refused; another user's key of the same name is theirs.
    let other_body = json!({"message": "pay twice", "visibility": "broadcast"});
    let (status, _, refused) = post_idem(&url(&second), &token, &key, &other_body).await;
    assert_eq!(
        (status, refused["error"]["code"].clone()),
        (422, json!("idempotency_key_reused"))
    );
    let someone = stack.token(Uuid::new_v4(), "else@example.com");
    let (status, _, theirs) = post_idem(&url(&second), &someone, &key, &body).await;
    assert_eq!(status, 202);
    assert_ne!(theirs["event_id"], event_id);
    assert_eq!(records(&stack, &edge.msg_topic), 2);

    // Batches replay their per-item results, including the refused item.
    let batch = json!([body, {"message": 5}]);
    let batch_key = unique("idem-batch");
    let (status, _, answer) = post_idem(
        &format!("{}/batch", url(&first)),
        &token,
        &batch_key,
        &batch,
    )
    .await;
    assert_eq!(
        (status, answer["accepted"].clone()),
        (200, json!(1)),
        "{answer}"
    );
    let (_, headers, again) = post_idem(
        &format!("{}/batch", url(&second)),
        &token,
        &batch_key,
        &batch,
    )
    .await;
    assert_eq!(again, answer);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(records(&stack, &edge.msg_topic), 3);

    // A broker outage answers 503 and releases the claim: the retry elsewhere produces once,
    // with the event id chosen on the first attempt.
    let down = edge
        .gateway(
            &stack,
            "kafka:\n  bootstrap_servers: 127.0.0.1:1\n  message_timeout_ms: 2000\n",
        )
        .await;
    let outage_key = unique("idem-outage");
    let (status, _, answer) = post_idem(&url(&down), &token, &outage_key, &body).await;
    assert_eq!(status, 503, "{answer}");
    let db = stack.db().await;
    let claimed: Vec<Uuid> = db
        .query_one(
            "SELECT event_ids FROM substrate_private.idempotency_keys WHERE principal = $1 AND key = $2",
            &[&format!("user:{user}"), &outage_key],
        )
        .await
        .unwrap()
        .get(0);
    let (status, _, answer) = post_idem(&url(&second), &token, &outage_key, &body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["event_id"], json!(claimed[0]));
    assert_eq!(records(&stack, &edge.msg_topic), 4);
    down.shutdown.cancel();
    let _ = down.handle.await;
    first.stop().await;
    second.stop().await;

    // After the retention window the key is free again.
    let short = edge
        .gateway(&stack, "gateway:\n  idempotency_retention_secs: 1\n")
        .await;
    let fresh = eventually(Duration::from_secs(10), "the key expired", || async {
        let (status, _, again) = post_idem(&url(&short), &token, &key, &other_body).await;
        (status == 202).then_some(again)
    })
    .await
    .unwrap();
    assert_ne!(fresh["event_id"], event_id);
    short.stop().await;
}

#[tokio::test]
async fn anonymous_routes_are_limited_per_client_address() {
    let stack = Stack::load();
    let edge = Edge::new(&stack, "").await;
    // A schema without identity fields, behind an `auth: none` route.
    let topic = format!("{}ping", edge.msg_topic);
    let schema = r#"{"type": "record", "name": "Ping", "namespace": "test.edge",
        "fields": [{"name": "event_id", "type": "string"}, {"name": "note", "type": "string"}]}"#;
    let file = topic.trim_start_matches("test.edge.");
    std::fs::write(edge.dir.join(format!("avro/test/edge/{file}.avsc")), schema).unwrap();
    stack.create_topic(&topic, 1).await;
    stack.registry().register(&topic, schema).await.unwrap();
    let routes = edge.dir.join("ping-routes.yaml");
    std::fs::write(
        &routes,
        format!(
            "routes:\n  ping:\n    topic: {topic}\n    event_type: test.ping\n    auth: none\n    \
             rate_limit:\n      principal: {{per_minute: 1, burst: 2}}\n"
        ),
    )
    .unwrap();
    let gw = TestGateway::start(&stack, &routes, &edge.overlay(&stack, "")).await;
    let url = format!("{}/api/v1/events/ping", gw.url);
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let post = |client: reqwest::Client| {
        let url = url.clone();
        async move {
            client
                .post(&url)
                .json(&json!({"note": "hello"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let (first, second) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]));
    assert_eq!(post(first.clone()).await, 202);
    assert_eq!(post(first.clone()).await, 202);
    assert_eq!(
        post(first.clone()).await,
        429,
        "this address spent its burst"
    );
    assert_eq!(
        post(second.clone()).await,
        202,
        "another address has its own"
    );
    assert_eq!(records(&stack, &topic), 3);
    gw.stop().await;
}
