//! The live rule table: enabled rules from Postgres, reloaded on `rules_changed` notifications
//! and on a periodic resync, compiled lazily per (topic, writer schema id) so fields are read by
//! position in the records actually decoded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use apache_avro::Schema;
use futures::StreamExt;
use substrate_db::rules::{load_enabled, RuleRow, RULES_CHANGED};
use substrate_db::Pool;
use substrate_rules::{parse_condition, Expr, PublicAction, RuleSet};
use substrate_runtime::Shutdown;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::metrics::{RULES_LOADED, RULE_RELOADS, RULE_VERSION};

/// One enabled rule, parsed.
#[derive(Debug)]
pub struct RuleDef {
    pub id: Uuid,
    pub name: String,
    pub version: i32,
    pub event_types: Vec<String>,
    pub condition: Expr,
    /// Each action as JSON text, as it goes into dispatch requests: the public form, without
    /// secrets (those are sealed in `substrate_private.action_secrets`).
    pub actions: Vec<String>,
}

#[derive(Default)]
struct Snapshot {
    generation: u64,
    by_topic: HashMap<String, Vec<Arc<RuleDef>>>,
    /// Version of every loaded rule, by name (what the `rule_version` gauge shows).
    versions: HashMap<String, i32>,
}

pub type CompiledRules = RuleSet<Arc<RuleDef>>;

/// Compiled rule sets by (topic, writer schema id), with the snapshot generation they come from.
type CompiledCache = HashMap<(String, u32), (u64, Arc<CompiledRules>)>;

pub struct Store {
    pool: Pool,
    snapshot: RwLock<Arc<Snapshot>>,
    compiled: Mutex<CompiledCache>,
}

impl Store {
    pub fn new(pool: Pool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            compiled: Mutex::new(HashMap::new()),
        })
    }

    /// Reads every enabled rule and swaps the table; returns how many are in effect. Rules whose
    /// condition no longer parses are skipped with a warning (they were validated when saved).
    pub async fn reload(&self) -> Result<usize, substrate_db::DbError> {
        let client = self.pool.get().await?;
        let rows = load_enabled(&**client).await?;
        let mut by_topic: HashMap<String, Vec<Arc<RuleDef>>> = HashMap::new();
        let mut versions = HashMap::new();
        for row in rows {
            match parse(&row) {
                Ok(def) => {
                    versions.insert(def.name.clone(), def.version);
                    let def = Arc::new(def);
                    for topic in &row.topics {
                        by_topic.entry(topic.clone()).or_default().push(def.clone());
                    }
                }
                Err(error) => {
                    tracing::warn!(rule = %row.name, %error, "skipping a rule that does not parse")
                }
            }
        }
        // Rules in effect: the enabled ones that parse.
        let count = versions.len();
        let generation = {
            let mut current = self.snapshot.write().expect("rules lock");
            let generation = current.generation + 1;
            // Under the lock, so the gauges always describe the table in place.
            publish_versions(&current.versions, &versions);
            *current = Arc::new(Snapshot {
                generation,
                by_topic,
                versions,
            });
            generation
        };
        self.compiled
            .lock()
            .expect("compiled lock")
            .retain(|_, (g, _)| *g == generation);
        metrics::gauge!(RULES_LOADED).set(count as f64);
        metrics::counter!(RULE_RELOADS).increment(1);
        tracing::debug!(rules = count, generation, "rules reloaded");
        Ok(count)
    }

    /// The compiled rules for records of `topic` written with schema `schema_id`.
    pub fn rules_for(&self, topic: &str, schema_id: u32, schema: &Schema) -> Arc<CompiledRules> {
        let snapshot = self.snapshot.read().expect("rules lock").clone();
        let key = (topic.to_string(), schema_id);
        if let Some((generation, set)) = self.compiled.lock().expect("compiled lock").get(&key) {
            if *generation == snapshot.generation {
                return set.clone();
            }
        }
        let mut set = RuleSet::new();
        for rule in snapshot.by_topic.get(topic).into_iter().flatten() {
            if let Err(error) = set.add(rule.clone(), &rule.condition, schema) {
                tracing::warn!(rule = %rule.name, topic, schema_id, %error, "rule does not fit this schema; skipped");
            }
        }
        let set = Arc::new(set);
        self.compiled
            .lock()
            .expect("compiled lock")
            .insert(key, (snapshot.generation, set.clone()));
        set
    }
}

/// Sets `rule_version` to the version of every loaded rule, and to 0 for the rules of the
/// previous table that are no longer loaded (disabled, deleted, renamed, or no longer parsing).
fn publish_versions(previous: &HashMap<String, i32>, loaded: &HashMap<String, i32>) {
    for name in previous.keys().filter(|name| !loaded.contains_key(*name)) {
        metrics::gauge!(RULE_VERSION, "rule" => name.clone()).set(0.0);
    }
    for (name, version) in loaded {
        metrics::gauge!(RULE_VERSION, "rule" => name.clone()).set(f64::from(*version));
    }
}

fn parse(row: &RuleRow) -> Result<RuleDef, String> {
    let condition = parse_condition(&row.condition).map_err(|e| e.to_string())?;
    let mut actions = Vec::new();
    for (index, action) in row
        .actions
        .as_array()
        .ok_or("actions is not an array")?
        .iter()
        .enumerate()
    {
        // Only the public form travels: an action with its secrets inline (saved before
        // secrets were sealed, or written to the table directly) is not sent anywhere.
        match PublicAction::parse(action) {
            Ok((_, None)) => actions.push(action.to_string()),
            Ok((_, Some(_))) => {
                return Err(format!(
                    "action {index} carries its secrets inline; seal them with `esctl migrate` \
                     (with secrets.keys set) or save the rule again with esctl"
                ))
            }
            Err(e) => return Err(format!("action {index}: {e}")),
        }
    }
    Ok(RuleDef {
        id: row.id,
        name: row.name.clone(),
        version: row.version,
        event_types: row.event_types.clone(),
        condition,
        actions,
    })
}

/// Keeps the store current: LISTEN on `rules_changed` (reconnecting when the connection drops)
/// plus a full reload every `resync`.
pub fn spawn_listener(
    store: Arc<Store>,
    database: substrate_db::DbConfig,
    resync: Duration,
    lifecycle: &Shutdown,
) {
    let shutdown = lifecycle.token();
    lifecycle.spawn("rules listener", async move {
        while !shutdown.is_cancelled() {
            if let Err(error) = listen(&store, &database, resync, &shutdown).await {
                tracing::warn!(%error, "rules listener lost its connection; reconnecting");
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        Ok(())
    });
}

async fn listen(
    store: &Store,
    database: &substrate_db::DbConfig,
    resync: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    // The service's own settings (TLS included); a LISTEN connection is idle, so the statement
    // timeout does not matter to it.
    let (client, mut connection) = substrate_db::connect(database).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Drives the connection; aborted when this function returns, however it returns.
    let _driver = AbortOnDropHandle::new(tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                    let _ = tx.send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }));
    client
        .batch_execute(&format!("LISTEN {RULES_CHANGED}"))
        .await?;
    // Changes made before LISTEN took effect are covered by this reload.
    store.reload().await?;
    let mut ticker = tokio::time::interval(resync);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            received = rx.recv() => {
                if received.is_none() {
                    anyhow::bail!("notification stream ended");
                }
                while rx.try_recv().is_ok() {}
                store.reload().await?;
            }
            _ = ticker.tick() => {
                store.reload().await?;
            }
        }
    }
    Ok(())
}
