//! Reading topics as an operator: `tail` decodes records from Avro; `dlq list` shows dead
//! letters with their errors and origin; `dlq replay` sends chosen dead letters back to the
//! topic they came from (attempts start over); `endpoints` lists and re-enables endpoints the
//! dispatcher disabled after a 410 (known by the SHA-256 of their URL, shown redacted).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value as Json};
use substrate_avro::{avro_to_json, Registry, RegistryConfig};
use substrate_kafka::headers::header_str;
use substrate_kafka::origin::{
    DLQ_ATTEMPTS, DLQ_ERROR, DLQ_HEADER_PREFIX, DLQ_SERVICE, DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION, DLQ_SOURCE_TOPIC, RETRY_HEADER_PREFIX,
};
use substrate_kafka::{KafkaConfig, Producer};

/// How esctl reaches Kafka: the services' own settings (`SUBSTRATE_KAFKA__*`), TLS and SASL
/// included.
#[derive(Args, Clone)]
pub struct KafkaArgs {
    #[arg(long, env = "SUBSTRATE_KAFKA__BOOTSTRAP_SERVERS")]
    pub bootstrap_servers: String,
    /// plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long, env = "SUBSTRATE_KAFKA__SECURITY_PROTOCOL")]
    pub kafka_security_protocol: Option<String>,
    /// PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, env = "SUBSTRATE_KAFKA__SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    #[arg(long, env = "SUBSTRATE_KAFKA__SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,
    #[arg(long, env = "SUBSTRATE_KAFKA__SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,
    /// PEM file of the brokers' CA.
    #[arg(long, env = "SUBSTRATE_KAFKA__SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<String>,
}

impl KafkaArgs {
    pub fn config(&self) -> anyhow::Result<KafkaConfig> {
        let mut config = KafkaConfig::local(&self.bootstrap_servers);
        config.client_id = "esctl".into();
        config.security_protocol = self.kafka_security_protocol.clone();
        config.sasl_mechanism = self.kafka_sasl_mechanism.clone();
        config.sasl_username = self.kafka_sasl_username.clone();
        config.sasl_password = self.kafka_sasl_password.clone();
        config.ssl_ca_location = self.kafka_ssl_ca_location.clone();
        config
            .check()
            .map_err(|(key, message)| anyhow::anyhow!("{key}: {message}"))?;
        Ok(config)
    }
}

#[derive(Args, Clone)]
pub struct Connection {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[arg(long, env = "SUBSTRATE_SCHEMA_REGISTRY__URL")]
    pub schema_registry_url: String,
}

impl Connection {
    fn kafka(&self) -> KafkaConfig {
        self.kafka.config().unwrap_or_else(|e| {
            eprintln!("ERROR: {e}");
            std::process::exit(2)
        })
    }

    fn registry(&self) -> anyhow::Result<Registry> {
        Ok(Registry::new(&RegistryConfig {
            url: self.schema_registry_url.clone(),
            timeout_ms: 5_000,
        })?)
    }
}

#[derive(Args, Clone, Default)]
pub struct DlqFilter {
    /// Only requests of this rule (id or name).
    #[arg(long)]
    pub rule: Option<String>,
    /// Only requests of this sink (webhook, slack, discord, s3, kafka, notification).
    #[arg(long)]
    pub sink: Option<String>,
    /// Only dead letters written at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Only dead letters written before this time (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// Only this request id.
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Print dead letters (one JSON object per line) with error, attempts and origin.
    List {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, default_value = "internal.dispatch.dead-letter")]
        topic: String,
        #[command(flatten)]
        filter: DlqFilter,
    },
    /// Send matching dead letters back to where they came from (or `--to`); their attempts
    /// start over. The dead letters stay in their topic.
    Replay {
        #[command(flatten)]
        connection: Connection,
        #[arg(long, default_value = "internal.dispatch.dead-letter")]
        topic: String,
        #[command(flatten)]
        filter: DlqFilter,
        /// Target topic (default: each record's source topic).
        #[arg(long)]
        to: Option<String>,
        /// Show what would be replayed without producing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
pub enum EndpointsCommand {
    /// Endpoints the dispatcher knows about, disabled ones with their reason.
    List {
        #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
        database_url: String,
    },
    /// Deliver to a disabled endpoint again (within the dispatcher's refresh interval).
    Enable {
        /// The endpoint's URL (it is hashed; the table holds no URL) or its `url_hash`.
        url: String,
        #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
        database_url: String,
    },
}

/// Every record of `topic` present now, in partition order.
async fn read_all(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let mut config = kafka.consumer_config(&format!("esctl-{}", uuid::Uuid::new_v4()));
    config.set("enable.auto.commit", "false");
    let consumer: StreamConsumer = config.create()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("reading topic metadata")?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none())
        .with_context(|| format!("topic {topic} does not exist"))?
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .context("reading watermarks")?;
        if high > low {
            ends.insert(*p, high);
            assignment.add_partition_offset(topic, *p, Offset::Offset(low))?;
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&assignment)?;
    while !ends.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(15), consumer.recv())
            .await
            .context("timed out reading the topic")??;
        let partition = message.partition();
        let offset = message.offset();
        out.push(message.detach());
        if ends.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            ends.remove(&partition);
        }
    }
    out.sort_by_key(|m| (m.partition(), m.offset()));
    Ok(out)
}

