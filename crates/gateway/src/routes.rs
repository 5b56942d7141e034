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

use crate::limits::{RateLimitSpec, RouteLimits};
use crate::metrics::ROUTES_RELOADS;

/// Record fields the gateway fills itself when the schema has them.
pub const EVENT_ID_FIELD: &str = "event_id";
pub const EVENT_TIME_FIELD: &str = "event_time";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// A valid Bearer JWT of a signed-in user is required.
    Jwt,
    /// An API key of a server-to-server source (`esctl keys create`) allowed on the route.
    ApiKey,
    /// Anonymous ingest (no enrichment is possible).
    None,
}

impl AuthMode {
    /// How the credential is presented, for error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Jwt => "a user's JWT (Authorization: Bearer <jwt>)",
            Self::ApiKey => "an API key (X-API-Key: esk_... or Authorization: Bearer esk_...)",
            Self::None => "no credential",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jwt => "jwt",
            Self::ApiKey => "api_key",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    routes: BTreeMap<String, RouteSpec>,
}

/// Settings of every route that does not set its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    #[serde(default)]
    rate_limit: Option<RateLimitSpec>,
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
    #[serde(default)]
    rate_limit: Option<RateLimitSpec>,
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
    /// Events per principal and per route (counted by this gateway instance).
    pub limits: Arc<RouteLimits>,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    routes: HashMap<String, Arc<Route>>,
}

impl RouteTable {
    /// Parses and checks a routes file against the schema catalog.
    pub fn parse(text: &str, catalog: &Catalog) -> Result<Self, String> {
        Self::parse_after(text, catalog, None)
    }

    /// Like [`parse`](Self::parse); a route whose rate limits did not change keeps its counters
    /// from `previous`, so a reload does not hand out a fresh burst.
    pub fn parse_after(
        text: &str,
        catalog: &Catalog,
        previous: Option<&RouteTable>,
    ) -> Result<Self, String> {
        let file: RoutesFile =
            serde_yaml::from_str(text).map_err(|e| format!("routes.yaml is not valid: {e}"))?;
        if let Some(spec) = &file.defaults.rate_limit {
            spec.check()
                .map_err(|e| format!("defaults.rate_limit: {e}"))?;
        }
        let mut routes = HashMap::new();
        for (name, mut spec) in file.routes {
            if spec.rate_limit.is_none() {
                spec.rate_limit = file.defaults.rate_limit.clone();
            }
            let kept = previous
                .and_then(|table| table.get(&name))
                .map(|route| route.limits.clone());
            let route = Self::check(&name, spec, catalog, kept)?;
            routes.insert(name, Arc::new(route));
        }
        Ok(Self { routes })
    }

    fn check(
        name: &str,
        spec: RouteSpec,
        catalog: &Catalog,
        kept: Option<Arc<RouteLimits>>,
    ) -> Result<Route, String> {
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
        if spec.auth != AuthMode::Jwt && !spec.enrich.is_empty() {
            return Err(bad("enrich needs auth: jwt".into()));
        }
        // Identity fields are the token's to fill, or a trusted source's: never a client's.
        for field in schema.identity_fields() {
            let open = match spec.auth {
                AuthMode::Jwt => !spec.enrich.contains_key(field),
                AuthMode::None => true,
                AuthMode::ApiKey => false,
            };
            if open {
                return Err(bad(format!(
                    "{} declares `{field}` as the poster's identity: with auth: {} a client \
                     could set it; fill it from the token (enrich: {{{field}: <claim>}}) or use \
                     auth: api_key",
                    spec.topic,
                    spec.auth.as_str()
                )));
            }
        }
        let limits = match &spec.rate_limit {
            Some(limit) => {
                limit.check().map_err(|e| bad(format!("rate_limit: {e}")))?;
                match kept {
                    Some(kept) if kept.spec.as_ref() == Some(limit) => kept,
                    _ => Arc::new(RouteLimits::new(Some(limit.clone()))),
                }
            }
            None => Arc::new(RouteLimits::new(None)),
        };
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
            limits,
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.get(name).cloned()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.values()
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
        let previous = self.table();
        let parsed = Catalog::load(&self.avro_dir)
            .map_err(|e| e.to_string())
            .and_then(|catalog| RouteTable::parse_after(&text, &catalog, Some(&previous)));
        match parsed {
            Ok(table) => {
                tracing::info!(routes = table.len(), "routes.yaml reloaded");
                *self.current.write().expect("route table lock") = Arc::new(table);
                metrics::counter!(ROUTES_RELOADS, "outcome" => "applied", "file" => self.routes_file.display().to_string()).increment(1);
            }
            Err(error) => {
                tracing::warn!(%error, "routes.yaml is invalid; keeping the last good routes");
                metrics::counter!(ROUTES_RELOADS, "outcome" => "invalid", "file" => self.routes_file.display().to_string()).increment(1);
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
        assert_eq!(table.get("purchase").unwrap().auth, AuthMode::ApiKey);
    }

    #[test]
    fn defaults_apply_and_unchanged_limits_survive_a_reload() {
        let text = "defaults: {rate_limit: {principal: {per_second: 5}}}\n\
                    routes:\n  a: {topic: public.commerce.purchase.events, event_type: a.b, auth: api_key}\n  \
                    b: {topic: public.commerce.purchase.events, event_type: a.b, auth: api_key, rate_limit: {route: {per_second: 9}}}\n";
        let first = RouteTable::parse(text, &catalog()).unwrap();
        let a = first.get("a").unwrap();
        assert_eq!(
            a.limits
                .spec
                .as_ref()
                .and_then(|s| s.principal.as_ref())
                .and_then(|r| r.per_second),
            Some(5)
        );
        let b = first.get("b").unwrap();
        assert!(
            b.limits.spec.as_ref().unwrap().principal.is_none(),
            "a route's own limit wins"
        );
        let second = RouteTable::parse_after(text, &catalog(), Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&a.limits, &second.get("a").unwrap().limits));
        let changed = text.replace("per_second: 5", "per_second: 6");
        let third = RouteTable::parse_after(&changed, &catalog(), Some(&second)).unwrap();
        assert!(!Arc::ptr_eq(&a.limits, &third.get("a").unwrap().limits));
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
            (
                "routes: {x: {topic: public.user.message.events, event_type: a.b, auth: jwt, enrich: {sender_id: sub}}}",
                "declares `sender_email` as the poster's identity",
            ),
            (
                "routes: {x: {topic: public.user.message.events, event_type: a.b, auth: none}}",
                "with auth: none a client could set it",
            ),
            (
                "routes: {x: {topic: public.commerce.purchase.events, event_type: a.b, auth: jwt}}",
                "declares `user`",
            ),
            (
                "routes: {x: {topic: public.commerce.purchase.events, event_type: a.b, auth: api_key, enrich: {user: sub}}}",
                "enrich needs auth: jwt",
            ),
            (
                "routes: {x: {topic: public.commerce.purchase.events, event_type: a.b, auth: api_key, rate_limit: {principal: {per_second: 0}}}}",
                "rate_limit: principal: the rate must be above 0",
            ),
            (
                "defaults: {rate_limit: {}}\nroutes: {}",
                "defaults.rate_limit",
            ),
        ];
        for (text, fragment) in cases {
            let err = RouteTable::parse(text, &catalog()).unwrap_err();
            assert!(err.contains(fragment), "{err} should mention {fragment}");
        }
    }
}
