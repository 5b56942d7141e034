//! The read side against the real stack: the notification stream delivers every row exactly
//! once in commit order while two writers commit concurrently and the client drops and resumes
//! at random points; visibility follows the RLS policy; a slow client is cut off and resumes;
//! one instance holds 1,000 streams; pages, read marks and stream tickets.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};
use substrate_db::feed::Cursor;
use substrate_db::notifications::{insert_batch, NewNotification, Visibility};
use substrate_testkit::{eventually, metric, repo_root, unique, Stack};
use uuid::Uuid;

use crate::harness::{http, post_json, SseEvent, SseReader, TestGateway};

async fn gateway(stack: &Stack, extra: &str) -> TestGateway {
    let overlay = format!("notifications:\n  poll_ms: 100\n{extra}");
    TestGateway::start(stack, &repo_root().join("routes.yaml"), &overlay).await
}

/// Opens a stream with the user's token, from `after` (or the present).
async fn open(gw: &TestGateway, token: &str, after: Option<&str>) -> SseReader {
    let mut request = http()
        .get(format!("{}/api/v1/notifications/stream", gw.url))
        .bearer_auth(token);
    if let Some(after) = after {
        request = request.header("last-event-id", after);
    }
    let response = request
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "an event stream"
    );
    SseReader::new(response)
}

fn row_of(event: &SseEvent) -> Value {
    assert_eq!(event.event.as_deref(), Some("notification"));
    let row: Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(
        row["cursor"].as_str(),
        event.id.as_deref(),
        "the id is the cursor"
    );
    row
}

