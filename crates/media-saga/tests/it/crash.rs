//! The media-saga binary SIGKILLed at random points while 200 uploads run concurrently: every
//! saga still ends in exactly one terminal state and every user's ledger sums to their balance.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use media_saga::emit::Topic;
use rand::Rng;
use substrate_testkit::workspace_bin;
use uuid::Uuid;

use crate::harness::{bytes, put, s3_event, Setup, SECRET};

const USERS: usize = 40;
const PER_USER: usize = 5;
const CREDITS: i32 = 4;

struct Saga {
    child: Child,
    url: String,
}

fn spawn(config: &std::path::Path, port: u16) -> Saga {
    let mut command = Command::new(workspace_bin("media-saga"));
    // Only this test's configuration file: the stack's SUBSTRATE_* settings would override it.
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("SUBSTRATE_")) {
        command.env_remove(key);
    }
    let child = command
        .env("SUBSTRATE_CONFIG", config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start media-saga");
    Saga {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_200_concurrent_uploads_leaves_one_terminal_state_each() {
    let mut setup = Setup::new().await;
    setup.starting_credits = CREDITS;
    setup.move_timeout_ms = 3000;
    setup.max_move_retries = 10;
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("media-saga-crash-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(&config, setup.yaml(&format!("127.0.0.1:{port}"))).unwrap();

    let out = Arc::new(setup.collect());
    let producer = setup.producer();
    let db = setup.stack.db().await;
    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::new_v4()).collect();
    let mut saga = spawn(&config, port);

    // 200 intents at once: each user asks for one more upload than they have credits for.
    let mut requests = Vec::new();
    for round in 0..PER_USER {
        for user in &users {
            let request = Uuid::now_v7();
            setup
                .intent_with_id(&producer, request, *user, &format!("f{round}.png"), 512)
                .await;
            requests.push((request, *user));
        }
    }

    // Clients: PUT each signed URL once and report the arrival (retrying while the saga is down).
    let client_out = out.clone();
    let bucket = setup.bucket.clone();
    let url = saga.url.clone();
    let clients = tokio::spawn(async move {
        let mut done = HashSet::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(240) {
            let signed = client_out.all(Topic::UploadSigned);
            let pending: Vec<_> = signed
                .into_iter()
                .filter(|s| !done.contains(s["request_id"].as_str().unwrap()))
                .collect();
            for s in pending {
                let request = s["request_id"].as_str().unwrap().to_string();
                let path = s["file_path"].as_str().unwrap().to_string();
                let status = put(
                    s["upload_url"].as_str().unwrap(),
                    bytes(512, 1),
                    "image/png",
                )
                .await;
                assert!(status.is_success(), "PUT {status}");
                let event = s3_event(&bucket, &path, 512);
                loop {
                    let answer = reqwest::Client::new()
                        .post(format!("{url}/webhooks/media-upload"))
                        .bearer_auth(SECRET)
                        .json(&event)
                        .timeout(Duration::from_secs(5))
                        .send()
                        .await;
                    match answer {
                        Ok(r) if r.status().is_success() => break,
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                done.insert(request);
            }
            if done.len() == USERS * CREDITS as usize {
                return done.len();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        done.len()
    });

    // Three SIGKILLs at random points, each followed by a restart.
    for _ in 0..3 {
        let pause = rand::rng().random_range(300..1500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        saga.child.kill().expect("SIGKILL");
        saga.child.wait().unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        saga = spawn(&config, port);
    }

    let reported = clients.await.unwrap();
    assert_eq!(
        reported,
        USERS * CREDITS as usize,
        "every approved upload was put and reported"
    );

    // Every saga reaches a terminal state.
    let ids: Vec<Uuid> = requests.iter().map(|(r, _)| *r).collect();
    let states =
        substrate_testkit::eventually(Duration::from_secs(120), "terminal states", || async {
            let rows = db
                .query(
                    "SELECT request_id, state FROM public.media_sagas WHERE request_id = ANY($1)",
                    &[&ids],
                )
                .await
                .unwrap();
            let states: HashMap<Uuid, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            (states.len() == ids.len()
                && states.values().all(|s| s == "confirmed" || s == "rejected"))
            .then_some(states)
        })
        .await
        .unwrap();
    let confirmed = states.values().filter(|s| *s == "confirmed").count();
    let rejected = states.values().filter(|s| *s == "rejected").count();
    assert_eq!(confirmed, USERS * CREDITS as usize);
    assert_eq!(rejected, USERS * (PER_USER - CREDITS as usize));

    // The topics agree: one confirmation or one rejection per request, never both.
    substrate_testkit::eventually(Duration::from_secs(30), "results on the topics", || async {
        let done: HashSet<String> = out
            .all(Topic::UploadConfirmed)
            .iter()
            .chain(out.all(Topic::UploadRejected).iter())
            .map(|v| v["request_id"].as_str().unwrap().to_string())
            .collect();
        (done.len() == ids.len()).then_some(())
    })
    .await
    .unwrap();
    for (request, _) in &requests {
        let c = !out.of(Topic::UploadConfirmed, *request).is_empty();
        let r = !out.of(Topic::UploadRejected, *request).is_empty();
        assert!(c ^ r, "{request}: confirmed {c}, rejected {r}");
        let ids: HashSet<String> = out
            .ids(Topic::UploadConfirmed, *request)
            .into_iter()
            .chain(out.ids(Topic::UploadRejected, *request))
            .collect();
        assert_eq!(ids.len(), 1, "repeated results keep their event id");
    }

    // Ledgers: one charge per confirmed upload, no refunds, balance = ledger sum = 0.
    let files: i64 = db
        .query_one(
            "SELECT count(*) FROM public.media_files WHERE request_id = ANY($1) AND status = 'active'",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(files as usize, confirmed);
    for user in &users {
        let balance = substrate_db::media::balance(&db, *user).await.unwrap();
        let sum = substrate_db::media::ledger_sum(&db, *user).await.unwrap();
        assert_eq!(balance, Some(0), "{user}");
        assert_eq!(sum, 0, "{user}");
        let charges: i64 = db
            .query_one(
                "SELECT count(*) FROM public.credit_ledger WHERE user_id = $1 AND reason = 'upload'",
                &[user],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(charges, CREDITS as i64, "{user}");
    }
    let _ = saga.child.kill();
    let _ = saga.child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
