//! `esctl rules`: offline work on rule conditions. `check` validates a condition (JSON or text
//! form) against a topic's Avro schema exactly as saving a rule does, prints its canonical JSON
//! form, and with `--event` evaluates it against a sample event.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use substrate_avro::Catalog;
use substrate_rules::{parse_condition, CeAttributes, Event, Matcher};

#[derive(Subcommand)]
pub enum RulesCommand {
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

pub fn run(command: RulesCommand) -> anyhow::Result<()> {
    match command {
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
            // A condition that parses as a JSON object is the JSON form; anything else is text.
            let value = match serde_json::from_str::<serde_json::Value>(&condition) {
                Ok(json @ serde_json::Value::Object(_)) => json,
                _ => serde_json::Value::String(condition),
            };
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
