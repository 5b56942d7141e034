//! The gateway binary against the local stack: on SIGTERM it stops accepting, finishes the
//! requests in flight, flushes the producer and exits 0, and every event it answered 202 for is
//! in Kafka.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use substrate_testkit::{repo_root, unique, Stack};
use uuid::Uuid;

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_loses_no_accepted_event() {
    let stack = Stack::load();
    // A topic of this test's own, with the message schema, behind a route of its own.
    let name = format!("sigterm{}", &Uuid::new_v4().simple().to_string()[..10]);
    let topic = format!("test.gateway.{name}");
    let dir = std::env::temp_dir().join(unique("gateway-sigterm"));
    let avro = dir.join("avro/test/gateway");
    std::fs::create_dir_all(&avro).unwrap();
    let schema =
        std::fs::read_to_string(repo_root().join("avro/public/user/message.events.avsc")).unwrap();
    std::fs::write(avro.join(format!("{name}.avsc")), &schema).unwrap();
    stack.create_topic(&topic, 3).await;
    stack.registry().register(&topic, &schema).await.unwrap();
    std::fs::write(
        dir.join("routes.yaml"),
        format!("routes:\n  drain:\n    topic: {topic}\n    event_type: test.drain\n    auth: jwt\n    key_field: sender_id\n    enrich:\n      sender_id: sub\n      sender_email: email\n"),
    )
    .unwrap();
    let free_port = || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (port, ops_port) = (free_port(), free_port());
    std::fs::write(
        dir.join("gateway.yaml"),
        format!(
            "gateway:\n  listen: 127.0.0.1:{port}\n  ops_listen: 127.0.0.1:{ops_port}\n  routes_file: {routes}\n  avro_dir: {avro}\n\
             kafka:\n  bootstrap_servers: {kafka}\n\
             schema_registry:\n  url: {registry}\n\
             auth:\n  jwt_secret: {secret}\n",
            routes = dir.join("routes.yaml").display(),
            avro = dir.join("avro").display(),
            kafka = stack.bootstrap_servers,
            registry = stack.registry_url,
            secret = stack.jwt_secret,
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("SUBSTRATE_CONFIG", dir.join("gateway.yaml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("gateway.log")).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client
        .get(format!("http://127.0.0.1:{ops_port}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "gateway did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 32 clients post in a loop; SIGTERM lands in the middle.
    let token = stack.token_with(serde_json::json!({"sub": Uuid::new_v4()}));
    let url = format!("{base}/api/v1/events/drain");
    let stop_at = Instant::now() + Duration::from_secs(3);
    let mut workers = Vec::new();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..32 {
        let (client, url, token) = (reqwest::Client::new(), url.clone(), token.clone());
        let progress = progress.clone();
        workers.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            let mut failed = 0u32;
            while Instant::now() < stop_at {
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"message": "drain", "visibility": "broadcast"}))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status() == 202 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        accepted.push(body["event_id"].as_str().unwrap().to_string());
                        progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(r) => panic!("unexpected status {} during shutdown", r.status()),
                    Err(_) => {
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (accepted, failed)
        }));
    }
    // SIGTERM once the clients are being served, so it lands in the middle of the load.
    while progress.load(std::sync::atomic::Ordering::SeqCst) < 200 {
        assert!(Instant::now() < stop_at, "no load before the deadline");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());

    let mut accepted = HashSet::new();
    let mut refused = 0;
    for worker in workers {
        let (ids, failed) = worker.await.unwrap();
        accepted.extend(ids);
        refused += failed;
    }
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "gateway exit status after SIGTERM: {exit}");
    assert!(
        !accepted.is_empty(),
        "some events were accepted before SIGTERM"
    );
    assert!(refused > 0, "requests after SIGTERM are refused");

    // Every 202 is in the topic.
    let consumer = stack.consumer(&topic);
    let mut seen = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !accepted.is_subset(&seen) {
        assert!(
            Instant::now() < deadline,
            "{} of {} accepted events found",
            seen.len(),
            accepted.len()
        );
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await
        {
            if let Some(id) = message
                .headers()
                .and_then(|h| substrate_kafka::headers::header_str(h, "ce_id"))
            {
                seen.insert(id.to_string());
            }
        }
    }
    consumer.unsubscribe();
    let _ = std::fs::remove_dir_all(dir);
}
