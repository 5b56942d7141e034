//! media-saga: the upload saga (credit check, presigned upload URL, arrival, move to permanent
//! storage with retries and a dead letter, durable TTL expiry with a refund), the download saga
//! (ownership, presigned download URL) and the delete saga (remove the object, then soft-delete
//! the row). Saga state and timers are durable in Postgres; every transition is a record on a
//! topic.

pub mod config;
pub mod deadlines;
pub mod emit;
pub mod metrics;
pub mod saga;
pub mod storage;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::post;
use axum::Router;
use rdkafka::message::OwnedMessage;
use substrate_avro::{Catalog, Registry};
use substrate_kafka::{DeadLetter, Producer};
use substrate_runtime::ops::{self, Readiness};
use substrate_runtime::Shutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use config::Config;
use emit::{Emitter, Topic, Topics};

/// Records the saga cannot read go here (undecodable or not the topic's record type).
pub const DEAD_LETTER_TOPIC: &str = "internal.media.dead-letter";

pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.media_saga.listen)
        .await
        .with_context(|| format!("binding {}", config.media_saga.listen))?;
    serve(config, listener, shutdown).await
}

pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    // The recorder first: descriptions and early metrics would go to the no-op recorder.
    substrate_runtime::ops::metrics_handle();
    metrics::describe();
    let c = config.media_saga.clone();
    let catalog = Catalog::load(&c.avro_dir).context("loading avro schemas")?;
    if let Some(missing) = Topic::ALL.iter().find(|t| catalog.get(t.name()).is_none()) {
        anyhow::bail!(
            "topic {} has no schema under {}",
            missing.name(),
            c.avro_dir.display()
        );
    }
    let pool = substrate_db::connect_pool(&config.database)?;
    let registry = Registry::new(&config.schema_registry)?;
    let producer = Producer::new(&config.kafka).context("creating the producer")?;
    let topics = Topics::new(c.topic_prefix.clone());

    let mut presign_config = config.s3.clone();
    if !c.public_s3_endpoint.is_empty() {
        presign_config.endpoint = c.public_s3_endpoint.clone();
    }
    let storage = Arc::new(storage::Storage {
        client: config.s3.client(),
        presigner: presign_config.client(),
        bucket: c.bucket.clone(),
        upload_prefix: c.upload_prefix.clone(),
        files_prefix: c.files_prefix.clone(),
    });
    if c.uploads_lifecycle_days > 0 {
        match storage
            .apply_upload_lifecycle(c.uploads_lifecycle_days)
            .await
        {
            Ok(()) => tracing::info!(
                bucket = %c.bucket,
                days = c.uploads_lifecycle_days,
                "uploads expire by lifecycle rule"
            ),
            Err(error) => tracing::warn!(
                bucket = %c.bucket,
                %error,
                "the S3 server did not take the uploads lifecycle rule; abandoned uploads are removed only by the TTL expiry"
            ),
        }
    }

    let input_names: Vec<String> = crate::emit::INPUTS
        .iter()
        .map(|t| topics.name(*t))
        .collect();
    let input_refs: Vec<&str> = input_names.iter().map(String::as_str).collect();
    let consumer = substrate_kafka::consumer::subscribe(&config.kafka, &c.group_id, &input_refs)
        .context("subscribing")?;
    tracing::info!(topics = ?input_names, group = %c.group_id, "media-saga consuming");

    let engine = Arc::new(saga::Engine {
        pool: pool.clone(),
        registry: registry.clone(),
        emitter: Emitter {
            producer: producer.clone(),
            registry,
            catalog,
            topics: topics.clone(),
        },
        storage,
        config: c.clone(),
        moves: Arc::new(Semaphore::new(c.move_concurrency)),
        dead_letter: DeadLetter::new(
            producer.clone(),
            format!("{}{DEAD_LETTER_TOPIC}", c.topic_prefix),
            "media-saga",
        ),
        shutdown: shutdown.clone(),
    });

    let s3_check = engine.storage.clone();
    let readiness = Readiness::new()
        .with_check("postgres", substrate_db::pool::ready_check(&pool))
        .with_check("kafka", producer.ready_check())
        .with_check("s3", move || {
            let storage = s3_check.clone();
            async move { storage.check_bucket().await }
        });
    // The webhooks in server spans that continue the S3 server's `traceparent` (if it sends one).
    let hooks = substrate_runtime::http::traced(
        Router::new()
            .route("/webhooks/media-upload", post(webhooks::s3_event))
            .route("/webhooks/file-ready", post(webhooks::s3_event)),
    );
    let app = hooks
        .with_state(engine.clone())
        .merge(ops::router(readiness))
        // After every route: JSON errors instead of axum's empty 404 and 405.
        .fallback(webhooks::not_found)
        .method_not_allowed_fallback(webhooks::method_not_allowed);
    let token = shutdown.token();
    let limits = c.http.clone();
    shutdown.spawn("http", async move {
        let app = substrate_runtime::http::bounded(app, &limits);
        substrate_runtime::http::serve(listener, app, &limits, token).await?;
        Ok(())
    });
    // The records that cancel or answer a deadline: arrivals, the moved file's report and the
    // move retries a timeout asked for.
    let answers: Vec<String> = [Topic::UploadReceived, Topic::FileReady, Topic::UploadRetry]
        .iter()
        .map(|t| topics.name(*t))
        .collect();
    let arrivals =
        substrate_kafka::progress::GroupProgress::new(&config.kafka, &c.group_id, &answers)
            .context("creating the progress client")?;
    shutdown.spawn(
        "deadlines",
        deadlines::run(
            engine.clone(),
            Arc::new(arrivals),
            Duration::from_millis(c.deadline_poll_ms),
        ),
    );

    let handler = {
        let engine = engine.clone();
        move |message: OwnedMessage| {
            let engine = engine.clone();
            async move { engine.handle(message).await }
        }
    };
    substrate_kafka::worker::run(
        Arc::new(consumer),
        &c.group_id,
        c.max_in_flight,
        shutdown.token(),
        shutdown.grace(),
        |_| true,
        handler,
    )
    .await;
    shutdown.cancel();
    // Background moves and the deadline poller are tracked: the drain waits for them.
    shutdown.drain().await;
    producer.close(shutdown.grace()).await;
    Ok(())
}
