//! The dispatcher: delivers the dispatch requests of matching rules to their sinks — signed
//! webhooks (Standard Webhooks), Slack, Discord, the S3 archive, Kafka topics and user
//! notifications — retries failures through delay topics without blocking, dead-letters what
//! cannot be delivered, disables endpoints that answer 410, and logs every attempt. Secrets of
//! HTTP actions are opened here only, from Postgres, and never logged or forwarded.

pub mod audit;
pub mod config;
pub mod endpoints;
pub mod metrics;
pub mod outcome;
pub mod request;
pub mod secrets;
pub mod service;
pub mod signing;
pub mod sinks;
pub mod ssrf;
pub mod template;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use substrate_avro::{Catalog, Registry};
use substrate_kafka::delay_topics::Retrier;
use substrate_kafka::{DeadLetter, Producer};
use substrate_runtime::failure::{retry_transient, Stopped};
use substrate_runtime::ops::{self, Readiness};
use substrate_runtime::Shutdown;
use tokio::net::TcpListener;

pub use config::Config;

pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.dispatcher.listen)
        .await
        .with_context(|| format!("binding {}", config.dispatcher.listen))?;
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
    let c = &config.dispatcher;
    let schedule = c.schedule().map_err(anyhow::Error::msg)?;
    let catalog = Catalog::load(&c.avro_dir).context("loading avro schemas")?;
    if catalog.get(&c.notification_topic).is_none() {
        anyhow::bail!(
            "topic {} has no schema under {}",
            c.notification_topic,
            c.avro_dir.display()
        );
    }
    let pool = substrate_db::connect_pool(&config.database)?;
    let registry = Registry::new(&config.schema_registry)?;
    let producer = Producer::new(&config.kafka).context("creating the producer")?;

    let keyring = config
        .secrets
        .keyring("secrets")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(keys = ?keyring.key_ids().collect::<Vec<_>>(), active = keyring.active_key_id(), "secrets keyring loaded");
    let secrets = secrets::SecretStore::new(pool.clone(), keyring, c.secret_cache());
    let endpoints = endpoints::Endpoints::new(pool.clone());
    let n = match retry_transient(&shutdown.token(), "dispatcher.load_endpoints", || {
        endpoints.refresh()
    })
    .await
    {
        Ok(n) => n,
        Err(Stopped::Cancelled) => return Ok(()),
        Err(Stopped::Permanent(e)) => anyhow::bail!("loading disabled endpoints: {e}"),
    };
    tracing::info!(disabled = n, "endpoints loaded");
    endpoints.spawn_refresh(Duration::from_secs(c.endpoint_refresh_secs), &shutdown);

    let mut topics = vec![c.requests_topic.clone()];
    topics.extend(schedule.topics());
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let consumer = substrate_kafka::consumer::subscribe(&config.kafka, &c.group_id, &topic_refs)
        .context("subscribing")?;
    tracing::info!(?topics, group = %c.group_id, "dispatcher consuming");

    let readiness = Readiness::new()
        .with_check("postgres", substrate_db::pool::ready_check(&pool))
        .with_check("kafka", producer.ready_check());
    ops::spawn(listener, readiness, &shutdown);

    let http = sinks::http::HttpSink::new(
        c.timeout(),
        Duration::from_millis(c.http.connect_timeout_ms),
        c.endpoint_limits(),
        c.http.allow_private_targets,
        c.http.proxy.as_deref(),
    )?;
    let archiver = sinks::archive::Archiver::start(
        config.s3.as_ref().map(|s3| s3.client()),
        c.archive.clone(),
        &shutdown,
    );
    let dispatcher = service::Dispatcher {
        consumer: Arc::new(consumer),
        registry: registry.clone(),
        http,
        archiver,
        kafka: sinks::kafka::KafkaSink {
            producer: producer.clone(),
            registry,
            catalog,
            notification_topic: c.notification_topic.clone(),
        },
        audit: audit::AuditLog::start(pool.clone(), &shutdown),
        endpoints,
        secrets,
        retrier: Retrier::new(
            producer.clone(),
            schedule,
            DeadLetter::new(producer.clone(), c.dead_letter_topic.clone(), "dispatcher"),
        ),
        max_in_flight: c.max_in_flight,
        group_id: c.group_id.clone(),
    };
    let result = dispatcher.run(shutdown.token(), shutdown.grace()).await;
    shutdown.cancel();
    producer.close(shutdown.grace()).await;
    shutdown.drain().await;
    result
}
