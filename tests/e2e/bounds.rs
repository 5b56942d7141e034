//! Every call to PostgreSQL and S3 is bounded: the server cancels a statement past
//! `statement_timeout_ms`, a caller waits for a pooled connection at most `pool_wait_timeout_ms`,
//! and an S3 server that accepts connections but never answers costs at most the read timeout.

use std::time::{Duration, Instant};

use substrate_db::{DbConfig, DbError};
use substrate_runtime::failure::{Class, Classify};
use substrate_testkit::Stack;

#[tokio::test]
async fn a_statement_past_its_timeout_is_cancelled_by_the_server() {
    let stack = Stack::load();
    let mut config = DbConfig::new(&stack.database_url);
    config.statement_timeout_ms = 300;
    let pool = substrate_db::connect_pool(&config).unwrap();
    let client = pool.get().await.unwrap();
    let started = Instant::now();
    let error: DbError = client
        .query_one("SELECT pg_sleep(5)", &[])
        .await
        .expect_err("cancelled")
        .into();
    let took = started.elapsed();
    assert!(
        error.to_string().contains("57014"),
        "the database's own cancellation (57014), named: {error}"
    );
    assert!(took < Duration::from_secs(3), "cancelled after {took:?}");
    assert_eq!(error.class(), Class::Transient, "a timeout is retried");
    // The connection stays usable.
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn waiting_for_a_pooled_connection_is_bounded() {
    let stack = Stack::load();
    let mut config = DbConfig::new(&stack.database_url);
    config.pool_size = 1;
    config.pool_wait_timeout_ms = 300;
    let pool = substrate_db::connect_pool(&config).unwrap();
    let held = pool.get().await.unwrap();
    let started = Instant::now();
    let error = DbError::from(pool.get().await.expect_err("no free connection"));
    let took = started.elapsed();
    assert!(matches!(error, DbError::Unavailable(_)), "{error}");
    assert_eq!(error.class(), Class::Transient);
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "gave up after {took:?}"
    );
    drop(held);
    assert!(pool.get().await.is_ok(), "free again once returned");
}

#[tokio::test]
async fn an_s3_server_that_never_answers_costs_at_most_the_timeouts() {
    // Accepts connections and reads requests, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let stack = Stack::load();
    let mut config = stack.s3.clone();
    config.endpoint = format!("http://{addr}");
    config.read_timeout_ms = 500;
    config.operation_timeout_ms = 1500;
    let client = config.client();
    let started = Instant::now();
    // Without the client's own timeouts this would hang; the outer limit turns that into a
    // failure.
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        substrate_s3::head(&client, "media-uploads", "uploads/x"),
    )
    .await
    .expect("the S3 client gives up by itself");
    let took = started.elapsed();
    let error = result.expect_err("no answer is an error");
    assert!(
        took < Duration::from_secs(5),
        "HEAD gave up after {took:?}: {error}"
    );
    assert!(
        took >= Duration::from_millis(400),
        "it did wait for an answer ({took:?}): {error}"
    );
}
