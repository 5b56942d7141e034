//! `esctl rules`: save (validated against each topic's Avro schema first; the secrets of HTTP
//! actions sealed apart, [`crate::secrets`]), show, list, enable and disable rules, and `check` a
//! condition offline, optionally against a sample event.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use substrate_avro::Catalog;
use substrate_db::rules::{list, set_enabled, RuleRow};
use substrate_rules::{parse_actions, parse_condition, CeAttributes, Event, Matcher};

use crate::secrets::KeyringArgs;

#[derive(Subcommand)]
pub enum RulesCommand {
    /// Create a rule, or update the one with this name (a new version), after validating its
    /// condition and actions against the schema of every topic.
    Save {
        #[arg(long)]
        name: String,
        /// Source topic (repeat for several).
        #[arg(long = "topic", required = true)]
        topics: Vec<String>,
        /// CloudEvents types the rule applies to (repeat; none means any).
        #[arg(long = "event-type")]
        event_types: Vec<String>,
        /// Text or JSON form.
        #[arg(long)]
        condition: String,
        /// JSON array of actions.
        #[arg(long)]
        actions: String,
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// Save the rule disabled.
        #[arg(long)]
        disabled: bool,
        #[arg(long, default_value = "avro")]
        avro_dir: PathBuf,
        #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
        database_url: String,
        /// The keys that seal the secrets of webhook, Slack and Discord actions.
        #[command(flatten)]
        keyring: KeyringArgs,
    },
    /// Print one rule as JSON: its actions as stored (public; secrets are sealed apart).
    Show {
        name: String,
        #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
        database_url: String,
    },
    /// List every rule.
    List {
        #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
        database_url: String,
    },
    /// Enable a rule by name.
    Enable {
        name: String,
        #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
        database_url: String,
    },
    /// Disable a rule by name.
    Disable {
        name: String,
        #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
        database_url: String,
    },
    /// Validate a condition for a topic; with --event, test it against a sample event.
    Check {
        /// Topic whose schema the rule's fields refer to.
        #[arg(long)]
        topic: String,
        /// The condition: text (`purchase.amount > 500 AND user.segment == 'VIP'`) or JSON.
        #[arg(long)]
        condition: String,
        /// A sample event as JSON (a file path, or `-` for standard input).
        #[arg(long)]
        event: Option<String>,
        /// CloudEvents type of the sample event (for `ce.type` conditions).
        #[arg(long, default_value = "")]
        ce_type: String,
        #[arg(long, default_value = "avro")]
        avro_dir: PathBuf,
    },
}

