//! The gateway's bounds against slow and excessive clients, on raw TCP: a request head that
//! never completes and a body that arrives too slowly are cut off; requests beyond the cap on
//! requests in progress are shed at once with 503 + `Retry-After` rather than queued.

use std::time::Duration;

use serde_json::json;
use substrate_testkit::{eventually, repo_root, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::harness::{post_json, TestGateway};

/// Sends `head` (and no more) and returns what the server answered before closing, or `None`
/// when it kept the connection open for `wait`.
async fn answer_to(url: &str, head: &str, wait: Duration) -> Option<String> {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    match tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

fn post_head(token: &str, declared_length: usize) -> String {
    format!(
        "POST /api/v1/events/message HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {declared_length}\r\n\r\n{{\"mess"
    )
}

#[tokio::test]
async fn slow_heads_and_slow_bodies_are_cut_off() {
    let stack = Stack::load();
    let overlay =
        "gateway:\n  http:\n    header_read_timeout_ms: 500\n    body_read_timeout_ms: 800\n";
    let gw = TestGateway::start(&stack, &repo_root().join("routes.yaml"), overlay).await;
    let token = stack.token(Uuid::new_v4(), "slow@example.com");

    // A request line and half a header, then nothing: the connection is closed.
    let answer = answer_to(
        &gw.url,
        "POST /api/v1/events/message HTTP/1.1\r\nHost: gate",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        answer.is_some(),
        "a head that never completes does not hold the connection"
    );

    // A complete head and 6 of 100 declared body bytes, then nothing: 408 naming the problem.
    let answer = answer_to(&gw.url, &post_head(&token, 100), Duration::from_secs(10))
        .await
        .expect("the gateway answers a stalled body");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    gw.stop().await;
}

#[tokio::test]
async fn requests_beyond_the_cap_are_shed_with_retry_after() {
    let stack = Stack::load();
    let overlay = "gateway:\n  http:\n    max_concurrent_requests: 2\n    retry_after_secs: 3\n    body_read_timeout_ms: 30000\n";
    let gw = TestGateway::start(&stack, &repo_root().join("routes.yaml"), overlay).await;
    let token = stack.token(Uuid::new_v4(), "many@example.com");
    let url = format!("{}/api/v1/events/message", gw.url);
    let event = json!({"message": "hello", "visibility": "broadcast"});
    assert_eq!(post_json(&url, Some(&token), &event).await.0, 202);

    // Two requests in progress (their bodies still coming) take the two places.
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(post_head(&token, 100).as_bytes())
            .await
            .unwrap();
        held.push(stream);
    }
    // A third is answered at once, not queued.
    let (status, headers, body) = eventually(
        Duration::from_secs(10),
        "a request shed while two are in progress",
        || async {
            let answer = post_json(&url, Some(&token), &event).await;
            (answer.0 == 503).then_some(answer)
        },
    )
    .await
    .unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers.get("retry-after").unwrap(), "3");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");

    // Once they are gone, requests are served again.
    drop(held);
    eventually(
        Duration::from_secs(10),
        "a request served again",
        || async { (post_json(&url, Some(&token), &event).await.0 == 202).then_some(()) },
    )
    .await
    .unwrap();
    gw.stop().await;
}
