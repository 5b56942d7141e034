//! `esctl secrets`: the keyring (`SUBSTRATE_SECRETS__KEYS`, `…__ACTIVE_KEY_ID`) that seals the
//! secrets of rule actions, rotation to a new key, pruning of superseded secrets, a fresh key for
//! configuration, and the login webhook secret. Also what `esctl migrate` runs after the SQL:
//! sealing the secrets of rules saved before secrets were sealed. Nothing here prints a secret.

use std::io::Read;

use anyhow::Context;
use clap::{Args, Subcommand};
use substrate_db::rules::RuleRow;
use substrate_rules::{split_actions, Action, PublicAction};
use substrate_secrets::{Keyring, SecretsConfig};

/// Where the keys come from: the environment, as for the dispatcher (flags are hidden: a key
/// on a command line is visible to every user of the machine).
#[derive(Args, Clone, Default)]
pub struct KeyringArgs {
    /// `id:base64(32 bytes)` entries, comma-separated; the first seals unless
    /// `--secrets-active-key-id` names another.
    #[arg(
        long = "secrets-keys",
        env = "SUBSTRATE_SECRETS__KEYS",
        hide = true,
        hide_env_values = true
    )]
    pub keys: Option<String>,
    #[arg(
        long = "secrets-active-key-id",
        env = "SUBSTRATE_SECRETS__ACTIVE_KEY_ID"
    )]
    pub active_key_id: Option<String>,
}

impl KeyringArgs {
    /// The keyring, or `None` when no key is configured.
    pub fn keyring(&self) -> anyhow::Result<Option<Keyring>> {
        let Some(keys) = self.keys.as_deref().filter(|k| !k.trim().is_empty()) else {
            return Ok(None);
        };
        let config = SecretsConfig {
            keys: keys
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            active_key_id: self.active_key_id.clone(),
        };
        let keyring = config
            .keyring("secrets")
            .map_err(|e| anyhow::anyhow!("SUBSTRATE_{}: {}", env_name(&e.key), e.message))?;
        Ok(Some(keyring))
    }

    pub fn require(&self) -> anyhow::Result<Keyring> {
        self.keyring()?.context(
            "no encryption key: set SUBSTRATE_SECRETS__KEYS (the dispatcher's secrets.keys) to \
             `id:base64(32 bytes)` entries; `esctl secrets generate-key` makes one",
        )
    }
}

/// `secrets.keys` → `SECRETS__KEYS`.
fn env_name(key: &str) -> String {
    key.to_uppercase().replace('.', "__")
}

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// How many sealed secrets each key id holds, and whether the login webhook secret is set.
    Status {
        #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
        database_url: String,
        #[command(flatten)]
        keyring: KeyringArgs,
    },
    /// Re-seal every action secret with the active key (the first of SUBSTRATE_SECRETS__KEYS).
    /// Put the new key first and keep the old ones until this has run and every dispatcher has
    /// the new key; then drop the old ones.
    Rotate {
        #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
        database_url: String,
        #[command(flatten)]
        keyring: KeyringArgs,
    },
    /// Delete secrets no request can need any more: those of rule versions superseded by a
    /// version saved more than this many days ago, and those of deleted rules sealed before
    /// then. Dead letters of those versions can no longer be replayed.
    Prune {
        #[arg(long)]
        older_than_days: u32,
        #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
        database_url: String,
    },
    /// Print a new random key as a SUBSTRATE_SECRETS__KEYS entry (`id:base64`).
    GenerateKey {
        /// The key id (letters, digits, `.`, `_`, `-`), e.g. the date it was made.
        #[arg(long)]
        id: String,
    },
    /// Store the login webhook secret where only the database owner (and the trigger) can
    /// read it. Reads SUBSTRATE_WEBHOOKS__LOGIN_SECRET (the gateway's), or standard input.
    SetLoginWebhookSecret {
        #[arg(long, env = "SUBSTRATE_DATABASE__URL")]
        database_url: String,
        /// Read the secret from standard input instead of the environment.
        #[arg(long)]
        stdin: bool,
        #[arg(
            long = "secret",
            env = "SUBSTRATE_WEBHOOKS__LOGIN_SECRET",
            hide = true,
            hide_env_values = true
        )]
        secret: Option<String>,
    },
}

