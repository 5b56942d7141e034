//! The route table (`routes.yaml`): which routes exist, their topic, auth mode, key field, JWT
//! enrichment and extra requirements, each checked against the topic's Avro schema when loaded.
//! The table is swapped atomically on reload; an invalid file never replaces a good table.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use serde::Deserialize;
use substrate_avro::{Catalog, TopicSchema};
use substrate_runtime::Shutdown;

use crate::metrics::ROUTES_RELOADS;

/// Record fields the gateway fills itself when the schema has them.
pub const EVENT_ID_FIELD: &str = "event_id";
pub const EVENT_TIME_FIELD: &str = "event_time";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// A valid Bearer JWT is required.
    Jwt,
    /// Anonymous ingest (no enrichment is possible).
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    #[serde(default)]
    routes: BTreeMap<String, RouteSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    topic: String,
    event_type: String,
    auth: AuthMode,
    #[serde(default)]
    key_field: Option<String>,
    #[serde(default)]
    enrich: BTreeMap<String, String>,
    #[serde(default)]
    require: Vec<Requirement>,
}

/// `field` must be present and non-null (when every `when` field equals its value).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub field: String,
    #[serde(default)]
    pub when: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub topic: String,
    pub event_type: String,
    pub auth: AuthMode,
    pub key_field: Option<String>,
    /// record field → JWT claim
    pub enrich: Vec<(String, String)>,
    pub require: Vec<Requirement>,
    pub schema: TopicSchema,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    routes: HashMap<String, Arc<Route>>,
}

impl RouteTable {
    /// Parses and checks a routes file against the schema catalog.
    pub fn parse(text: &str, catalog: &Catalog) -> Result<Self, String> {
        let file: RoutesFile =
            serde_yaml::from_str(text).map_err(|e| format!("routes.yaml is not valid: {e}"))?;
        let mut routes = HashMap::new();
        for (name, spec) in file.routes {
            let route = Self::check(&name, spec, catalog)?;
            routes.insert(name, Arc::new(route));
        }
        Ok(Self { routes })
    }

