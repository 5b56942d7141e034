//! `esctl keys`: API keys of server-to-server sources, for the gateway's `auth: api_key` routes.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use substrate_db::api_keys;

#[derive(Args)]
pub struct KeyAccess {
    #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
    database_url: String,
}

#[derive(Args)]
pub struct Pepper {
    /// The gateway's `api_keys.pepper` (keys are hashed with it).
    #[arg(long, env = "SUBSTRATE_API_KEYS__PEPPER", hide_env_values = true)]
    pepper: String,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Mint a key for a source; the key is printed once and only its hash is stored.
    Create {
        #[command(flatten)]
        access: KeyAccess,
        #[command(flatten)]
        pepper: Pepper,
        /// The source (a service or partner) the key belongs to, e.g. `shop`.
        #[arg(long)]
        source: String,
        /// Routes the key may post to, comma-separated (`*`: every api_key route).
        #[arg(long, value_delimiter = ',', required = true)]
        routes: Vec<String>,
        #[arg(long)]
        description: Option<String>,
        /// Checked for the routes (a warning when one is not an `auth: api_key` route).
        #[arg(long, default_value = "routes.yaml")]
        routes_file: PathBuf,
    },
    /// Every key: id, source, routes, state.
    List {
        #[command(flatten)]
        access: KeyAccess,
    },
    /// Replace a key: a new key is printed; the old one keeps working for --overlap.
    Rotate {
        #[command(flatten)]
        access: KeyAccess,
        #[command(flatten)]
        pepper: Pepper,
        /// The key's id (`esk_<id>` or `<id>`).
        id: String,
        /// How long the old key stays valid, e.g. `24h`, `30m`, `0s`.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        overlap: Duration,
    },
    /// Revoke a key now (gateways refuse it within their refresh interval).
    Revoke {
        #[command(flatten)]
        access: KeyAccess,
        /// The key's id (`esk_<id>` or `<id>`).
        id: String,
    },
}

/// `90s`, `30m`, `24h`, `7d` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 24h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{text}`: use s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

fn key_id(id: &str) -> &str {
    id.strip_prefix(api_keys::PREFIX).unwrap_or(id)
}

/// Routes of `routes_file` that do not take API keys (or do not exist), for a warning.
fn not_api_key_routes(routes_file: &PathBuf, routes: &[String]) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(routes_file) else {
        return Vec::new();
    };
    let Ok(doc) = serde_yaml::from_str::<serde_yaml::Value>(&text) else {
        return Vec::new();
    };
    routes
        .iter()
        .filter(|r| r.as_str() != "*")
        .filter(|r| doc["routes"][r.as_str()]["auth"].as_str() != Some("api_key"))
        .cloned()
        .collect()
}

pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create {
            access,
            pepper,
            source,
            routes,
            description,
            routes_file,
        } => {
            api_keys::check_source(&source).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                routes.iter().all(|r| !r.trim().is_empty()),
                "--routes: empty route name"
            );
            for route in not_api_key_routes(&routes_file, &routes) {
                eprintln!(
                    "warning: route `{route}` is not an `auth: api_key` route in {}",
                    routes_file.display()
                );
            }
            let client = crate::rules::connect(&access.database_url).await?;
            let new = api_keys::create(
                &client,
                pepper.pepper.as_bytes(),
                &source,
                &routes,
                description.as_deref(),
            )
            .await
            .context("storing the key")?;
            eprintln!(
                "created key esk_{} for source `{source}` (routes: {}); it is shown only now:",
                new.id,
                routes.join(",")
            );
            println!("{}", new.key);
        }
        KeysCommand::List { access } => {
            let client = crate::rules::connect(&access.database_url).await?;
            let now = chrono::Utc::now();
            println!(
                "{:<17} {:<16} {:<24} {:<8} {:<20} EXPIRES",
                "KEY", "SOURCE", "ROUTES", "STATE", "CREATED"
            );
            for key in api_keys::list(&client).await? {
                let state = if key.revoked_at.is_some() {
                    "revoked"
                } else if !key.active_at(now) {
                    "expired"
                } else if key.expires_at.is_some() {
                    "rotating"
                } else {
                    "active"
                };
                println!(
                    "{:<17} {:<16} {:<24} {:<8} {:<20} {}",
                    key.label(),
                    key.source,
                    key.routes.join(","),
                    state,
                    key.created_at.format("%Y-%m-%d %H:%M:%S"),
                    key.expires_at
                        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_else(|| "-".into()),
                );
            }
        }
        KeysCommand::Rotate {
            access,
            pepper,
            id,
            overlap,
        } => {
            let mut client = crate::rules::connect(&access.database_url).await?;
            let new = api_keys::rotate(&mut client, pepper.pepper.as_bytes(), key_id(&id), overlap)
                .await?;
            eprintln!(
                "esk_{} replaced by esk_{}; the old key works for {} s more. New key, shown only now:",
                key_id(&id),
                new.id,
                overlap.as_secs()
            );
            println!("{}", new.key);
        }
        KeysCommand::Revoke { access, id } => {
            let client = crate::rules::connect(&access.database_url).await?;
            api_keys::revoke(&client, key_id(&id)).await?;
            println!("esk_{} revoked", key_id(&id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
