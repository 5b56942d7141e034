//! `esctl`, the operator CLI: apply database migrations, provision topics and schemas, manage
//! rules (their secrets sealed) and the encryption keys, inspect and replay dead letters, tail
//! topics, re-enable endpoints, and mint local tokens.
//! Connection settings come from the same `SUBSTRATE_*` variables the services read (or flags).

mod keys;
mod provision;
mod rules;
mod secrets;
mod topics;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "esctl", about = "Event Substrate operator CLI", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply supabase/migrations/*.sql that have not been applied yet, then seal the secrets of
    /// rules saved before secrets were sealed (needs SUBSTRATE_SECRETS__KEYS when there are any).
    Migrate {
        #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
        database_url: String,
        #[arg(long, default_value = "supabase/migrations")]
        dir: PathBuf,
        #[command(flatten)]
        keyring: secrets::KeyringArgs,
    },
    /// Create every topic of avro/**/*.avsc and topics.yaml and register each schema as
    /// subject `<topic>-value`. Idempotent.
    Provision {
        #[command(flatten)]
        kafka: topics::KafkaArgs,
        #[arg(long, env = "SUBSTRATE_SCHEMA_REGISTRY__URL")]
        schema_registry_url: String,
        #[arg(long, default_value = "avro")]
        avro_dir: PathBuf,
        #[arg(long, default_value = "topics.yaml")]
        topics_file: PathBuf,
    },
    /// Work with business rules.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// API keys of server-to-server sources (`auth: api_key` routes).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Inspect and replay dead letters.
    #[command(subcommand)]
    Dlq(topics::DlqCommand),
    /// Print records of a topic decoded from Avro (the last 10 by default).
    Tail {
        topic: String,
        #[command(flatten)]
        connection: topics::Connection,
        /// Start at the oldest record instead of the last `--count`.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after this many records.
        #[arg(long, short = 'n')]
        count: Option<usize>,
        /// Keep printing new records until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Encryption keys of rule action secrets: status, rotation, pruning; the login webhook
    /// secret.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Endpoints the dispatcher disabled (410 Gone).
    #[command(subcommand)]
    Endpoints(topics::EndpointsCommand),
    /// Print an HS256 JWT the gateway accepts (Supabase claims), for local use and scripts.
    Token {
        #[arg(long, env = "SUBSTRATE_AUTH__JWT_SECRET", hide_env_values = true)]
        jwt_secret: String,
        /// Accepted audience of the gateway (`aud` claim).
        #[arg(long, env = "SUBSTRATE_AUTH__AUDIENCE")]
        audience: Option<String>,
        /// User id (`sub`); a random UUID by default.
        #[arg(long)]
        sub: Option<uuid::Uuid>,
        #[arg(long, default_value = "me@example.com")]
        email: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: i64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber_init();
    match Cli::parse().command {
        Command::Migrate {
            database_url,
            dir,
            keyring,
        } => {
            let mut client =
                substrate_db::connect_one(&substrate_db::DbConfig::from_url(database_url))
                    .await
                    .context("connecting to the database")?;
            let applied = substrate_db::migrate::migrate(&mut client, &dir).await?;
            println!("migrations: {} applied", applied.len());
            for name in applied {
                println!("  {name}");
            }
            let sealed = secrets::seal_inline_rules(&mut client, &keyring).await?;
            if !sealed.is_empty() {
                println!("sealed the secrets of {} rule(s):", sealed.len());
                for name in sealed {
                    println!("  {name}");
                }
            }
        }
        Command::Provision {
            kafka,
            schema_registry_url,
            avro_dir,
            topics_file,
        } => {
            provision::run(
                &kafka.config()?,
                &schema_registry_url,
                &avro_dir,
                &topics_file,
            )
            .await?;
        }
        Command::Rules(command) => rules::run(command).await?,
        Command::Keys(command) => keys::run(command).await?,
        Command::Secrets(command) => secrets::run(command).await?,
        Command::Dlq(command) => topics::dlq(command).await?,
        Command::Tail {
            topic,
            connection,
            from_beginning,
            count,
            follow,
        } => topics::tail(connection, topic, from_beginning, count, follow).await?,
        Command::Endpoints(command) => topics::endpoints(command).await?,
        Command::Token {
            jwt_secret,
            audience,
            sub,
            email,
            ttl,
        } => {
            let now = chrono::Utc::now().timestamp();
            let mut claims = serde_json::json!({
                "sub": sub.unwrap_or_else(uuid::Uuid::new_v4),
                "email": email,
                "role": "authenticated",
                "iat": now,
                "exp": now + ttl,
            });
            if let Some(audience) = audience {
                claims["aud"] = serde_json::json!(audience);
            }
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::default(),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(jwt_secret.as_bytes()),
            )?;
            println!("{token}");
        }
    }
    Ok(())
}

fn tracing_subscriber_init() {
    substrate_runtime::telemetry::init(&substrate_runtime::telemetry::TelemetryConfig {
        log_format: "plain".into(),
        log_filter: "warn".into(),
        ..Default::default()
    });
}
