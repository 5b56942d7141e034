//! Clients that trickle a request head or body, on the gateway and on media-saga.

use super::*;

// ---------------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------------

/// Sends `head`, then `dribble` one byte every 100 ms; returns what the server answered once it
/// closed the connection, and when. `None` if it kept the connection for `wait`.
pub(super) async fn trickle(
    addr: &str,
    head: &[u8],
    dribble: &[u8],
    wait: Duration,
) -> Option<(String, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    let mut answer = Vec::new();
    let mut next = dribble.iter().cycle();
    let mut buf = [0u8; 4096];
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed() < wait {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some((String::from_utf8_lossy(&answer).into_owned(), started.elapsed())),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            _ = ticker.tick() => {
                if stream.write_all(&[*next.next().unwrap()]).await.is_err() {
                    // Closed: read what came before.
                    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut answer)).await;
                    return Some((String::from_utf8_lossy(&answer).into_owned(), started.elapsed()));
                }
            }
        }
    }
    None
}

/// A client that keeps sending, a byte every 100 ms, is still cut off: the head and body
/// timeouts bound the whole head and the whole body, not the gap between bytes. (Clients that
/// stop sending are covered for the gateway in `gateway_limits`.)
#[test]
pub(super) fn trickling_clients_are_cut_off() {
    let saga = saga();
    runtime().block_on(async {
        let stack = Stack::load();
        let overlay =
            "gateway:\n  http:\n    header_read_timeout_ms: 500\n    body_read_timeout_ms: 800\n";
        let gateway = TestGateway::start(&stack, &repo_root().join("routes.yaml"), overlay).await;
        let token = stack.token(Uuid::new_v4(), "slow@example.com");
        let gateway_addr = gateway.url.trim_start_matches("http://").to_string();
        let cases = [
            (
                "gateway",
                gateway_addr.as_str(),
                "/api/v1/events/message",
                format!("Bearer {token}"),
                Duration::from_millis(500),
                Duration::from_millis(800),
            ),
            (
                "media-saga",
                saga.addr.as_str(),
                "/webhooks/media-upload",
                format!("Bearer {MEDIA_SECRET}"),
                SAGA_HEAD_TIMEOUT,
                SAGA_BODY_TIMEOUT,
            ),
        ];
        for (service, addr, path, authorization, head_timeout, body_timeout) in cases {
            // The request line, then a header that never ends.
            let head = format!("POST {path} HTTP/1.1\r\nHost: slow\r\nX-Slow: ");
            let (_, took) = trickle(addr, head.as_bytes(), b"abcdefgh", Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("{service}: a trickled head held the connection"));
            assert!(took >= head_timeout, "{service}: cut off after {took:?}");

            // A complete head, then a body that never ends.
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: slow\r\nAuthorization: {authorization}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"a\":\""
            );
            let (answer, took) = trickle(addr, head.as_bytes(), b"x", Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("{service}: a trickled body held the connection"));
            assert!(answer.starts_with("HTTP/1.1 408"), "{service}: {answer}");
            assert!(
                answer.contains(r#""code":"body_timeout""#),
                "{service}: {answer}"
            );
            assert!(took >= body_timeout, "{service}: cut off after {took:?}");
        }
        gateway.stop().await;
        saga.alive().await;
    });
}