    fn check(name: &str, spec: RouteSpec, catalog: &Catalog) -> Result<Route, String> {
        let bad = |msg: String| format!("route `{name}`: {msg}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            return Err(bad(
                "the name may only use letters, digits, '-', '_' and '.'".into(),
            ));
        }
        let schema = catalog
            .get(&spec.topic)
            .ok_or_else(|| bad(format!("topic `{}` has no schema under avro/", spec.topic)))?
            .clone();
        if !substrate_rules::names::is_event_type(&spec.event_type) {
            return Err(bad(substrate_rules::names::event_type_rule(
                &spec.event_type,
            )));
        }
        let field_exists = |field: &str, what: &str| {
            if schema.has_field(field) {
                Ok(())
            } else {
                Err(bad(format!(
                    "{what} `{field}` is not a field of {}",
                    spec.topic
                )))
            }
        };
        if let Some(key) = &spec.key_field {
            field_exists(key, "key_field")?;
        }
        for field in spec.enrich.keys() {
            field_exists(field, "enrich field")?;
        }
        if spec.auth == AuthMode::None && !spec.enrich.is_empty() {
            return Err(bad("enrich needs auth: jwt".into()));
        }
        for req in &spec.require {
            field_exists(&req.field, "required field")?;
            for when in req.when.keys() {
                field_exists(when, "condition field")?;
            }
        }
        Ok(Route {
            name: name.to_string(),
            topic: spec.topic,
            event_type: spec.event_type,
            auth: spec.auth,
            key_field: spec.key_field,
            enrich: spec.enrich.into_iter().collect(),
            require: spec.require,
            schema,
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.get(name).cloned()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The live route table plus what is needed to reload it.
pub struct RouteStore {
    current: RwLock<Arc<RouteTable>>,
    last_text: RwLock<String>,
    routes_file: PathBuf,
    avro_dir: PathBuf,
}

impl RouteStore {
    /// Loads the table; at start-up an invalid file is an error.
    pub fn load(routes_file: &Path, avro_dir: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(routes_file)
            .map_err(|e| format!("reading {}: {e}", routes_file.display()))?;
        let catalog = Catalog::load(avro_dir).map_err(|e| e.to_string())?;
        let table = RouteTable::parse(&text, &catalog)?;
        Ok(Self {
            current: RwLock::new(Arc::new(table)),
            last_text: RwLock::new(text),
            routes_file: routes_file.to_path_buf(),
            avro_dir: avro_dir.to_path_buf(),
        })
    }

    pub fn table(&self) -> Arc<RouteTable> {
        self.current.read().expect("route table lock").clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Route>> {
        self.current.read().expect("route table lock").get(name)
    }

    /// Re-reads the file; swaps the table when the text changed and is valid.
    pub fn reload(&self) {
        let text = match std::fs::read_to_string(&self.routes_file) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(file = %self.routes_file.display(), error = %e, "routes file unreadable; keeping the current routes");
                return;
            }
        };
        if *self.last_text.read().expect("routes text lock") == text {
            return;
        }
        let parsed = Catalog::load(&self.avro_dir)
            .map_err(|e| e.to_string())
            .and_then(|catalog| RouteTable::parse(&text, &catalog));
        match parsed {
            Ok(table) => {
                tracing::info!(routes = table.len(), "routes.yaml reloaded");
                *self.current.write().expect("route table lock") = Arc::new(table);
                metrics::counter!(ROUTES_RELOADS, "result" => "applied", "file" => self.routes_file.display().to_string()).increment(1);
            }
            Err(error) => {
                tracing::warn!(%error, "routes.yaml is invalid; keeping the last good routes");
                metrics::counter!(ROUTES_RELOADS, "result" => "invalid", "file" => self.routes_file.display().to_string()).increment(1);
            }
        }
        *self.last_text.write().expect("routes text lock") = text;
    }

    /// Watches the routes file's folder (so Kubernetes ConfigMap symlink swaps are seen) and
    /// polls every `poll` as a fallback (never when `poll` is zero); reloads until shutdown.
    pub fn watch(self: Arc<Self>, poll: Duration, lifecycle: &Shutdown) {
        let shutdown = lifecycle.token();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let dir = self
            .routes_file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok() {
                let _ = tx.send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|_| w));
        let watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch routes folder; polling only");
                None
            }
        };
        lifecycle.spawn("routes watcher", async move {
            let _watcher = watcher;
            // A zero poll interval turns the fallback off: only file-system events reload.
            let mut ticker = tokio::time::interval(poll.max(Duration::from_millis(100)));
            let polling = !poll.is_zero();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = ticker.tick(), if polling => {}
                    Some(()) = rx.recv() => {
                        // Let an editor or a symlink swap finish, then take every queued event.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        while rx.try_recv().is_ok() {}
                    }
                }
                let store = self.clone();
                let _ = tokio::task::spawn_blocking(move || store.reload()).await;
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../avro")).unwrap()
    }

    #[test]
    fn the_repository_routes_are_valid() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../routes.yaml"),
        )
        .unwrap();
        let table = RouteTable::parse(&text, &catalog()).unwrap();
        let message = table.get("message").unwrap();
        assert_eq!(message.topic, "public.user.message.events");
        assert_eq!(message.auth, AuthMode::Jwt);
    }

    #[test]
    fn invalid_routes_name_the_problem() {
        let cases = [
            ("routes: {x: {topic: nope, event_type: a.b, auth: jwt}}", "topic `nope`"),
            (
                "routes: {x: {topic: public.user.message.events, event_type: Bad, auth: jwt}}",
                "event_type",
            ),
            (
                "routes: {x: {topic: public.user.message.events, event_type: a.b, auth: jwt, key_field: nope}}",
                "key_field `nope`",
            ),
            (
                "routes: {x: {topic: public.user.message.events, event_type: a.b, auth: none, enrich: {sender_id: sub}}}",
                "enrich needs auth",
            ),
            ("routes: {x: {topic: public.user.message.events, event_type: a.b, auth: maybe}}", "not valid"),
            ("routes: [", "not valid"),
        ];
        for (text, fragment) in cases {
            let err = RouteTable::parse(text, &catalog()).unwrap_err();
            assert!(err.contains(fragment), "{err} should mention {fragment}");
        }
    }
}
