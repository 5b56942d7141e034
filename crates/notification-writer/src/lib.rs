//! The notification-writer: consumes the result topics named in its config, decodes their Avro
//! records and writes them to `user_notifications` in idempotent batches, storing offsets only
//! after each batch committed. Realtime delivery is signalled by the table's NOTIFY trigger.

pub mod config;
pub mod mapping;
pub mod metrics;
pub mod writer;

use std::time::Duration;

use anyhow::Context;
use substrate_avro::Registry;
use substrate_kafka::{DeadLetter, Producer};
use substrate_runtime::ops::{self, Readiness};
use substrate_runtime::Shutdown;
use tokio::net::TcpListener;

pub use config::Config;

/// Runs until `shutdown`: the ops HTTP server plus the writer loop.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.notification_writer.listen)
        .await
        .with_context(|| format!("binding {}", config.notification_writer.listen))?;
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
    let w = &config.notification_writer;
    let pool = substrate_db::connect_pool(&config.database)?;
    let registry = Registry::new(&config.schema_registry)?;
    let producer = Producer::new(&config.kafka).context("creating the dead-letter producer")?;
    let mappings: std::collections::BTreeMap<String, mapping::Mapping> = w
        .topics
        .iter()
        .filter(|(_, m)| m.enabled)
        .map(|(t, m)| (t.clone(), m.clone()))
        .collect();
    let topics: Vec<&str> = mappings.keys().map(String::as_str).collect();
    let consumer = substrate_kafka::consumer::subscribe(&config.kafka, &w.group_id, &topics)
        .context("subscribing")?;
    tracing::info!(?topics, group = %w.group_id, "notification-writer consuming");

    let readiness = Readiness::new()
        .with_check("postgres", substrate_db::pool::ready_check(&pool))
        .with_check("kafka", producer.ready_check());
    ops::spawn(listener, readiness, &shutdown);

    let writer = writer::Writer {
        consumer,
        registry,
        pool,
        dead_letter: DeadLetter::new(
            producer.clone(),
            w.dead_letter_topic.clone(),
            "notification-writer",
        ),
        mappings: mappings.clone(),
        batch_max_rows: w.batch_max_rows,
        batch_max: Duration::from_millis(w.batch_max_ms),
        batch_linger: Duration::from_millis(w.batch_linger_ms.min(w.batch_max_ms)),
        drain: shutdown.grace(),
        concurrent_writes: w.concurrent_writes,
        group_id: w.group_id.clone(),
    };
    let result = writer.run(shutdown.token()).await;
    shutdown.cancel();
    producer.close(shutdown.grace()).await;
    shutdown.drain().await;
    result
}