pub async fn run(command: SecretsCommand) -> anyhow::Result<()> {
    match command {
        SecretsCommand::Status {
            database_url,
            keyring,
        } => {
            let client = crate::rules::connect(&database_url).await?;
            let configured: Vec<String> = match keyring.keyring()? {
                Some(k) => k.key_ids().map(String::from).collect(),
                None => Vec::new(),
            };
            for (key_id, rows) in substrate_db::secrets::count_by_key(&client).await? {
                let note = if configured.is_empty() || configured.contains(&key_id) {
                    ""
                } else {
                    "  (not in SUBSTRATE_SECRETS__KEYS: run `esctl secrets rotate` with it)"
                };
                println!("key {key_id}: {rows} sealed secret(s){note}");
            }
            let inline = rules_with_inline_secrets(&client).await?.len();
            println!("rules with secrets inline: {inline}");
            match substrate_db::secrets::login_webhook_secret_set_at(&client).await? {
                Some(at) => println!("login webhook secret: set {}", at.to_rfc3339()),
                None => println!("login webhook secret: not set"),
            }
        }
        SecretsCommand::Rotate {
            database_url,
            keyring,
        } => {
            let keyring = keyring.require()?;
            let mut client = crate::rules::connect(&database_url).await?;
            let rotation = substrate_db::secrets::rotate(&mut client, &keyring).await?;
            println!(
                "re-sealed {} secret(s) with key {}",
                rotation.resealed,
                keyring.active_key_id()
            );
            for (rule, version, index, error) in &rotation.failed {
                eprintln!("rule {rule} version {version} action {index}: {error}");
            }
            anyhow::ensure!(
                rotation.failed.is_empty(),
                "{} secret(s) did not open and keep their old key",
                rotation.failed.len()
            );
        }
        SecretsCommand::Prune {
            older_than_days,
            database_url,
        } => {
            let client = crate::rules::connect(&database_url).await?;
            let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(older_than_days));
            let n = substrate_db::secrets::prune(&client, cutoff).await?;
            println!("pruned {n} sealed secret(s)");
        }
        SecretsCommand::GenerateKey { id } => {
            println!("{}", substrate_secrets::keyring::generate_key_entry(&id)?);
        }
        SecretsCommand::SetLoginWebhookSecret {
            database_url,
            stdin,
            secret,
        } => {
            let secret = if stdin {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                text.trim_end_matches(['\r', '\n']).to_string()
            } else {
                secret
                    .context("set SUBSTRATE_WEBHOOKS__LOGIN_SECRET or pass the secret on --stdin")?
            };
            anyhow::ensure!(!secret.is_empty(), "the login webhook secret is empty");
            let client = crate::rules::connect(&database_url).await?;
            substrate_db::secrets::set_login_webhook_secret(&client, &secret).await?;
            println!("login webhook secret stored in substrate_private.settings");
        }
    }
    Ok(())
}

/// Rules whose stored actions still carry secrets inline.
async fn rules_with_inline_secrets(
    client: &tokio_postgres::Client,
) -> anyhow::Result<Vec<RuleRow>> {
    let mut found = Vec::new();
    for rule in substrate_db::rules::list(client).await? {
        let inline = rule
            .actions
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| matches!(PublicAction::parse(a), Ok((_, Some(_)))));
        if inline {
            found.push(rule);
        }
    }
    Ok(found)
}

/// Moves the secrets of rules saved before secrets were sealed into `action_secrets` (each such
/// rule gets a new version whose actions are public); returns the rules changed. Without a key
/// this fails when there is anything to seal.
pub async fn seal_inline_rules(
    client: &mut tokio_postgres::Client,
    keyring: &KeyringArgs,
) -> anyhow::Result<Vec<String>> {
    let rules = rules_with_inline_secrets(client).await?;
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let keyring = keyring.require().with_context(|| {
        format!(
            "{} rule(s) carry secrets inline and are not evaluated until they are sealed",
            rules.len()
        )
    })?;
    let mut sealed = Vec::new();
    for mut rule in rules {
        let actions: Vec<Action> = rule
            .actions
            .as_array()
            .into_iter()
            .flatten()
            // Actions without secrets (s3, kafka, notification) read the same in both forms; an
            // action whose secret was already sealed lacks its secret field and does not parse.
            .map(|a| {
                serde_json::from_value(a.clone()).map_err(|e| {
                    anyhow::anyhow!(
                        "rule {} mixes sealed and inline actions ({e}); save it again with esctl",
                        rule.name
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        save(client, &mut rule, &actions, Some(&keyring)).await?;
        sealed.push(rule.name);
    }
    Ok(sealed)
}

/// Saves `rule` with `actions`: the public parts in the rule, the secrets sealed beside it, in
/// one transaction. Returns the saved rule (with its id and version) and how many were sealed.
pub async fn save(
    client: &mut tokio_postgres::Client,
    rule: &mut RuleRow,
    actions: &[Action],
    keyring: Option<&Keyring>,
) -> anyhow::Result<(RuleRow, usize)> {
    let (public, secrets) = split_actions(actions);
    rule.actions = public;
    let plaintexts: Vec<(i32, Vec<u8>)> = secrets.iter().map(|(i, s)| (*i, s.to_bytes())).collect();
    let saved = match keyring {
        Some(keyring) => {
            substrate_db::secrets::save_rule(client, rule, &plaintexts, keyring).await?
        }
        None if plaintexts.is_empty() => substrate_db::rules::upsert(client, rule).await?,
        None => anyhow::bail!(
            "webhook, Slack and Discord actions are sealed: set SUBSTRATE_SECRETS__KEYS (the \
             dispatcher's secrets.keys); `esctl secrets generate-key` makes a key"
        ),
    };
    Ok((saved, plaintexts.len()))
}
