//! The gateway's refusals, each with its status and a JSON error: JWT problems (HS256 and
//! JWKS-backed ES256/RS256), unknown routes, invalid fields, oversize and non-JSON bodies, and
//! an unreachable broker (503, never 202). Uses an in-process gateway with a JWKS server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use substrate_testkit::{eventually, repo_root, Stack};
use uuid::Uuid;

use crate::harness::{http, post_json, TestGateway};

const ISSUER: &str = "http://127.0.0.1:54321/auth/v1";

struct Jwks {
    set: Mutex<JwkSet>,
    hits: AtomicUsize,
}

fn key(file: &str, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(repo_root().join("tests/fixtures").join(file)).unwrap();
    match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
        _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
    }
}

fn public_jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    jwk
}

async fn serve_jwks(jwks: Arc<Jwks>) -> String {
    async fn handler(State(jwks): State<Arc<Jwks>>) -> Json<JwkSet> {
        jwks.hits.fetch_add(1, Ordering::SeqCst);
        Json(jwks.set.lock().unwrap().clone())
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/auth/v1/.well-known/jwks.json", get(handler))
        .with_state(jwks);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/auth/v1/.well-known/jwks.json")
}

fn claims(extra: Value) -> Value {
    let now = chrono::Utc::now().timestamp();
    let mut base = json!({
        "sub": Uuid::new_v4(), "email": "t@example.com", "role": "authenticated",
        "aud": "authenticated", "iss": ISSUER, "iat": now, "exp": now + 600
    });
    for (k, v) in extra.as_object().unwrap() {
        base[k] = v.clone();
    }
    base
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    encode(&header, claims, key).unwrap()
}

fn unsigned_token(claims: &Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

async fn auth_gateway(stack: &Stack, jwks_url: &str) -> TestGateway {
    let overlay = format!(
        "auth:\n  jwks_url: {jwks_url}\n  issuer: {ISSUER}\n  audience: authenticated\n  leeway_secs: 30\n  jwks_refresh_min_secs: 1\n"
    );
    TestGateway::start(stack, &repo_root().join("routes.yaml"), &overlay).await
}

#[tokio::test]
async fn jwt_acceptance_and_refusals() {
    let stack = Stack::load();
    let ec = key("es256-test-key.pem", Algorithm::ES256);
    let rsa = key("rs256-test-key.pem", Algorithm::RS256);
    let jwks = Arc::new(Jwks {
        set: Mutex::new(JwkSet {
            keys: vec![
                public_jwk(&ec, Algorithm::ES256, "ec-1"),
                public_jwk(&rsa, Algorithm::RS256, "rsa-1"),
            ],
        }),
        hits: AtomicUsize::new(0),
    });
    let jwks_url = serve_jwks(jwks.clone()).await;
    let gw = auth_gateway(&stack, &jwks_url).await;
    let url = format!("{}/api/v1/events/message", gw.url);
    let body = json!({"message": "hi", "visibility": "broadcast"});
    let hs = EncodingKey::from_secret(stack.jwt_secret.as_bytes());
    let now = chrono::Utc::now().timestamp();

    let accepted = [
        (
            "HS256",
            sign(Algorithm::HS256, None, &hs, &claims(json!({}))),
        ),
        (
            "ES256",
            sign(Algorithm::ES256, Some("ec-1"), &ec, &claims(json!({}))),
        ),
        (
            "RS256",
            sign(Algorithm::RS256, Some("rsa-1"), &rsa, &claims(json!({}))),
        ),
        (
            "expired within leeway",
            sign(
                Algorithm::HS256,
                None,
                &hs,
                &claims(json!({"exp": now - 10})),
            ),
        ),
    ];
    for (what, token) in &accepted {
        let (status, _, answer) = post_json(&url, Some(token), &body).await;
        assert_eq!(status, 202, "{what}: {answer}");
        assert!(answer["event_id"].is_string());
    }

    let other_secret = EncodingKey::from_secret(b"another-secret-another-secret-another-secret");
    let refused = [
        ("no token", None, "missing Authorization"),
        (
            "alg none",
            Some(unsigned_token(&claims(json!({})))),
            "algorithm",
        ),
        (
            "expired",
            Some(sign(
                Algorithm::HS256,
                None,
                &hs,
                &claims(json!({"exp": now - 120})),
            )),
            "expired",
        ),
        (
            "not yet valid",
            Some(sign(
                Algorithm::HS256,
                None,
                &hs,
                &claims(json!({"nbf": now + 300})),
            )),
            "nbf",
        ),
        (
            "wrong audience",
            Some(sign(
                Algorithm::HS256,
                None,
                &hs,
                &claims(json!({"aud": "anon-service"})),
            )),
            "audience",
        ),
        (
            "wrong issuer",
            Some(sign(
                Algorithm::HS256,
                None,
                &hs,
                &claims(json!({"iss": "https://evil.example"})),
            )),
            "issuer",
        ),
        (
            "bad signature",
            Some(sign(
                Algorithm::HS256,
                None,
                &other_secret,
                &claims(json!({})),
            )),
            "signature",
        ),
        (
            "unknown kid",
            Some(sign(
                Algorithm::ES256,
                Some("ghost"),
                &ec,
                &claims(json!({})),
            )),
            "unknown signing key",
        ),
        (
            "alg not pinned to key",
            Some(sign(
                Algorithm::RS256,
                Some("ec-1"),
                &rsa,
                &claims(json!({})),
            )),
            "is for ES256",
        ),
        (
            "no sub",
            Some(sign(
                Algorithm::HS256,
                None,
                &hs,
                &json!({"exp": now + 60, "aud": "authenticated", "iss": ISSUER}),
            )),
            "sub",
        ),
        ("garbage", Some("not.a.jwt".to_string()), "malformed"),
    ];
    for (what, token, fragment) in &refused {
        let (status, _, answer) = post_json(&url, token.as_deref(), &body).await;
        assert_eq!(status, 401, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], "unauthorized", "{what}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(fragment),
            "{what}: `{message}` should mention `{fragment}`"
        );
    }

    // A burst of unknown kids refreshes the JWKS at most once per interval.
    let before = jwks.hits.load(Ordering::SeqCst);
    for _ in 0..10 {
        let token = sign(Algorithm::ES256, Some("ghost-2"), &ec, &claims(json!({})));
        assert_eq!(post_json(&url, Some(&token), &body).await.0, 401);
    }
    assert!(
        jwks.hits.load(Ordering::SeqCst) - before <= 1,
        "unknown kids must not hammer the JWKS"
    );

    // Key rotation: a new kid published in the JWKS is picked up after the interval.
    jwks.set
        .lock()
        .unwrap()
        .keys
        .push(public_jwk(&rsa, Algorithm::RS256, "rsa-2"));
    // Tokens with the new kid are refused until the next refresh is allowed, then accepted;
    // however often a client tries, the JWKS is fetched at most once per interval.
    let token = sign(Algorithm::RS256, Some("rsa-2"), &rsa, &claims(json!({})));
    let (rotating, before) = (std::time::Instant::now(), jwks.hits.load(Ordering::SeqCst));
    eventually(
        Duration::from_secs(10),
        "the rotated key accepted",
        || async { (post_json(&url, Some(&token), &body).await.0 == 202).then_some(()) },
    )
    .await
    .unwrap();
    let refreshes = jwks.hits.load(Ordering::SeqCst) - before;
    let intervals = rotating.elapsed().as_secs() + 1;
    assert!(
        refreshes as u64 <= intervals,
        "{refreshes} JWKS fetches in {:?} (at most one per second)",
        rotating.elapsed()
    );

    gw.stop().await;
}

#[tokio::test]
async fn request_refusals_name_the_problem() {
    let stack = Stack::load();
    let gw = TestGateway::start(&stack, &repo_root().join("routes.yaml"), "").await;
    let token = stack.token_with(json!({"sub": Uuid::new_v4(), "email": "r@example.com"}));
    let url = format!("{}/api/v1/events/message", gw.url);

    let (status, _, body) = post_json(
        &format!("{}/api/v1/events/nope", gw.url),
        Some(&token),
        &json!({}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_route");

    let (status, _, body) = post_json(
        &url,
        Some(&token),
        &json!({"message": "x", "visibility": "loud"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "visibility");
    let (status, _, body) =
        post_json(&url, Some(&token), &json!({"visibility": "broadcast"})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "message");
    let (status, _, body) = post_json(
        &url,
        Some(&token),
        &json!({"message": "x", "visibility": "broadcast", "extra": 1}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["field"], "extra");

    let response = http()
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "text/plain")
        .body("message=hi")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    let response = http()
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_json"
    );

    // 64 KiB per event, declared length.
    let big = "x".repeat(70 * 1024);
    let (status, _, body) = post_json(
        &url,
        Some(&token),
        &json!({"message": big, "visibility": "broadcast"}),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");

    // A chunked body with no declared length is cut off at the limit.
    let chunk = bytes_chunk();
    let stream =
        futures::stream::iter((0..40).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let response = http()
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // 1 MiB per batch.
    let events: Vec<Value> = (0..20)
        .map(|_| json!({"message": "y".repeat(60 * 1024), "visibility": "broadcast"}))
        .collect();
    let (status, _, _) = post_json(&format!("{url}/batch"), Some(&token), &json!(events)).await;
    assert_eq!(status, 413);

    gw.stop().await;
}

fn bytes_chunk() -> Vec<u8> {
    vec![b' '; 4096]
}

#[tokio::test]
async fn unreachable_broker_answers_503_never_202() {
    let stack = Stack::load();
    // A message timeout far longer than the answer may take: once the broker is known to be
    // unreachable, the gateway answers at once instead of waiting it out.
    let overlay = "kafka:\n  bootstrap_servers: 127.0.0.1:1\n  message_timeout_ms: 20000\ngateway:\n  retry_after_secs: 7\n";
    let gw = TestGateway::start(&stack, &repo_root().join("routes.yaml"), overlay).await;
    let token = stack.token(Uuid::new_v4(), "down@example.com");
    let url = format!("{}/api/v1/events/message", gw.url);

    let ready = http()
        .get(format!("{}/readyz", gw.ops_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["kafka"]["status"], "unavailable");
    assert_eq!(ready["checks"]["schema_registry"]["status"], "ok");

    let started = std::time::Instant::now();
    let (status, headers, body) = post_json(
        &url,
        Some(&token),
        &json!({"message": "lost?", "visibility": "broadcast"}),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers.get("retry-after").unwrap(), "7");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        took < Duration::from_secs(5),
        "answered after {took:?}, not after the 20 s message timeout"
    );

    // A batch with 503 items carries Retry-After; items refused as bad say so beside them.
    let (status, headers, body) = post_json(
        &format!("{url}/batch"),
        Some(&token),
        &json!([{"message": "lost?", "visibility": "broadcast"}, {"message": 1}]),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["results"][0]["status"], 503, "{body}");
    assert_eq!(body["results"][1]["status"], 400, "{body}");
    assert_eq!(headers.get("retry-after").unwrap(), "7");
    gw.shutdown.cancel();
    let _ = gw.handle.await;
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let stack = Stack::load();
    let gw = TestGateway::start(&stack, &repo_root().join("routes.yaml"), "").await;
    assert_eq!(
        http()
            .get(format!("{}/healthz", gw.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready = http()
        .get(format!("{}/readyz", gw.ops_url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let token = stack.token(Uuid::new_v4(), "m@example.com");
    let url = format!("{}/api/v1/events/message", gw.url);
    assert_eq!(
        post_json(
            &url,
            Some(&token),
            &json!({"message": "m", "visibility": "broadcast"})
        )
        .await
        .0,
        202
    );
    assert_eq!(post_json(&url, None, &json!({})).await.0, 401);
    let metrics = http()
        .get(format!("{}/metrics", gw.ops_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gateway_requests_total{route=\"message\",status=\"202\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_rejected_total{route=\"message\",reason=\"unauthorized\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("substrate_build_info{version="),
        "{metrics}"
    );
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gateway_request_body_bytes_bucket{route=\"message\""),
        "{metrics}"
    );
    assert!(metrics.contains("substrate_kafka_produce_seconds"));
    // The public listener serves the API and liveness, never readiness details or metrics.
    for path in ["/readyz", "/metrics"] {
        let status = http()
            .get(format!("{}{path}", gw.url))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "{path} on the public listener");
    }
    gw.stop().await;
}