fn headers_json<H: Headers>(headers: Option<&H>) -> Json {
    let mut map = serde_json::Map::new();
    if let Some(headers) = headers {
        for h in headers.iter() {
            let value = h
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            map.insert(h.key.to_string(), Json::String(value));
        }
    }
    Json::Object(map)
}

/// A record's value as JSON: decoded from Avro when it is registry-framed, else as UTF-8 JSON.
async fn value_json(registry: &Registry, payload: Option<&[u8]>) -> Json {
    let Some(bytes) = payload else {
        return Json::Null;
    };
    match registry.decode(bytes).await {
        Ok((value, _)) => avro_to_json(&value),
        Err(e) => serde_json::from_slice(bytes)
            .unwrap_or_else(|_| json!({"undecodable": e.message, "bytes": bytes.len()})),
    }
}

fn time_of(message: &OwnedMessage) -> Option<DateTime<Utc>> {
    message
        .timestamp()
        .to_millis()
        .and_then(DateTime::from_timestamp_millis)
}

/// One dead letter as the operator sees it.
async fn describe(registry: &Registry, dlq_topic: &str, message: &OwnedMessage) -> Json {
    let headers = message.headers();
    let get = |key: &str| headers.and_then(|h| header_str(h, key)).map(String::from);
    let value = value_json(registry, message.payload()).await;
    let mut record = json!({
        "dlq": {"topic": dlq_topic, "partition": message.partition(), "offset": message.offset()},
        "time": time_of(message).map(|t| t.to_rfc3339()),
        "error": get(DLQ_ERROR),
        "attempts": get(DLQ_ATTEMPTS).and_then(|a| a.parse::<u32>().ok()),
        "service": get(DLQ_SERVICE),
        "source": {
            "topic": get(DLQ_SOURCE_TOPIC),
            "partition": get(DLQ_SOURCE_PARTITION).and_then(|p| p.parse::<i32>().ok()),
            "offset": get(DLQ_SOURCE_OFFSET).and_then(|o| o.parse::<i64>().ok()),
        },
    });
    // Dispatch requests: name the rule and sink.
    if value.get("request_id").is_some() {
        let action: Json = value
            .get("action")
            .and_then(Json::as_str)
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or(Json::Null);
        record["request"] = json!({
            "request_id": value["request_id"],
            "event_id": value["event_id"],
            "rule_id": value["rule_id"],
            "rule_name": value["rule_name"],
            "rule_version": value["rule_version"],
            "sink": action.get("type"),
        });
    } else {
        record["value"] = value;
    }
    record
}

fn matches(filter: &DlqFilter, record: &Json, time: Option<DateTime<Utc>>) -> bool {
    let request = &record["request"];
    if let Some(rule) = &filter.rule {
        if request["rule_id"] != rule.as_str() && request["rule_name"] != rule.as_str() {
            return false;
        }
    }
    if let Some(sink) = &filter.sink {
        if request["sink"] != sink.as_str() {
            return false;
        }
    }
    if let Some(id) = &filter.request_id {
        if request["request_id"] != id.as_str() {
            return false;
        }
    }
    if let Some(since) = filter.since {
        if time.is_none_or(|t| t < since) {
            return false;
        }
    }
    if let Some(until) = filter.until {
        if time.is_none_or(|t| t >= until) {
            return false;
        }
    }
    true
}

