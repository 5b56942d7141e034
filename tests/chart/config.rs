//! Each service's own config loader reads what the chart renders for it: the ConfigMap file the
//! Deployment mounts (named by `SUBSTRATE_CONFIG`) plus its `SUBSTRATE_*` environment, secrets
//! filled with well-formed stand-ins. Chart and code cannot drift: a key the service does not know
//! fails the load (`deny_unknown_fields`), and the ports the probes and Services use must be the
//! ones the service listens on.

use serde_yaml::{Mapping, Value};
use substrate_runtime::config::load_config_from;

/// A `--set` that changes only the gateway's rendered config (the upgrade test).
pub const CHANGED_GATEWAY_VALUE: &str = "gateway.extraConfig.gateway.retry_after_secs=7";

/// A well-formed value for a secret the chart passes by environment.
fn stand_in(var: &str) -> Value {
    match var {
        "SUBSTRATE_DATABASE__URL" => {
            "postgres://substrate:secret@db.example.internal:5432/postgres?sslmode=require".into()
        }
        // `id:base64(32 bytes)`, as `esctl secrets generate-key` prints it
        "SUBSTRATE_SECRETS__KEYS" => Value::Sequence(vec![
            "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
        ]),
        _ => "stand-in-secret-value-0123456789abcdefghij".into(),
    }
}

/// Sets `a.b.c` = value in a nested mapping.
fn set_path(root: &mut Mapping, path: &[String], value: Value) {
    let (last, parents) = path.split_last().unwrap();
    let mut node = root;
    for key in parents {
        let entry = node
            .entry(Value::String(key.clone()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if !entry.is_mapping() {
            *entry = Value::Mapping(Mapping::new());
        }
        node = entry.as_mapping_mut().unwrap();
    }
    node.insert(Value::String(last.clone()), value);
}

/// Merges `overlay` into `base` (mappings recursively, everything else replaced).
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// The port of a container port name or number.
fn port_of(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().unwrap_or_default();
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// Loads the rendered config of every Deployment with its service's loader; returns how many.
pub fn check_every_service(docs: &[Value]) -> usize {
    let mut checked = 0;
    for deployment in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap();
        let service = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no app.kubernetes.io/component label"));
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let env = container["env"].as_sequence().cloned().unwrap_or_default();
        let config_path = env
            .iter()
            .find(|e| e["name"] == "SUBSTRATE_CONFIG")
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{name}: no SUBSTRATE_CONFIG"));
        let (dir, file) = config_path.rsplit_once('/').unwrap();
        let mount = container["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"].as_str().map(|p| p.trim_end_matches('/')) == Some(dir))
            .unwrap_or_else(|| panic!("{name}: nothing mounted at {dir}"));
        assert!(
            mount["subPath"].is_null(),
            "{name}: a subPath mount never sees ConfigMap updates"
        );
        let volume = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let map = volume["configMap"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {dir} is not a ConfigMap"));
        let text = find(docs, "ConfigMap", map)["data"][file]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: ConfigMap {map} has no {file}"))
            .to_string();
        let mut config: Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {file}: {e}"));
        // The environment after the file, as the loader applies it.
        let mut from_env = Mapping::new();
        for var in &env {
            let key = var["name"].as_str().unwrap();
            let Some(path) = key.strip_prefix("SUBSTRATE_") else {
                continue;
            };
            if key == "SUBSTRATE_CONFIG" {
                continue;
            }
            let path: Vec<String> = path.split("__").map(str::to_lowercase).collect();
            let value = match var["value"].as_str() {
                Some(v) => serde_yaml::from_str::<Value>(v).unwrap_or_else(|_| v.into()),
                None => {
                    assert!(
                        !var["valueFrom"]["secretKeyRef"].is_null(),
                        "{name}: {key} has neither value nor secret"
                    );
                    stand_in(key)
                }
            };
            set_path(&mut from_env, &path, value);
        }
        merge(&mut config, Value::Mapping(from_env));
        let overlay = serde_yaml::to_string(&config).unwrap();
        let listens: Vec<String> = match service {
            "gateway" => {
                let c: gateway::Config = load_config_from(gateway::config::DEFAULTS, &overlay)
                    .unwrap_or_else(|e| panic!("gateway: {e}\n{overlay}"));
                assert!(
                    c.gateway.routes_file.starts_with("/etc/"),
                    "routes from the mounted ConfigMap"
                );
                vec![c.gateway.listen, c.gateway.ops_listen]
            }
            "notification-writer" => {
                let c: notification_writer::Config =
                    load_config_from(&notification_writer::config::defaults(), &overlay)
                        .unwrap_or_else(|e| panic!("notification-writer: {e}\n{overlay}"));
                vec![c.notification_writer.listen]
            }
            "rule-evaluator" => {
                let c: rule_evaluator::Config =
                    load_config_from(rule_evaluator::config::DEFAULTS, &overlay)
                        .unwrap_or_else(|e| panic!("rule-evaluator: {e}\n{overlay}"));
                vec![c.rule_evaluator.listen]
            }
            "dispatcher" => {
                let c: dispatcher::Config =
                    load_config_from(dispatcher::config::DEFAULTS, &overlay)
                        .unwrap_or_else(|e| panic!("dispatcher: {e}\n{overlay}"));
                vec![c.dispatcher.listen]
            }
            "media-saga" => {
                let c: media_saga::Config =
                    load_config_from(media_saga::config::DEFAULTS, &overlay)
                        .unwrap_or_else(|e| panic!("media-saga: {e}\n{overlay}"));
                vec![c.media_saga.listen]
            }
            other => panic!("{name}: unknown component {other}"),
        };
        // Every listener is on all interfaces and is a declared container port; the probes use
        // declared ports.
        let declared: Vec<u64> = container["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|p| p["containerPort"].as_u64())
            .collect();
        for listen in &listens {
            let (host, port) = listen.rsplit_once(':').unwrap();
            assert!(
                host == "0.0.0.0" || host == "[::]",
                "{name}: listens on {listen}"
            );
            assert!(
                declared.contains(&port.parse().unwrap()),
                "{name}: {listen} is not a container port {declared:?}"
            );
        }
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let port = &container[probe]["httpGet"]["port"];
            assert!(!port.is_null(), "{name}: no {probe}");
            let port = port_of(container, port);
            assert!(
                listens.iter().any(|l| l.ends_with(&format!(":{port}"))),
                "{name}: {probe} on {port}, which the service does not listen on ({listens:?})"
            );
        }
        checked += 1;
    }
    checked
}
