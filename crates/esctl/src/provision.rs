//! Idempotent provisioning: topics for every schema in `avro/` plus the raw topics of
//! `topics.yaml`, then each schema registered under `<topic>-value`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;
use substrate_avro::{Catalog, Registry, RegistryConfig};
use substrate_kafka::KafkaConfig;

#[derive(Debug, Deserialize)]
struct TopicsFile {
    defaults: TopicDefaults,
    #[serde(default)]
    raw: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct TopicDefaults {
    partitions: i32,
    replication_factor: i32,
}

pub async fn run(
    kafka: &KafkaConfig,
    registry_url: &str,
    avro_dir: &Path,
    topics_file: &Path,
) -> anyhow::Result<()> {
    let catalog = Catalog::load(avro_dir)?;
    let settings: TopicsFile = serde_yaml::from_str(
        &std::fs::read_to_string(topics_file)
            .with_context(|| format!("reading {}", topics_file.display()))?,
    )
    .with_context(|| format!("parsing {}", topics_file.display()))?;

    let mut names: Vec<String> = catalog.topics().map(|t| t.topic.clone()).collect();
    names.extend(settings.raw.iter().cloned());
    create_topics(kafka, &names, &settings.defaults).await?;

    let registry = Registry::new(&RegistryConfig {
        url: registry_url.to_string(),
        timeout_ms: 10_000,
    })?;
    for topic in catalog.topics() {
        let id = registry
            .register(&topic.topic, &topic.text)
            .await
            .with_context(|| format!("registering {}", topic.subject()))?;
        println!("schema  {:<48} id {id}", topic.subject());
    }
    Ok(())
}

async fn create_topics(
    kafka: &KafkaConfig,
    names: &[String],
    defaults: &TopicDefaults,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = kafka
        .admin_config()
        .create()
        .context("creating the Kafka admin client")?;
    let new_topics: Vec<NewTopic> = names
        .iter()
        .map(|name| {
            NewTopic::new(
                name,
                defaults.partitions,
                TopicReplication::Fixed(defaults.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .context("creating topics")?;
    for result in results {
        match result {
            Ok(name) => println!("topic   {name:<48} created"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                println!("topic   {name:<48} exists")
            }
            Err((name, code)) => anyhow::bail!("creating topic {name}: {code}"),
        }
    }
    Ok(())
}
