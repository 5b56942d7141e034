//! The upload saga step by step: credit check, presigned PUT, arrival through an S3 event,
//! move and confirmation; rejection at zero credits; TTL expiry (also after a restart); move
//! failures retried and dead-lettered.

use std::time::Duration;

use media_saga::emit::Topic;
use serde_json::json;
use substrate_testkit::{eventually, Outage};
use uuid::Uuid;

use crate::harness::{
    bytes, ledger_rows, metric, notify, notify_accepted, put, s3_event, saga_state, Setup, SECRET,
};
use media_saga::metrics::MOVES;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reported_by_an_s3_event_is_moved_and_confirmed() {
    let setup = Setup::new().await;
    let saga = setup.start().await;
    let out = setup.collect();
    let producer = setup.producer();
    let db = setup.stack.db().await;
    let s3 = setup.stack.s3.client();
    let user = Uuid::new_v4();
    let content = bytes(4096, 7);

    let request = setup
        .intent(&producer, user, "my cat.png", content.len())
        .await;
    let approved = out.wait(Topic::UploadApproved, request, WAIT).await;
    assert_eq!(approved["balance"], 9, "{approved}");
    let signed = out.wait(Topic::UploadSigned, request, WAIT).await;
    let upload_path = signed["file_path"].as_str().unwrap().to_string();
    assert_eq!(upload_path, format!("uploads/{user}/{request}/my cat.png"));
    let expires_at =
        chrono::DateTime::parse_from_rfc3339(signed["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires_at > chrono::Utc::now());

    // The URL only takes the declared type.
    let url = signed["upload_url"].as_str().unwrap();
    assert!(put(url, content.clone(), "image/jpeg")
        .await
        .is_client_error());
    assert!(put(url, content.clone(), "image/png").await.is_success());

    // The webhook authenticates its caller and reports only objects it waits for.
    let event = s3_event(&setup.bucket, &upload_path, content.len());
    let (status, _) = notify(&saga.url(), "wrong", &event).await;
    assert_eq!(status, 401);
    let (status, body) = notify(&saga.url(), SECRET, &json!({"nope": 1})).await;
    assert_eq!(status, 400, "{body}");
    let stranger = s3_event(
        &setup.bucket,
        &format!("uploads/{user}/{}/x.png", Uuid::new_v4()),
        1,
    );
    notify_accepted(&saga.url(), &stranger, 0).await;
    notify_accepted(&saga.url(), &event, 1).await;

    let confirmed = out.wait(Topic::UploadConfirmed, request, WAIT).await;
    let file_path = format!("files/{user}/{request}/my cat.png");
    assert_eq!(confirmed["file_path"], file_path.as_str());
    assert_eq!(confirmed["file_size"], content.len() as i64);
    let received = out.of(Topic::UploadReceived, request);
    assert_eq!(received[0]["source"], "s3-event");

    // The object moved: under files/ with the same bytes, nothing left under uploads/.
    let object = s3
        .get_object()
        .bucket(&setup.bucket)
        .key(&file_path)
        .send()
        .await
        .expect("permanent object");
    let body = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(body.as_ref(), content.as_slice());
    let left = substrate_s3::head(&s3, &setup.bucket, &upload_path)
        .await
        .unwrap();
    assert_eq!(left, None, "the upload was removed after the copy");

    let row = db
        .query_one(
            "SELECT user_id, status, file_size FROM public.media_files WHERE request_id = $1",
            &[&request],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), user);
    assert_eq!(row.get::<_, String>(1), "active");
    assert_eq!(saga_state(&db, request).await.as_deref(), Some("confirmed"));
    assert_eq!(
        substrate_db::media::balance(&db, user).await.unwrap(),
        Some(9)
    );
    assert_eq!(substrate_db::media::ledger_sum(&db, user).await.unwrap(), 9);
    let deadlines: i64 = db
        .query_one(
            "SELECT count(*) FROM public.media_deadlines WHERE request_id = $1",
            &[&request],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(deadlines, 0, "no timer is left for a confirmed upload");

    // A second report of the same arrival changes nothing.
    notify_accepted(&saga.url(), &event, 0).await;
    saga.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_credits_reject_and_a_redelivered_intent_stays_rejected() {
    let setup = Setup::new().await;
    let saga = setup.start().await;
    let out = setup.collect();
    let producer = setup.producer();
    let db = setup.stack.db().await;
    let user = Uuid::new_v4();
    db.execute(
        "INSERT INTO public.credits (user_id, balance) VALUES ($1, 0)",
        &[&user],
    )
    .await
    .unwrap();

    let request = setup.intent(&producer, user, "a.png", 10).await;
    let rejected = out.wait(Topic::UploadRejected, request, WAIT).await;
    assert_eq!(rejected["reason"], "insufficient credits");
    assert_eq!(saga_state(&db, request).await.as_deref(), Some("rejected"));

    // Credits granted afterwards do not turn the same request into an approval.
    db.execute(
        "UPDATE public.credits SET balance = 5 WHERE user_id = $1",
        &[&user],
    )
    .await
    .unwrap();
    setup
        .intent_with_id(&producer, request, user, "a.png", 10)
        .await;
    eventually(WAIT, "the rejection repeated", || async {
        (out.of(Topic::UploadRejected, request).len() >= 2).then_some(())
    })
    .await
    .unwrap();
    let ids = out.ids(Topic::UploadRejected, request);
    assert_eq!(
        ids[0], ids[1],
        "the repeated rejection has the same event id"
    );
    assert!(
        out.of(Topic::UploadSigned, request).is_empty(),
        "nothing signed"
    );
    assert!(out.of(Topic::UploadApproved, request).is_empty());
    assert_eq!(ledger_rows(&db, request, "upload").await, 0);
    assert_eq!(
        substrate_db::media::balance(&db, user).await.unwrap(),
        Some(5)
    );
    saga.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_upload_is_refunded_once_even_when_it_falls_due_during_a_restart() {
    let mut setup = Setup::new().await;
    setup.ttl_secs = 2;
    let saga = setup.start().await;
    let out = setup.collect();
    let producer = setup.producer();
    let db = setup.stack.db().await;
    let user = Uuid::new_v4();

    // A URL signed and never used: expired, refunded, the partial upload removed.
    let first = setup.intent(&producer, user, "a.png", 100).await;
    out.wait(Topic::UploadSigned, first, WAIT).await;
    assert_eq!(
        substrate_db::media::balance(&db, user).await.unwrap(),
        Some(9)
    );
    let expired = out.wait(Topic::Expired, first, WAIT).await;
    assert_eq!(
        expired["file_path"],
        format!("uploads/{user}/{first}/a.png")
    );
    assert_eq!(saga_state(&db, first).await.as_deref(), Some("expired"));
    assert_eq!(
        substrate_db::media::balance(&db, user).await.unwrap(),
        Some(10)
    );
    assert_eq!(ledger_rows(&db, first, "refund").await, 1);

    // The second one falls due while the saga is stopped and fires when it is back.
    let second = setup.intent(&producer, user, "b.png", 100).await;
    out.wait(Topic::UploadSigned, second, WAIT).await;
    saga.stop().await;
    // The TTL falls due (by the database's clock, which the deadline poller reads) while the saga
    // is down.
    eventually(WAIT, "the second upload's TTL to fall due", || async {
        ttl_deadline(&db, second)
            .await
            .is_some_and(|(due, fired)| due && !fired)
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(saga_state(&db, second).await.as_deref(), Some("signed"));
    let saga = setup.start().await;
    out.wait(Topic::Expired, second, WAIT).await;
    assert_eq!(saga_state(&db, second).await.as_deref(), Some("expired"));

    // Exactly one refund and one expiry each; the balance is back and equals the ledger. That
    // nothing fires twice is shown by what the saga has done, not by waiting a while: both TTLs
    // are marked fired (in the transaction that refunded and expired, after the record was
    // acknowledged; the poller only picks unfired deadlines, so no expiry can follow), and the
    // collector has read the expiry topic to its end, so every expiry ever produced is counted.
    eventually(WAIT, "both TTLs marked fired", || async {
        for request in [first, second] {
            if !ttl_deadline(&db, request).await?.1 {
                return None;
            }
        }
        Some(())
    })
    .await
    .unwrap();
    out.read_to_end(Topic::Expired, WAIT).await;
    for request in [first, second] {
        assert_eq!(ledger_rows(&db, request, "refund").await, 1);
        assert_eq!(out.of(Topic::Expired, request).len(), 1);
    }
    assert_eq!(
        substrate_db::media::balance(&db, user).await.unwrap(),
        Some(10)
    );
    assert_eq!(
        substrate_db::media::ledger_sum(&db, user).await.unwrap(),
        10
    );

    // A late arrival of an expired upload is refused.
    notify_accepted(
        &saga.url(),
        &s3_event(&setup.bucket, &format!("uploads/{user}/{first}/a.png"), 100),
        0,
    )
    .await;
    saga.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_move_is_retried_and_a_persistent_failure_is_dead_lettered() {
    let mut setup = Setup::new().await;
    let direct: std::net::SocketAddr = setup
        .stack
        .s3
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let outage = Outage::proxy(direct).await;
    setup.s3_endpoint = format!("http://{}", outage.addr);
    setup.move_timeout_ms = 2000;
    setup.max_move_retries = 3;
    let saga = setup.start().await;
    let out = setup.collect();
    let producer = setup.producer();
    let db = setup.stack.db().await;
    let user = Uuid::new_v4();

    let mut uploads = Vec::new();
    for name in ["healed.png", "lost.png"] {
        let content = bytes(2048, 3);
        let request = setup.intent(&producer, user, name, content.len()).await;
        let signed = out.wait(Topic::UploadSigned, request, WAIT).await;
        // Clients reach the S3 server directly; only the saga's own connection is cut.
        assert!(
            put(signed["upload_url"].as_str().unwrap(), content, "image/png")
                .await
                .is_success()
        );
        uploads.push((request, signed));
    }
    // The arrivals as the gateway reports them after its HEAD check.
    let arrival = |request: Uuid, signed: &serde_json::Value| {
        let path = signed["file_path"].as_str().unwrap().to_string();
        json!({"request_id": request, "user_id": user, "file_path": path,
            "permanent_path": path.replacen("uploads/", "files/", 1),
            "size": 2048, "content_type": "image/png", "source": "client", "retry_count": 0})
    };
    let (healed, lost) = (uploads[0].0, uploads[1].0);

    // The store is unreachable for the first move and the first retry, then comes back.
    let failed_before = metric(&saga.url(), MOVES, &[("outcome", "failed")]).await;
    outage.down();
    setup
        .produce(
            &producer,
            Topic::UploadReceived,
            &arrival(healed, &uploads[0].1),
        )
        .await;
    let retry = out.wait(Topic::UploadRetry, healed, WAIT).await;
    assert_eq!(retry["retry_count"], 1);
    assert!(out.of(Topic::UploadConfirmed, healed).is_empty());
    // The store comes back only once the first move gave up (after the S3 client's own
    // retries), so the upload heals through the retry path: the saga counts the failed move.
    // (The recorder is process-wide, but no other test of this binary makes a move fail.)
    eventually(WAIT, "the first move to fail", || async {
        (metric(&saga.url(), MOVES, &[("outcome", "failed")]).await > failed_before).then_some(())
    })
    .await
    .unwrap();
    // Nothing was confirmed while the store was down: the saga reported its failed move, and the
    // collector has read the permanent-object and confirmation topics to their ends.
    out.read_to_end(Topic::FileReady, WAIT).await;
    out.read_to_end(Topic::UploadConfirmed, WAIT).await;
    assert!(out.of(Topic::FileReady, healed).is_empty());
    assert!(out.of(Topic::UploadConfirmed, healed).is_empty());
    outage.restore();
    let confirmed = out.wait(Topic::UploadConfirmed, healed, WAIT).await;
    assert_eq!(
        confirmed["file_path"],
        format!("files/{user}/{healed}/healed.png")
    );
    let retries = out.of(Topic::UploadRetry, healed);
    assert!(
        !retries.is_empty() && retries.len() <= 3,
        "retries: {retries:?}"
    );
    eventually(WAIT, "the retry handler's re-emitted arrival", || async {
        out.of(Topic::UploadReceived, healed)
            .iter()
            .any(|r| r["source"] == "retry")
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(saga_state(&db, healed).await.as_deref(), Some("confirmed"));

    // The store stays unreachable for the second upload: every retry fails, then the dead letter.
    outage.down();
    setup
        .produce(
            &producer,
            Topic::UploadReceived,
            &arrival(lost, &uploads[1].1),
        )
        .await;
    out.wait(Topic::UploadDeadLetter, lost, WAIT).await;
    outage.restore();
    let dead = out.of(Topic::UploadDeadLetter, lost);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["retry_count"], 3);
    assert!(dead[0]["reason"]
        .as_str()
        .unwrap()
        .contains("could not be moved"));
    assert_eq!(out.of(Topic::UploadRetry, lost).len(), 3);
    assert_eq!(saga_state(&db, lost).await.as_deref(), Some("failed"));
    assert!(out.of(Topic::UploadConfirmed, lost).is_empty());
    // The failed upload's credit comes back, once.
    assert_eq!(ledger_rows(&db, lost, "refund").await, 1);
    assert_eq!(ledger_rows(&db, healed, "refund").await, 0);
    assert_eq!(
        substrate_db::media::balance(&db, user).await.unwrap(),
        Some(9)
    );
    assert_eq!(substrate_db::media::ledger_sum(&db, user).await.unwrap(), 9);
    saga.stop().await;
}

/// After downtime the arrivals wait in `upload.received`: an upload that arrived before its
/// TTL fell due is confirmed once the saga is back, not expired and refunded because the timer
/// ran before the backlog was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arrival_written_before_the_ttl_wins_over_the_timer_after_downtime() {
    let mut setup = Setup::new().await;
    setup.ttl_secs = 3;
    let saga = setup.start().await;
    let out = setup.collect();
    let producer = setup.producer();
    let db = setup.stack.db().await;
    let user = Uuid::new_v4();
    let content = bytes(1024, 3);

    let request = setup
        .intent(&producer, user, "late.png", content.len())
        .await;
    let signed = out.wait(Topic::UploadSigned, request, WAIT).await;
    assert!(put(
        signed["upload_url"].as_str().unwrap(),
        content.clone(),
        "image/png"
    )
    .await
    .is_success());
    saga.stop().await;

    // The upload is complete while the saga is down: the arrival is written (as the gateway's
    // upload-complete does) before the TTL falls due.
    let arrival = json!({"request_id": request, "user_id": user,
        "file_path": signed["file_path"], "permanent_path": format!("files/{user}/{request}/late.png"),
        "size": content.len(), "content_type": "image/png", "source": "upload-complete",
        "retry_count": 0});
    setup
        .produce(&producer, Topic::UploadReceived, &arrival)
        .await;
    // The TTL falls due while the saga is still down.
    eventually(WAIT, "the upload TTL to fall due", || async {
        let due: bool = db
            .query_one(
                "SELECT bool_or(due_at <= now()) FROM public.media_deadlines
                 WHERE request_id = $1 AND kind = 'upload_ttl'",
                &[&request],
            )
            .await
            .unwrap()
            .get::<_, Option<bool>>(0)
            .unwrap_or(false);
        due.then_some(())
    })
    .await
    .unwrap();
    assert_eq!(saga_state(&db, request).await.as_deref(), Some("signed"));

    let saga = setup.start().await;
    out.wait(Topic::UploadConfirmed, request, WAIT).await;
    assert_eq!(saga_state(&db, request).await.as_deref(), Some("confirmed"));
    assert!(
        out.of(Topic::Expired, request).is_empty(),
        "the upload was not expired"
    );
    assert_eq!(ledger_rows(&db, request, "refund").await, 0, "no refund");
    assert_eq!(
        substrate_db::media::balance(&db, user).await.unwrap(),
        Some(9),
        "charged once, not refunded"
    );
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM public.media_deadlines WHERE request_id = $1",
            &[&request],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "no deadline left to fire later");
    saga.stop().await;
}

/// `(due, fired)` of a request's upload TTL by the database's clock; `None` when there is none.
async fn ttl_deadline(db: &tokio_postgres::Client, request: Uuid) -> Option<(bool, bool)> {
    db.query_opt(
        "SELECT due_at <= now(), fired_at IS NOT NULL FROM public.media_deadlines
         WHERE request_id = $1 AND kind = 'upload_ttl'",
        &[&request],
    )
    .await
    .unwrap()
    .map(|r| (r.get(0), r.get(1)))
}