pub async fn run(command: RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::Save {
            name,
            topics,
            event_types,
            condition,
            actions,
            priority,
            disabled,
            avro_dir,
            database_url,
            keyring,
        } => {
            let catalog = Catalog::load(&avro_dir)?;
            let condition_value = condition_value(&condition);
            let expr = parse_condition(&condition_value)
                .map_err(|e| anyhow::anyhow!("invalid condition: {e}"))?;
            let actions: serde_json::Value =
                serde_json::from_str(&actions).context("--actions is not JSON")?;
            let mut parsed = Vec::new();
            for topic in &topics {
                let schema = catalog.get(topic).with_context(|| {
                    format!("topic {topic} has no schema under {}", avro_dir.display())
                })?;
                Matcher::compile(&expr, &schema.schema)
                    .map_err(|e| anyhow::anyhow!("invalid condition for {topic}: {e}"))?;
                parsed = parse_actions(&actions, &schema.schema)
                    .map_err(|e| anyhow::anyhow!("invalid actions for {topic}: {e}"))?;
            }
            let keyring = keyring.keyring()?;
            let mut client = connect(&database_url).await?;
            let mut rule = RuleRow {
                id: uuid::Uuid::nil(),
                name,
                enabled: !disabled,
                topics,
                event_types,
                condition: expr.to_json(),
                condition_text: condition_value.as_str().map(String::from),
                actions: serde_json::Value::Null,
                priority,
                version: 0,
            };
            let (saved, sealed) =
                crate::secrets::save(&mut client, &mut rule, &parsed, keyring.as_ref()).await?;
            print!(
                "saved {} version {} ({})",
                saved.name, saved.version, saved.id
            );
            match keyring.filter(|_| sealed > 0) {
                Some(k) => println!("; sealed {sealed} secret(s) with key {}", k.active_key_id()),
                None => println!(),
            }
            Ok(())
        }
        RulesCommand::Show { name, database_url } => {
            let client = connect(&database_url).await?;
            let rule = list(&client)
                .await?
                .into_iter()
                .find(|r| r.name == name)
                .with_context(|| format!("no rule named {name}"))?;
            println!(
                "{:#}",
                serde_json::json!({
                    "id": rule.id, "name": rule.name, "version": rule.version,
                    "enabled": rule.enabled, "priority": rule.priority, "topics": rule.topics,
                    "event_types": rule.event_types, "condition": rule.condition,
                    "condition_text": rule.condition_text, "actions": rule.actions,
                })
            );
            Ok(())
        }
        RulesCommand::List { database_url } => {
            let client = connect(&database_url).await?;
            for rule in list(&client).await? {
                println!(
                    "{:<28} v{:<3} {:<8} prio {:<4} {:<40} {}",
                    rule.name,
                    rule.version,
                    if rule.enabled { "enabled" } else { "disabled" },
                    rule.priority,
                    rule.topics.join(","),
                    rule.condition_text
                        .unwrap_or_else(|| rule.condition.to_string())
                );
            }
            Ok(())
        }
        RulesCommand::Enable { name, database_url } => toggle(&database_url, &name, true).await,
        RulesCommand::Disable { name, database_url } => toggle(&database_url, &name, false).await,
        RulesCommand::Check {
            topic,
            condition,
            event,
            ce_type,
            avro_dir,
        } => {
            let catalog = Catalog::load(&avro_dir)?;
            let schema = catalog.get(&topic).with_context(|| {
                format!("topic {topic} has no schema under {}", avro_dir.display())
            })?;
            let value = condition_value(&condition);
            let expr =
                parse_condition(&value).map_err(|e| anyhow::anyhow!("invalid condition: {e}"))?;
            let matcher = Matcher::compile(&expr, &schema.schema)
                .map_err(|e| anyhow::anyhow!("invalid condition: {e}"))?;
            println!("valid: {}", expr.to_json());
            if let Some(source) = event {
                let text = if source == "-" {
                    std::io::read_to_string(std::io::stdin())?
                } else {
                    std::fs::read_to_string(&source).with_context(|| format!("reading {source}"))?
                };
                let json: serde_json::Value =
                    serde_json::from_str(&text).context("the event is not JSON")?;
                let record = schema
                    .to_avro(&json)
                    .map_err(|e| anyhow::anyhow!("the event does not fit {topic}: {e}"))?;
                let event = Event {
                    record: &record,
                    ce: CeAttributes {
                        event_type: &ce_type,
                        ..CeAttributes::default()
                    },
                };
                println!("matches: {}", matcher.matches(&event));
            }
            Ok(())
        }
    }
}

/// A condition that parses as a JSON object is the JSON form; anything else is the text form.
fn condition_value(condition: &str) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Value>(condition) {
        Ok(json @ serde_json::Value::Object(_)) => json,
        _ => serde_json::Value::String(condition.to_string()),
    }
}

pub async fn connect(database_url: &str) -> anyhow::Result<tokio_postgres::Client> {
    substrate_db::connect_one(&substrate_db::DbConfig::from_url(database_url))
        .await
        .context("connecting to the database")
}

async fn toggle(database_url: &str, name: &str, enabled: bool) -> anyhow::Result<()> {
    let client = connect(database_url).await?;
    anyhow::ensure!(
        set_enabled(&client, name, enabled).await?,
        "no rule named {name}"
    );
    println!("{name} {}", if enabled { "enabled" } else { "disabled" });
    Ok(())
}
