//! An upload saga whose first move fails is still one trace: the client's `traceparent` on the
//! gateway's intent and upload-complete calls, media-saga's steps, the S3 copy that failed, the
//! move timeout firing in the saga's trace, the retry that moved the file, and the
//! notification-writer's rows of the results. The stack's media-saga is replaced for the test by
//! the same binary with a 3 s move timeout whose S3 client goes through a cuttable proxy (the
//! presigned URLs still name the S3 server); the proxy is down while the first move runs.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use substrate_runtime::TraceParent;
use substrate_testkit::traces::{one, wait_for, CLIENT, CONSUMER, SERVER};
use substrate_testkit::{
    eventually, metric, repo_root, stack_setting, workspace_bin, Outage, Stack,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// Stops the stack's media-saga now and starts it again when dropped.
struct Replaced;

impl Replaced {
    fn media_saga() -> Self {
        services("stop-one");
        Self
    }
}

impl Drop for Replaced {
    fn drop(&mut self) {
        services("start-one");
    }
}

fn services(action: &str) {
    let status = Command::new("bash")
        .arg(repo_root().join("scripts/stack/services.sh"))
        .args([action, "media-saga"])
        .current_dir(repo_root())
        .status()
        .expect("run services.sh");
    assert!(
        status.success(),
        "services.sh {action} media-saga: {status}"
    );
}

/// The test's media-saga; killed when dropped.
struct Saga(Child);

impl Drop for Saga {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn notification(
    db: &tokio_postgres::Client,
    user: Uuid,
    event_type: &str,
    request: &str,
) -> Value {
    substrate_testkit::media_notification(db, user, event_type, request, WAIT).await
}

#[tokio::test]
async fn an_upload_whose_first_move_fails_is_one_trace_through_the_retry() {
    let stack = Stack::load();
    let db = stack.db().await;
    let s3_endpoint = stack.s3.endpoint.clone();
    let target = s3_endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("the stack's S3 endpoint is host:port on loopback");
    let proxy = Outage::proxy(target).await;
    let listen =
        stack_setting("SUBSTRATE_MEDIA_SAGA__LISTEN").expect("media-saga's listen address");

    let replaced = Replaced::media_saga();
    let log = repo_root().join(".local/logs/media-saga-retry-trace.log");
    let saga = Saga(
        Command::new(workspace_bin("media-saga"))
            .env("SUBSTRATE_S3__ENDPOINT", format!("http://{}", proxy.addr))
            .env("SUBSTRATE_MEDIA_SAGA__PUBLIC_S3_ENDPOINT", &s3_endpoint)
            .env("SUBSTRATE_MEDIA_SAGA__MOVE_TIMEOUT_MS", "3000")
            .env("SUBSTRATE_MEDIA_SAGA__DEADLINE_POLL_MS", "200")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start media-saga"),
    );
    let metrics = format!("http://{listen}/metrics");
    eventually(
        Duration::from_secs(30),
        "the test's media-saga ready",
        || async {
            reqwest::get(format!("http://{listen}/readyz"))
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        },
    )
    .await
    .unwrap();

    let user = Uuid::new_v4();
    let token = stack.token(user, "traced-upload@example.com");
    let client = TraceParent::new_root();
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let request = http
            .post(format!("{}/api/v1/{path}", stack.gateway_url))
            .bearer_auth(&token)
            .header("traceparent", client.to_string())
            .json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let content: Vec<u8> = (0..4_000u32).map(|i| (i % 241) as u8).collect();
    let (status, body) = post(
        "media/upload-intent",
        json!({"file_name": "traced.png", "media_type": "image/png", "file_size": content.len()}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let request = body["request_id"].as_str().unwrap().to_string();
    let ready = notification(&db, user, "media.upload_ready", &request).await;
    let put = http
        .put(ready["upload_url"].as_str().unwrap())
        .header("content-type", "image/png")
        .body(content)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "PUT {}", put.status());

    // The saga's S3 is unreachable while the first move runs; the gateway's is not.
    let failed_before = metric(&metrics, "media_saga_moves_total{outcome=\"failed\"}")
        .await
        .unwrap_or(0.0);
    proxy.down();
    let (status, body) = post("media/upload-complete", json!({"request_id": request})).await;
    assert_eq!(status, 202, "{body}");
    eventually(Duration::from_secs(30), "the first move failed", || async {
        (metric(&metrics, "media_saga_moves_total{outcome=\"failed\"}").await? > failed_before)
            .then_some(())
    })
    .await
    .unwrap();
    assert!(
        proxy.refused() > 0,
        "the move reached the proxy while it was down"
    );
    proxy.restore();

    // The move timeout's retry moves the file and the saga is confirmed.
    let confirmed = notification(&db, user, "media.upload_confirmed", &request).await;
    assert_eq!(
        confirmed["file_path"],
        format!("files/{user}/{request}/traced.png")
    );
    let retries: i32 = db
        .query_one(
            "SELECT retry_count FROM public.media_sagas WHERE request_id = $1",
            &[&Uuid::parse_str(&request).unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        retries >= 1,
        "confirmed after a retry (retry_count {retries})"
    );

    let trace_id = format!("{:032x}", client.trace_id);
    let spans = wait_for(
        &trace_id,
        &[
            ("gateway", "POST /api/v1/media/upload-intent"),
            ("gateway", "send internal.media.upload.intent"),
            ("gateway", "POST /api/v1/media/upload-complete"),
            ("gateway", "S3.HeadObject"),
            ("gateway", "send internal.media.upload.received"),
            ("media-saga", "process internal.media.upload.intent"),
            ("media-saga", "INSERT media_sagas"),
            ("media-saga", "send public.media.upload.signed"),
            ("media-saga", "process internal.media.upload.received"),
            ("media-saga", "move upload"),
            ("media-saga", "S3.CopyObject"),
            ("media-saga", "fire move_timeout"),
            ("media-saga", "send internal.media.upload.retry"),
            ("media-saga", "process internal.media.upload.retry"),
            ("media-saga", "process internal.media.file.ready"),
            ("media-saga", "INSERT media_files"),
            ("media-saga", "send public.media.upload.confirmed"),
            ("notification-writer", "process public.media.upload.signed"),
            (
                "notification-writer",
                "process public.media.upload.confirmed",
            ),
        ],
        WAIT,
    )
    .await;
    // Both of the client's calls continue its trace.
    for route in [
        "POST /api/v1/media/upload-intent",
        "POST /api/v1/media/upload-complete",
    ] {
        let server = one(&spans, "gateway", route);
        assert_eq!(server.kind, SERVER);
        assert_eq!(server.parent_span_id, format!("{:016x}", client.parent_id));
    }
    // The failed copy says so; a later one succeeded.
    let copies: Vec<_> = spans
        .iter()
        .filter(|s| s.service == "media-saga" && s.name == "S3.CopyObject")
        .collect();
    assert!(copies.iter().any(|s| s.error), "a failed copy: {copies:#?}");
    assert!(
        copies.iter().any(|s| !s.error),
        "a successful copy: {copies:#?}"
    );
    for copy in &copies {
        assert_eq!(copy.kind, CLIENT);
        assert_eq!(copy.attr("rpc.service").as_deref(), Some("S3"));
        assert_eq!(
            copy.attr("aws.s3.key"),
            Some(format!("files/{user}/{request}/traced.png"))
        );
    }
    // The timer fires as the child of the intent's span (stored with the saga), and the retry
    // record is processed as the child of its send.
    let intent = one(&spans, "media-saga", "process internal.media.upload.intent");
    assert_eq!(intent.kind, CONSUMER);
    let fired: Vec<_> = spans
        .iter()
        .filter(|s| s.service == "media-saga" && s.name == "fire move_timeout")
        .collect();
    assert!(
        fired.iter().all(|f| f.parent_span_id == intent.span_id),
        "{fired:#?}"
    );
    let retry_sends: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "send internal.media.upload.retry")
        .collect();
    assert!(retry_sends
        .iter()
        .all(|s| fired.iter().any(|f| f.span_id == s.parent_span_id)));
    let retried = spans
        .iter()
        .filter(|s| s.name == "process internal.media.upload.retry")
        .collect::<Vec<_>>();
    assert!(
        retried
            .iter()
            .all(|r| retry_sends.iter().any(|s| s.span_id == r.parent_span_id)),
        "{retried:#?}"
    );
    drop(saga);
    drop(replaced);
}
