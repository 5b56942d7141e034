//! The rule-evaluator: evaluates the enabled rules of Postgres (hot-reloaded) on every event of
//! its topics, produces a dispatch request per action of each matching rule, and writes every
//! event to the unified stream. Offsets move only after all of that is acknowledged.

pub mod config;
pub mod evaluate;
pub mod metrics;
pub mod store;

use std::time::Duration;

use anyhow::Context;
use substrate_avro::{Catalog, Registry};
use substrate_kafka::{DeadLetter, Producer};
use substrate_runtime::failure::{retry_transient, Stopped};
use substrate_runtime::ops::{self, Readiness};
use substrate_runtime::Shutdown;
use tokio::net::TcpListener;

pub use config::Config;

/// Dead letters of records the evaluator cannot decode.
pub const DEAD_LETTER_TOPIC: &str = "internal.rules.dead-letter";
/// The topic whose schema (`avro/internal/dispatch/requests.avsc`) dispatch requests have.
const DISPATCH_SCHEMA_TOPIC: &str = "internal.dispatch.requests";

pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.rule_evaluator.listen)
        .await
        .with_context(|| format!("binding {}", config.rule_evaluator.listen))?;
    serve(config, listener, shutdown).await
}

pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    // Install the Prometheus recorder before anything is recorded: descriptions and the first
    // rule load would otherwise go to the no-op recorder (the ops router installs it later).
    ops::metrics_handle();
    metrics::describe();
    let c = &config.rule_evaluator;
    let catalog = Catalog::load(&c.avro_dir).context("loading avro schemas")?;
    let schema_of = |topic: &str| {
        catalog
            .get(topic)
            .cloned()
            .with_context(|| format!("topic {topic} has no schema under {}", c.avro_dir.display()))
    };
    // A dispatch topic of another name (tests, a second pipeline) carries the same records.
    let dispatch_schema = match catalog.get(&c.dispatch_topic) {
        Some(schema) => schema.clone(),
        None => schema_of(DISPATCH_SCHEMA_TOPIC)?,
    };
    let unified_schema = schema_of(&c.unified_topic)?;
    let pool = substrate_db::connect_pool(&config.database)?;
    let registry = Registry::new(&config.schema_registry)?;
    let producer = Producer::new(&config.kafka).context("creating the producer")?;

    let store = store::Store::new(pool.clone());
    // Evaluate nothing before the rules are known: wait for the first load.
    let n = match retry_transient(&shutdown.token(), "rule_evaluator.load_rules", || {
        store.reload()
    })
    .await
    {
        Ok(n) => n,
        Err(Stopped::Cancelled) => return Ok(()),
        Err(Stopped::Permanent(e)) => anyhow::bail!("loading rules: {e}"),
    };
    tracing::info!(rules = n, "rules loaded");
    store::spawn_listener(
        store.clone(),
        config.database.clone(),
        Duration::from_secs(c.resync_secs),
        &shutdown,
    );

    let topics: Vec<&str> = c.topics.iter().map(String::as_str).collect();
    let consumer = substrate_kafka::consumer::subscribe(&config.kafka, &c.group_id, &topics)
        .context("subscribing")?;
    tracing::info!(?topics, group = %c.group_id, "rule-evaluator consuming");

    let readiness = Readiness::new()
        .with_check("postgres", substrate_db::pool::ready_check(&pool))
        .with_check("kafka", producer.ready_check());
    ops::spawn(listener, readiness, &shutdown);

    let evaluator = evaluate::Evaluator {
        consumer,
        registry,
        store,
        producer: producer.clone(),
        dead_letter: DeadLetter::new(producer.clone(), DEAD_LETTER_TOPIC, "rule-evaluator"),
        dispatch_topic: c.dispatch_topic.clone(),
        dispatch_schema,
        unified_topic: c.unified_topic.clone(),
        unified_schema,
        group_id: c.group_id.clone(),
    };
    let result = evaluator.run(shutdown.token()).await;
    shutdown.cancel();
    producer.close(shutdown.grace()).await;
    shutdown.drain().await;
    result
}