fn direct(to: Uuid, from: Uuid, marker: &str, n: usize) -> NewNotification {
    NewNotification {
        event_id: Uuid::new_v4(),
        event_type: "test.feed".into(),
        payload: json!({"marker": marker, "n": n}),
        visibility: Visibility::Direct,
        recipient_id: Some(to),
        sender_id: Some(from),
        created_at: chrono::Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_row_exactly_once_in_commit_order_across_concurrent_writers_and_resumes() {
    let stack = Stack::load();
    let gw = gateway(&stack, "").await;
    let user = Uuid::new_v4();
    let token = stack.token(user, "reader@example.com");
    let marker = unique("feed");
    const PER_WRITER: usize = 5_000;

    // The stream is subscribed once its headers arrive; it starts at the present.
    let mut stream = open(&gw, &token, None).await;

    // Two writers on connections of their own: transactions of 1–50 rows held open 0–15 ms,
    // so ids (taken at insert) and commit order disagree.
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (stack, marker) = (stack.clone(), marker.clone());
            tokio::spawn(async move {
                let mut db = stack.db().await;
                let mut written = Vec::new();
                while written.len() < PER_WRITER {
                    let (size, hold) = {
                        let mut rng = rand::rng();
                        (rng.random_range(1..=50usize), rng.random_range(0..15u64))
                    };
                    let size = size.min(PER_WRITER - written.len());
                    let rows: Vec<_> = (0..size)
                        .map(|i| {
                            direct(
                                user,
                                Uuid::new_v4(),
                                &marker,
                                w * PER_WRITER + written.len() + i,
                            )
                        })
                        .collect();
                    let tx = db.transaction().await.unwrap();
                    assert_eq!(insert_batch(&tx, &rows).await.unwrap(), size as u64);
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    tx.commit().await.unwrap();
                    written.extend(rows.iter().map(|r| r.event_id));
                }
                written
            })
        })
        .collect();

    // The client reads, drops the connection at random points and resumes from its last id.
    let mut seen: Vec<(Cursor, i64, Uuid)> = Vec::new();
    let mut ours = 0usize;
    let mut last_id: Option<String> = None;
    let mut reconnects = 0;
    let mut until_drop = rand::rng().random_range(1..1500);
    let started = Instant::now();
    while ours < 2 * PER_WRITER {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "only {ours} of {} rows arrived",
            2 * PER_WRITER
        );
        let Some(event) = stream.next(Duration::from_secs(10)).await else {
            // The server ended the stream (or it stalled): resume.
            stream = open(&gw, &token, last_id.as_deref()).await;
            reconnects += 1;
            continue;
        };
        let row = row_of(&event);
        let cursor: Cursor = row["cursor"].as_str().unwrap().parse().unwrap();
        if row["payload"]["marker"] == marker.as_str() {
            ours += 1;
            seen.push((
                cursor,
                row["id"].as_i64().unwrap(),
                row["event_id"].as_str().unwrap().parse().unwrap(),
            ));
        }
        if let Some(previous) = &last_id {
            let previous: Cursor = previous.parse().unwrap();
            assert!(
                cursor > previous,
                "{cursor} after {previous}: cursors only grow"
            );
        }
        last_id = event.id.clone();
        until_drop -= 1;
        if until_drop == 0 {
            assert!(last_id.is_some());
            drop(stream);
            stream = open(&gw, &token, last_id.as_deref()).await;
            reconnects += 1;
            until_drop = rand::rng().random_range(1..1500);
        }
    }
    let mut written = HashSet::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    let delivered: Vec<Uuid> = seen.iter().map(|s| s.2).collect();
    let unique_delivered: HashSet<Uuid> = delivered.iter().copied().collect();
    assert_eq!(unique_delivered.len(), delivered.len(), "no row twice");
    assert_eq!(unique_delivered, written, "every row written arrived");
    assert!(reconnects >= 3, "the client resumed {reconnects} times");
    // The hazard was real: some row with a smaller id committed after a larger one was handed
    // out, so ordering by id would have skipped it on a resume.
    let inversions = seen.windows(2).filter(|w| w[1].1 < w[0].1).count();
    assert!(
        inversions > 0,
        "the writers' commits never overtook each other"
    );
    // Nothing more arrives: a stream resumed at the end is quiet for our marker.
    let mut tail = open(&gw, &token, last_id.as_deref()).await;
    while let Some(event) = tail.next(Duration::from_millis(500)).await {
        assert_ne!(
            row_of(&event)["payload"]["marker"],
            marker.as_str(),
            "a duplicate"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn direct_rows_reach_only_their_sender_and_recipient() {
    let stack = Stack::load();
    let gw = gateway(&stack, "").await;
    let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let tokens: Vec<String> = [a, b, c]
        .iter()
        .map(|u| stack.token(*u, &format!("{u}@example.com")))
        .collect();
    // C follows with a ticket, as a browser's EventSource does (no headers).
    let ticket: Value = http()
        .post(format!("{}/api/v1/notifications/ticket", gw.url))
        .bearer_auth(&tokens[2])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = ticket["ticket"].as_str().unwrap();
    assert!(!ticket.contains(&tokens[2]), "the ticket is not the token");
    let response = http()
        .get(format!(
            "{}/api/v1/notifications/stream?ticket={ticket}",
            gw.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut streams = [
        open(&gw, &tokens[0], None).await,
        open(&gw, &tokens[1], None).await,
        SseReader::new(response),
    ];
    let bad = http()
        .get(format!("{}/api/v1/notifications/stream?ticket=x.y", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);

    let url = format!("{}/api/v1/events/message", gw.url);
    let secret = unique("for-b-only");
    let (status, _, body) = post_json(
        &url,
        Some(&tokens[0]),
        &json!({"message": secret, "visibility": "direct", "recipient_id": b}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let fence = unique("everyone");
    let (status, _, _) = post_json(
        &url,
        Some(&tokens[0]),
        &json!({"message": fence, "visibility": "broadcast"}),
    )
    .await;
    assert_eq!(status, 202);

    // Each reads until the broadcast fence; only A and B saw the direct message before it.
    let mut saw_direct = Vec::new();
    for stream in streams.iter_mut() {
        let mut direct = false;
        loop {
            let event = stream
                .next(Duration::from_secs(30))
                .await
                .expect("the broadcast arrives");
            let row = row_of(&event);
            let message = row["payload"]["message"].as_str().unwrap_or_default();
            if message == secret {
                direct = true;
            }
            if message == fence {
                break;
            }
        }
        saw_direct.push(direct);
    }
    assert_eq!(saw_direct, vec![true, true, false]);

    // Pages follow the same rule; read marks count down.
    let page = |token: &str| {
        let token = token.to_string();
        let url = format!(
            "{}/api/v1/notifications?limit=20&before=18446744073709551615-0",
            gw.url
        );
        async move {
            let page: Value = http()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            page
        }
    };
    let messages = |page: &Value| -> Vec<String> {
        page["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["payload"]["message"].as_str().map(String::from))
            .collect()
    };
    assert!(messages(&page(&tokens[1]).await).contains(&secret));
    assert!(!messages(&page(&tokens[2]).await).contains(&secret));
    let newest = page(&tokens[1]).await["notifications"][0]["cursor"]
        .as_str()
        .unwrap()
        .to_string();
    let answer: Value = http()
        .post(format!("{}/api/v1/notifications/read", gw.url))
        .bearer_auth(&tokens[1])
        .json(&json!({"up_to": newest}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["read_up_to"], newest.as_str());
    assert_eq!(answer["unread"], 0, "{answer}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off_and_resumes_without_a_gap() {
    let stack = Stack::load();
    let gw = gateway(&stack, "  client_buffer: 16\n").await;
    let user = Uuid::new_v4();
    let token = stack.token(user, "slow@example.com");
    let marker = unique("slow");
    let mut stream = open(&gw, &token, None).await;
    // Enough rows to fill the socket buffers and the client's queue while nobody reads.
    let db = stack.db().await;
    let mut written = HashSet::new();
    for chunk in 0..20 {
        let rows: Vec<_> = (0..1000)
            .map(|i| direct(user, Uuid::new_v4(), &marker, chunk * 1000 + i))
            .collect();
        insert_batch(&db, &rows).await.unwrap();
        written.extend(rows.iter().map(|r| r.event_id));
    }
    let series = "gateway_notification_stream_ends_total{reason=\"slow_client\"}";
    eventually(
        Duration::from_secs(30),
        "the slow client cut off",
        || async {
            (metric(&format!("{}/metrics", gw.ops_url), series).await? >= 1.0).then_some(())
        },
    )
    .await
    .unwrap();
    // It reads what reached it, then resumes from its last id.
    let mut seen = HashSet::new();
    let mut last = None;
    let mut resumed = 0;
    while seen.len() < written.len() {
        match stream.next(Duration::from_secs(5)).await {
            Some(event) => {
                let row = row_of(&event);
                if row["payload"]["marker"] == marker.as_str() {
                    assert!(
                        seen.insert(row["event_id"].as_str().unwrap().to_string()),
                        "no row twice"
                    );
                }
                last = event.id;
            }
            None => {
                assert!(
                    resumed < 10,
                    "resumed {resumed} times, {} rows seen",
                    seen.len()
                );
                stream = open(&gw, &token, last.as_deref()).await;
                resumed += 1;
            }
        }
    }
    assert!(resumed >= 1);
    assert_eq!(seen.len(), written.len());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_instance_holds_a_thousand_streams() {
    let stack = Stack::load();
    let gw = gateway(&stack, "").await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let token = stack.token(Uuid::new_v4(), "many@example.com");
    let url = format!("{}/api/v1/notifications/stream", gw.url);
    let opens = (0..1000).map(|_| {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        async move {
            let response = client.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(response.status(), 200);
            SseReader::new(response)
        }
    });
    let mut streams = futures::future::join_all(opens).await;
    let open_gauge = metric(
        &format!("{}/metrics", gw.ops_url),
        "gateway_notification_streams_open",
    )
    .await
    .unwrap_or_default();
    assert!(open_gauge >= 1000.0, "{open_gauge} streams open");
    let fence = unique("to-all");
    let (status, _, _) = post_json(
        &format!("{}/api/v1/events/message", gw.url),
        Some(&token),
        &json!({"message": fence, "visibility": "broadcast"}),
    )
    .await;
    assert_eq!(status, 202);
    let reads = streams.iter_mut().map(|stream| {
        let fence = fence.clone();
        async move {
            loop {
                let Some(event) = stream.next(Duration::from_secs(30)).await else {
                    return false;
                };
                if row_of(&event)["payload"]["message"] == fence.as_str() {
                    return true;
                }
            }
        }
    });
    let got = futures::future::join_all(reads).await;
    assert_eq!(
        got.iter().filter(|g| **g).count(),
        1000,
        "every stream got the broadcast"
    );
    drop(streams);
    gw.stop().await;
}
