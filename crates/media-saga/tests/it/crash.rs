//! The media-saga binary SIGKILLed ten times while 200 uploads run concurrently, each kill
//! asserted to land mid-stream: every saga still ends in exactly one terminal state and every
//! user's ledger sums to their balance.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use media_saga::emit::Topic;
use rand::Rng;
use substrate_testkit::workspace_bin;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::harness::{bytes, put, s3_event, Setup, SECRET};

const USERS: usize = 40;
const PER_USER: usize = 5;
const CREDITS: i32 = 4;
/// Uploads that are approved (each user asks for one more than they have credits for).
const APPROVED: usize = USERS * CREDITS as usize;
const KILLS: usize = 10;
/// Uploads the clients may start in each run before its kill; the rest go after the last restart.
const WAVE: usize = 15;
/// The whole test, from the first intent to the last check.
const BOUND: Duration = Duration::from_secs(270);
/// One run: start, rejoin the consumer group, confirm a saga.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A running media-saga binary; SIGKILLed when dropped (a failing test leaves no process).
struct Saga {
    child: Child,
    url: String,
}

impl Drop for Saga {
    fn drop(&mut self) {
        // A child already waited for is not signalled again (its pid may be reused).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// How many of `ids` are in each state.
async fn states(db: &tokio_postgres::Client, ids: &[Uuid]) -> HashMap<String, usize> {
    db.query(
        "SELECT state, count(*) FROM public.media_sagas WHERE request_id = ANY($1) GROUP BY state",
        &[&ids],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as usize))
    .collect()
}

fn count(states: &HashMap<String, usize>, state: &str) -> usize {
    states.get(state).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kill_9s_mid_stream_of_200_concurrent_uploads_leave_one_terminal_state_each() {
    let test_started = Instant::now();
    let left = || BOUND.saturating_sub(test_started.elapsed());
    let mut setup = Setup::new().await;
    setup.starting_credits = CREDITS;
    // A move lost in a kill is retried after the move timeout. A timeout fires only once the
    // saga has read every arrival, moved-file report and retry written before it fell due, so
    // the ~6 s a restarted saga waits for its partitions spend no retries: with a 3 s timeout and
    // at most 10 retries, no upload that was moved may end dead-lettered.
    setup.move_timeout_ms = 3000;
    setup.max_move_retries = 10;
    let port = free_port();
    let run_id = Uuid::new_v4();
    let dir = std::env::temp_dir().join(format!("media-saga-crash-{run_id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    // The binary's database sessions carry a name of their own, so the test can tell when the
    // killed process's last ones are gone.
    let application = format!("media-saga-crash-{run_id}");
    let database_url = &setup.stack.database_url;
    let named_url = format!(
        "{database_url}{}application_name={application}",
        if database_url.contains('?') { '&' } else { '?' }
    );
    let yaml = setup.yaml(&format!("127.0.0.1:{port}"));
    let named = yaml.replace(
        &format!("  url: {database_url}\n"),
        &format!("  url: {named_url}\n"),
    );
    assert_ne!(yaml, named, "the database url is in the configuration");
    std::fs::write(&config, named).unwrap();

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
    let ids: Vec<Uuid> = requests.iter().map(|(r, _)| *r).collect();

    // Clients: PUT each signed URL once and report the arrival (retrying while the saga is down),
    // one upload per permit the test releases, so every run has uploads left to do when killed.
    let permits = Arc::new(Semaphore::new(0));
    let reported = Arc::new(AtomicUsize::new(0));
    let client_out = out.clone();
    let client_permits = permits.clone();
    let client_reported = reported.clone();
    let bucket = setup.bucket.clone();
    let url = saga.url.clone();
    let clients = tokio::spawn(async move {
        let mut done = HashSet::new();
        loop {
            let signed = client_out.all(Topic::UploadSigned);
            let pending: Vec<_> = signed
                .into_iter()
                .filter(|s| !done.contains(s["request_id"].as_str().unwrap()))
                .collect();
            for s in pending {
                let request = s["request_id"].as_str().unwrap().to_string();
                if done.contains(&request) {
                    // Signed again after a restart (the same URL): already uploaded.
                    continue;
                }
                client_permits.acquire().await.unwrap().forget();
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
                        // The saga is down: a client's retry after a short backoff.
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                done.insert(request);
                client_reported.store(done.len(), Ordering::SeqCst);
            }
            if done.len() == APPROVED {
                return done.len();
            }
            // Waiting for more signed URLs on the topic.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // Ten runs, each ended by a SIGKILL once it confirmed a new saga (after a random 1 to 5 of
    // them), while uploads are still to come; each kill is followed by a restart.
    let mut released = 0;
    let mut confirmed_before = 0;
    for kill in 1..=KILLS {
        let run_started = Instant::now();
        permits.add_permits(WAVE);
        released += WAVE;
        let target = confirmed_before + rand::rng().random_range(1..=5);
        let run_deadline = run_started + RUN_TIMEOUT.min(left());
        loop {
            if let Some(status) = saga.child.try_wait().unwrap() {
                panic!("run {kill}: media-saga exited by itself ({status})");
            }
            let confirmed = count(&states(&db, &ids).await, "confirmed");
            if confirmed >= target {
                break;
            }
            assert!(
                Instant::now() < run_deadline,
                "run {kill}: {confirmed} confirmed, {target} awaited, after {:?}",
                run_started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        saga.child.kill().expect("SIGKILL");
        let status = saga.child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "run {kill} ended by the SIGKILL");
        // A COMMIT the process sent just before it died still commits: its sessions end once the
        // server has read everything they were sent. After that nothing changes these numbers
        // until the restart.
        substrate_testkit::eventually(left(), "the killed process's sessions to end", || async {
            let sessions: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&application],
                )
                .await
                .unwrap()
                .get(0);
            (sessions == 0).then_some(())
        })
        .await
        .unwrap();
        let at_kill = states(&db, &ids).await;
        let confirmed = count(&at_kill, "confirmed");
        let reported_at_kill = reported.load(Ordering::SeqCst);
        println!(
            "kill {kill:2} at {:6.1}s (run {:5.1}s): released {released:3}, reported {reported_at_kill:3}, \
             confirmed {confirmed_before:3} -> {confirmed:3}, received {:3}, signed {:3}, rejected {:2}, \
             failed {}",
            test_started.elapsed().as_secs_f64(),
            run_started.elapsed().as_secs_f64(),
            count(&at_kill, "received"),
            count(&at_kill, "signed"),
            count(&at_kill, "rejected"),
            count(&at_kill, "failed"),
        );
        assert!(
            confirmed > confirmed_before,
            "kill {kill}: this run confirmed a saga"
        );
        assert!(
            confirmed < APPROVED,
            "kill {kill} landed mid-stream: {confirmed} of {APPROVED} confirmed"
        );
        confirmed_before = confirmed;
        saga = spawn(&config, port);
    }
    permits.add_permits(APPROVED - released);

    let reported = tokio::time::timeout(left(), clients)
        .await
        .expect("the clients finished within the test's bound")
        .unwrap();
    assert_eq!(
        reported, APPROVED,
        "every approved upload was put and reported"
    );

    // Every saga reaches a terminal state.
    let states = substrate_testkit::eventually(left(), "terminal states", || async {
        let rows = db
            .query(
                "SELECT request_id, state FROM public.media_sagas WHERE request_id = ANY($1)",
                &[&ids],
            )
            .await
            .unwrap();
        let states: HashMap<Uuid, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let terminal =
            |s: &String| ["confirmed", "rejected", "expired", "failed"].contains(&s.as_str());
        (states.len() == ids.len() && states.values().all(terminal)).then_some(states)
    })
    .await
    .unwrap();
    let confirmed = states.values().filter(|s| *s == "confirmed").count();
    let rejected = states.values().filter(|s| *s == "rejected").count();
    let failed = states.values().filter(|s| *s == "failed").count();
    let expired = states.values().filter(|s| *s == "expired").count();
    assert_eq!(
        (confirmed, failed, expired),
        (APPROVED, 0, 0),
        "confirmed, dead-lettered, expired"
    );
    assert_eq!(rejected, USERS * (PER_USER - CREDITS as usize));

    // The topics agree: one confirmation or one rejection per request, never both.
    substrate_testkit::eventually(left(), "results on the topics", || async {
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
    // Every result produced so far is in the collector, repetitions included.
    out.read_to_end(Topic::UploadConfirmed, left()).await;
    out.read_to_end(Topic::UploadRejected, left()).await;
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
    let retries: i32 = db
        .query_one(
            "SELECT max(retry_count) FROM public.media_sagas WHERE request_id = ANY($1)",
            &[&ids],
        )
        .await
        .unwrap()
        .get(0);
    println!("most move retries of one upload: {retries}");
    drop(saga);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "ten kills and all checks in {:.1}s",
        test_started.elapsed().as_secs_f64()
    );
}
