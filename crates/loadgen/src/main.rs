//! Load generator for the benchmarks in docs/benchmarks.md. `http` drives the gateway over HTTP
//! (single events or batches, closed-loop or at a fixed rate) and prints accepted events/s and
//! latency percentiles; `raw` produces the same Avro payload straight to the broker with the
//! same producer settings, giving the ceiling; `writer` measures the notification-writer's
//! rows/s on a backlog; `rules` and `dispatch` time the rule-evaluator and the dispatcher;
//! `media` runs upload sagas end to end; `stream` times post → notification stream.
//! Only loopback targets; every run is bounded in time or count.

mod dispatch;
mod http;
mod media;
mod raw;
mod rules;
mod stream;
mod writer;

use std::time::Duration;

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;

#[derive(Parser)]
#[command(name = "loadgen", about = "Event Substrate load generator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST events to the gateway.
    Http(http::Args),
    /// Produce the same payload directly to Kafka (the ceiling).
    Raw(raw::Args),
    /// Fill a topic with N events and time the notification-writer until all rows exist.
    Writer(writer::Args),
    /// Fill the purchase topic with N events and time the rule-evaluator through its metrics.
    Rules(rules::Args),
    /// Fill a requests topic with N signed webhooks and time a dispatcher process delivering them.
    Dispatch(dispatch::Args),
    /// Run upload sagas through the gateway, media-saga and the notification-writer.
    Media(media::Args),
    /// Time posted messages until they arrive on a notification stream; memory per stream.
    Stream(stream::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Http(args) => http::run(args).await,
        Command::Raw(args) => raw::run(args).await,
        Command::Writer(args) => writer::run(args).await,
        Command::Rules(args) => rules::run(args).await,
        Command::Dispatch(args) => dispatch::run(args).await,
        Command::Media(args) => media::run(args).await,
        Command::Stream(args) => stream::run(args).await,
    }
}

/// Where the load goes and how it signs in: the gateway (loopback only) and its HS256 secret.
#[derive(clap::Args)]
pub struct GatewayArgs {
    /// Gateway base URL (loopback only).
    #[arg(
        long = "url",
        env = "GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// HS256 secret the gateway accepts (tokens are minted from it).
    #[arg(long, env = "JWT_SECRET")]
    pub jwt_secret: String,
    /// Audience claim of the minted tokens.
    #[arg(long, env = "SUBSTRATE_AUTH__AUDIENCE")]
    pub audience: Option<String>,
}

impl GatewayArgs {
    /// Refuses any gateway that is not on this machine.
    pub fn ensure_loopback(&self) -> anyhow::Result<()> {
        let url = reqwest::Url::parse(&self.url)?;
        anyhow::ensure!(
            matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")),
            "loadgen only targets loopback"
        );
        Ok(())
    }

    pub fn token(&self, user: uuid::Uuid, email: &str) -> anyhow::Result<String> {
        mint_token(&self.jwt_secret, self.audience.as_deref(), user, email)
    }
}

/// An HS256 token the local gateway accepts, for `user` (Supabase-shaped claims, an hour long).
pub fn mint_token(
    secret: &str,
    audience: Option<&str>,
    user: uuid::Uuid,
    email: &str,
) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp();
    let mut claims = serde_json::json!({"sub": user, "email": email, "role": "authenticated",
                                        "iat": now, "exp": now + 3600});
    if let Some(aud) = audience {
        claims["aud"] = serde_json::json!(aud);
    }
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Parses `10s`, `500ms`, `2m` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: u64 = number.parse().map_err(|_| format!("bad duration {text}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in {text}")),
    }
}

/// A topic to load: its schema from `avro/` and the registry that frames its records.
#[derive(clap::Args)]
pub struct TopicTarget {
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap_servers: String,
    #[arg(long, env = "SCHEMA_REGISTRY_URL")]
    pub schema_registry_url: String,
    #[arg(long, default_value = "public.user.message.events")]
    pub topic: String,
    #[arg(long, default_value = "avro")]
    pub avro_dir: std::path::PathBuf,
}

impl TopicTarget {
    pub fn open(&self) -> anyhow::Result<(substrate_avro::TopicSchema, substrate_avro::Registry)> {
        let catalog = substrate_avro::Catalog::load(&self.avro_dir)?;
        let schema = catalog
            .get(&self.topic)
            .ok_or_else(|| anyhow::anyhow!("no schema for {}", self.topic))?
            .clone();
        let registry = substrate_avro::Registry::new(&substrate_avro::RegistryConfig {
            url: self.schema_registry_url.clone(),
            timeout_ms: 10_000,
        })?;
        Ok((schema, registry))
    }
}

/// Produces records with up to 20,000 in flight, failing on the first error.
pub struct Sender {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    in_flight: futures::stream::FuturesUnordered<
        futures::future::BoxFuture<'static, Result<(), rdkafka::error::KafkaError>>,
    >,
}

impl Sender {
    pub fn new(target: &TopicTarget) -> anyhow::Result<Self> {
        Ok(Self {
            producer: substrate_kafka::KafkaConfig::local(&target.bootstrap_servers)
                .producer_config()
                .create()?,
            topic: target.topic.clone(),
            in_flight: futures::stream::FuturesUnordered::new(),
        })
    }

    pub async fn send(
        &mut self,
        key: String,
        payload: Vec<u8>,
        headers: rdkafka::message::OwnedHeaders,
    ) -> anyhow::Result<()> {
        use futures::{FutureExt, StreamExt};
        let (producer, topic) = (self.producer.clone(), self.topic.clone());
        self.in_flight.push(
            async move {
                let record = rdkafka::producer::FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers);
                producer
                    .send(record, std::time::Duration::from_secs(30))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            }
            .boxed(),
        );
        if self.in_flight.len() >= 20_000 {
            self.in_flight.next().await.transpose()?;
        }
        Ok(())
    }

    /// Waits for every acknowledgement.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        use futures::StreamExt;
        while let Some(result) = self.in_flight.next().await {
            result?;
        }
        Ok(())
    }
}

/// The value of one series (`name` or `name{labels}`) on a service's Prometheus page; 0 while
/// the series does not exist yet.
pub async fn counter(client: &reqwest::Client, url: &str, series: &str) -> anyhow::Result<f64> {
    let text = client.get(url).send().await?.text().await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0))
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// Prints one result line set; latencies are in microseconds in the histogram.
pub fn report(label: &str, events: u64, elapsed: Duration, latency: Option<&Histogram<u64>>) {
    let rate = events as f64 / elapsed.as_secs_f64();
    println!(
        "{label}: {events} events in {:.2} s = {rate:.0} events/s",
        elapsed.as_secs_f64()
    );
    if let Some(h) = latency.filter(|h| !h.is_empty()) {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{label}: latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} requests)",
            ms(0.50),
            ms(0.90),
            ms(0.99),
            h.max() as f64 / 1000.0,
            h.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("x").is_err());
    }
}
