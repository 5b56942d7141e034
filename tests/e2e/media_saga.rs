//! The media sagas end to end through the running stack, as a frontend sees them: the gateway's
//! endpoints, the user's notifications (written by the notification-writer from media-saga's
//! results) and real HTTP PUT/GET against presigned URLs of the S3 server.

use std::time::Duration;

use serde_json::{json, Value};
use substrate_testkit::Stack;
use uuid::Uuid;

use crate::harness::{http, post_json};

const WAIT: Duration = Duration::from_secs(30);

async fn notification(
    db: &tokio_postgres::Client,
    user: Uuid,
    event_type: &str,
    request: &str,
) -> Value {
    substrate_testkit::media_notification(db, user, event_type, request, WAIT).await
}

async fn count_notifications(db: &tokio_postgres::Client, user: Uuid, event_type: &str) -> i64 {
    db.query_one(
        "SELECT count(*) FROM public.user_notifications WHERE recipient_id = $1 AND event_type = $2",
        &[&user, &event_type],
    )
    .await
    .unwrap()
    .get(0)
}

async fn get_json(url: &str, token: &str) -> Value {
    http()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn upload_download_and_delete_a_file() {
    let stack = Stack::load();
    let db = stack.db().await;
    let s3 = stack.s3.client();
    let bucket = std::env::var("S3_MEDIA_BUCKET").unwrap_or_else(|_| "media-uploads".into());
    let (user, other) = (Uuid::new_v4(), Uuid::new_v4());
    let token = stack.token(user, "owner@example.com");
    let other_token = stack.token(other, "other@example.com");
    let api = |path: &str| format!("{}/api/v1/{path}", stack.gateway_url);
    let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();

    // Intent → the upload URL arrives as a notification.
    let (status, _, body) = post_json(
        &api("media/upload-intent"),
        Some(&token),
        &json!({"file_name": "holiday.png", "media_type": "image/png", "file_size": content.len()}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let request = body["request_id"].as_str().unwrap().to_string();
    let ready = notification(&db, user, "media.upload_ready", &request).await;
    let upload_url = ready["upload_url"].as_str().unwrap();
    let upload_path = ready["file_path"].as_str().unwrap().to_string();
    assert_eq!(upload_path, format!("uploads/{user}/{request}/holiday.png"));

    // Completing before the PUT is refused; someone else's request is unknown to them.
    let complete = json!({"request_id": request});
    let (status, _, body) = post_json(&api("media/upload-complete"), Some(&token), &complete).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("upload_missing")),
        "{body}"
    );
    let (status, _, body) =
        post_json(&api("media/upload-complete"), Some(&other_token), &complete).await;
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = post_json(
        &api("media/upload-complete"),
        Some(&token),
        &json!({"request_id": "nope"}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("request_id")),
        "{body}"
    );

    // The real PUT of the bytes, then the client's confirmation.
    let put = http()
        .put(upload_url)
        .header("content-type", "image/png")
        .body(content.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "PUT {}", put.status());
    let (status, _, body) = post_json(&api("media/upload-complete"), Some(&token), &complete).await;
    assert_eq!(status, 202, "{body}");

    let confirmed = notification(&db, user, "media.upload_confirmed", &request).await;
    let file_path = format!("files/{user}/{request}/holiday.png");
    assert_eq!(confirmed["file_path"], file_path.as_str());
    let files = get_json(&api("media/files"), &token).await;
    assert_eq!(
        files["files"][0]["file_path"],
        file_path.as_str(),
        "{files}"
    );
    assert_eq!(get_json(&api("credits"), &token).await["balance"], 9);
    let row = db
        .query_one(
            "SELECT status FROM public.media_files WHERE request_id = $1",
            &[&Uuid::parse_str(&request).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "active");
    assert!(substrate_s3::head(&s3, &bucket, &file_path)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        substrate_s3::head(&s3, &bucket, &upload_path)
            .await
            .unwrap(),
        None
    );
    // Completing again is harmless.
    let (status, _, body) = post_json(&api("media/upload-complete"), Some(&token), &complete).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (202, Some("confirmed")),
        "{body}"
    );

    // Download: the owner gets a URL serving the same bytes; anyone else is refused.
    let path = json!({"file_path": file_path});
    let (status, _, body) = post_json(&api("media/download-intent"), Some(&token), &path).await;
    assert_eq!(status, 202, "{body}");
    let ready = notification(
        &db,
        user,
        "media.download_ready",
        body["request_id"].as_str().unwrap(),
    )
    .await;
    let got = http()
        .get(ready["download_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert!(got.status().is_success());
    assert_eq!(got.bytes().await.unwrap().as_ref(), content.as_slice());
    let (_, _, body) = post_json(&api("media/download-intent"), Some(&other_token), &path).await;
    let refused = notification(
        &db,
        other,
        "media.download_rejected",
        body["request_id"].as_str().unwrap(),
    )
    .await;
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("no active file"),
        "{refused}"
    );
    let (_, _, body) = post_json(&api("media/delete-intent"), Some(&other_token), &path).await;
    notification(
        &db,
        other,
        "media.delete_rejected",
        body["request_id"].as_str().unwrap(),
    )
    .await;
    assert!(substrate_s3::head(&s3, &bucket, &file_path)
        .await
        .unwrap()
        .is_some());

    // Delete: the object goes, the row is soft-deleted, the list is empty; twice is harmless.
    for _ in 0..2 {
        let (status, _, body) = post_json(&api("media/delete-intent"), Some(&token), &path).await;
        assert_eq!(status, 202, "{body}");
        notification(
            &db,
            user,
            "media.file_deleted",
            body["request_id"].as_str().unwrap(),
        )
        .await;
    }
    assert_eq!(
        count_notifications(&db, user, "media.delete_rejected").await,
        0
    );
    assert_eq!(
        substrate_s3::head(&s3, &bucket, &file_path).await.unwrap(),
        None
    );
    let row = db
        .query_one(
            "SELECT status, deleted_at IS NOT NULL FROM public.media_files WHERE request_id = $1",
            &[&Uuid::parse_str(&request).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "deleted");
    assert!(row.get::<_, bool>(1));
    let files = get_json(&api("media/files"), &token).await;
    assert_eq!(files["files"], json!([]), "{files}");
    // A deleted file cannot be downloaded.
    let (_, _, body) = post_json(&api("media/download-intent"), Some(&token), &path).await;
    notification(
        &db,
        user,
        "media.download_rejected",
        body["request_id"].as_str().unwrap(),
    )
    .await;
}

#[tokio::test]
async fn abandoned_uploads_expire_by_the_buckets_lifecycle_rule() {
    // media-saga puts the rule at start where the S3 server supports it (SeaweedFS does).
    let stack = Stack::load();
    let bucket = std::env::var("S3_MEDIA_BUCKET").unwrap_or_else(|_| "media-uploads".into());
    let rules = stack
        .s3
        .client()
        .get_bucket_lifecycle_configuration()
        .bucket(&bucket)
        .send()
        .await
        .expect("the media bucket has a lifecycle configuration");
    let rule = rules
        .rules()
        .iter()
        .find(|r| r.id() == Some("expire-abandoned-uploads"))
        .expect("the uploads rule");
    assert_eq!(rule.expiration().and_then(|e| e.days()), Some(1));
    let prefix = rule.filter().and_then(|f| f.prefix()).unwrap_or_default();
    assert_eq!(prefix, "uploads/");
}

#[tokio::test]
async fn without_credits_an_upload_is_rejected_and_nothing_is_signed() {
    let stack = Stack::load();
    let db = stack.db().await;
    let user = Uuid::new_v4();
    let token = stack.token(user, "broke@example.com");
    db.execute(
        "INSERT INTO public.credits (user_id, balance) VALUES ($1, 0)",
        &[&user],
    )
    .await
    .unwrap();
    let (status, _, body) = post_json(
        &format!("{}/api/v1/media/upload-intent", stack.gateway_url),
        Some(&token),
        &json!({"file_name": "a.gif", "media_type": "image/gif", "file_size": 10}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let request = body["request_id"].as_str().unwrap().to_string();
    let rejected = notification(&db, user, "media.upload_rejected", &request).await;
    assert_eq!(rejected["reason"], "insufficient credits");
    assert_eq!(
        count_notifications(&db, user, "media.upload_ready").await,
        0
    );
    let (status, _, body) = post_json(
        &format!("{}/api/v1/media/upload-complete", stack.gateway_url),
        Some(&token),
        &json!({"request_id": request}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("upload_rejected")),
        "{body}"
    );
    let balance = http()
        .get(format!("{}/api/v1/credits", stack.gateway_url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(balance["balance"], 0);
}