pub async fn dlq(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List {
            connection,
            topic,
            filter,
        } => {
            let registry = connection.registry()?;
            for message in read_all(&connection.kafka(), &topic).await? {
                let record = describe(&registry, &topic, &message).await;
                if matches(&filter, &record, time_of(&message)) {
                    println!("{record}");
                }
            }
        }
        DlqCommand::Replay {
            connection,
            topic,
            filter,
            to,
            dry_run,
        } => {
            let registry = connection.registry()?;
            let producer = Producer::new(&connection.kafka())?;
            let mut replayed = 0usize;
            for message in read_all(&connection.kafka(), &topic).await? {
                let record = describe(&registry, &topic, &message).await;
                if !matches(&filter, &record, time_of(&message)) {
                    continue;
                }
                let target = to
                    .clone()
                    .or_else(|| record["source"]["topic"].as_str().map(String::from))
                    .with_context(|| {
                        format!(
                            "dead letter {}/{} names no source topic; pass --to",
                            message.partition(),
                            message.offset()
                        )
                    })?;
                if dry_run {
                    println!("would replay {} to {target}", record);
                    replayed += 1;
                    continue;
                }
                let mut headers = OwnedHeaders::new();
                if let Some(original) = message.headers() {
                    for h in original.iter() {
                        if h.key.starts_with(DLQ_HEADER_PREFIX)
                            || h.key.starts_with(RETRY_HEADER_PREFIX)
                        {
                            continue;
                        }
                        headers = headers.insert(Header {
                            key: h.key,
                            value: h.value,
                        });
                    }
                }
                let from = format!("{topic}/{}/{}", message.partition(), message.offset());
                headers = headers.insert(Header {
                    key: "replayed_from",
                    value: Some(from.as_str()),
                });
                producer
                    .send(
                        &target,
                        message.key(),
                        message.payload().unwrap_or_default(),
                        headers,
                    )
                    .await
                    .with_context(|| format!("replaying {from} to {target}"))?;
                replayed += 1;
            }
            println!(
                "{} {replayed} dead letter(s)",
                if dry_run { "would replay" } else { "replayed" }
            );
        }
    }
    Ok(())
}

/// Prints records of `topic` decoded from Avro, with key, headers and position.
pub async fn tail(
    connection: Connection,
    topic: String,
    from_beginning: bool,
    count: Option<usize>,
    follow: bool,
) -> anyhow::Result<()> {
    let registry = connection.registry()?;
    let print = |message: &OwnedMessage, value: Json| {
        println!(
            "{}",
            json!({
                "partition": message.partition(),
                "offset": message.offset(),
                "time": time_of(message).map(|t| t.to_rfc3339()),
                "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                "headers": headers_json(message.headers()),
                "value": value,
            })
        );
    };
    let mut printed = 0usize;
    if !follow {
        let messages = read_all(&connection.kafka(), &topic).await?;
        let skip = if from_beginning {
            0
        } else {
            messages.len().saturating_sub(count.unwrap_or(10))
        };
        for message in messages.iter().skip(skip) {
            if count.is_some_and(|c| printed >= c) {
                break;
            }
            let value = value_json(&registry, message.payload()).await;
            print(message, value);
            printed += 1;
        }
        return Ok(());
    }
    let mut config = connection
        .kafka()
        .consumer_config(&format!("esctl-tail-{}", uuid::Uuid::new_v4()));
    config.set("enable.auto.commit", "false").set(
        "auto.offset.reset",
        if from_beginning { "earliest" } else { "latest" },
    );
    let consumer: StreamConsumer = config.create()?;
    consumer.subscribe(&[&topic])?;
    loop {
        let message = tokio::select! {
            m = consumer.recv() => m?.detach(),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let value = value_json(&registry, message.payload()).await;
        print(&message, value);
        printed += 1;
        if count.is_some_and(|c| printed >= c) {
            return Ok(());
        }
    }
}

pub async fn endpoints(command: EndpointsCommand) -> anyhow::Result<()> {
    match command {
        EndpointsCommand::List { database_url } => {
            let client = crate::rules::connect(&database_url).await?;
            for e in substrate_db::dispatch::list_endpoints(&client).await? {
                println!(
                    "{}",
                    json!({"endpoint": e.endpoint, "url_hash": e.url_hash, "disabled": e.disabled,
                           "reason": e.reason, "disabled_at": e.disabled_at.map(|t| t.to_rfc3339())})
                );
            }
        }
        EndpointsCommand::Enable { url, database_url } => {
            let client = crate::rules::connect(&database_url).await?;
            let is_hash = url.len() == 64 && url.bytes().all(|b| b.is_ascii_hexdigit());
            let (hash, shown) = if is_hash {
                (url.to_ascii_lowercase(), url.clone())
            } else {
                (
                    substrate_secrets::url_hash(&url),
                    substrate_secrets::redact_url(&url),
                )
            };
            anyhow::ensure!(
                substrate_db::dispatch::enable_endpoint(&client, &hash).await?,
                "{shown} is not disabled"
            );
            println!("enabled {shown}");
        }
    }
    Ok(())
}
