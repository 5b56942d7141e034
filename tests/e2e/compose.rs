//! docker-compose.yml cannot run on machines without Docker, so it is checked statically: it
//! parses; every service, port, environment variable and mounted file it names exists in the
//! repository and matches the services' configuration keys.

use std::collections::BTreeMap;

use serde_yaml::Value;
use substrate_testkit::repo_root;

fn compose() -> Value {
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    serde_yaml::from_str(&text).expect("docker-compose.yml parses")
}

/// `${VAR:-default}` → `default` (compose interpolation with the default taken).
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        let default = inner.split_once(":-").map(|(_, d)| d).unwrap_or("");
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(map) = service.get("environment").and_then(Value::as_mapping) {
        for (k, v) in map {
            let key = k.as_str().unwrap().to_string();
            if key == "<<" {
                for (k2, v2) in v.as_mapping().unwrap() {
                    env.insert(
                        k2.as_str().unwrap().to_string(),
                        interpolate(&yaml_text(v2)),
                    );
                }
            } else {
                env.insert(key, interpolate(&yaml_text(v)));
            }
        }
    }
    env
}

fn yaml_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other).unwrap().trim().to_string(),
    }
}

/// `SUBSTRATE_A__B=v` variables as a nested YAML document `a: {b: v}`.
fn config_overlay(env: &BTreeMap<String, String>, sections: &[&str], service: &str) -> String {
    let mut root = serde_yaml::Mapping::new();
    for (key, value) in env {
        let Some(path) = key.strip_prefix("SUBSTRATE_") else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        assert!(
            sections.contains(&parts[0].as_str()),
            "{service}: {key} names section `{}`, which {service} does not read",
            parts[0]
        );
        let mut node = &mut root;
        for part in &parts[..parts.len() - 1] {
            node = node
                .entry(Value::String(part.clone()))
                .or_insert_with(|| Value::Mapping(Default::default()))
                .as_mapping_mut()
                .unwrap();
        }
        node.insert(
            Value::String(parts.last().unwrap().clone()),
            Value::String(value.clone()),
        );
    }
    serde_yaml::to_string(&root).unwrap()
}

#[test]
fn compose_file_matches_the_repository() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    let names: Vec<&str> = services.keys().map(|k| k.as_str().unwrap()).collect();
    for required in [
        "redpanda",
        "postgres",
        "minio",
        "provision",
        "gateway",
        "notification-writer",
    ] {
        assert!(names.contains(&required), "compose lacks {required}");
    }

    for (name, service) in services {
        let name = name.as_str().unwrap();
        if let Some(build) = service.get("build") {
            let context = repo_root().join(build["context"].as_str().unwrap());
            assert!(context.is_dir(), "{name}: build context");
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            assert!(
                dockerfile.is_file(),
                "{name}: {} missing",
                dockerfile.display()
            );
            // One image with every binary; the command names the service's binary.
            assert_eq!(
                service["image"].as_str(),
                Some("event-substrate:local"),
                "{name}: the one image"
            );
            let command = yaml_text(&service["command"]);
            let first = service["command"][0].as_str().unwrap_or_default();
            // `sh -c "esctl migrate && esctl provision"` for the one-shot provisioning.
            let binary = if first == "sh" { "esctl" } else { first };
            assert!(
                repo_root()
                    .join("crates")
                    .join(binary)
                    .join("src/main.rs")
                    .is_file(),
                "{name}: command {command} does not run a binary of the workspace"
            );
            let dockerfile_text = std::fs::read_to_string(&dockerfile).unwrap();
            assert!(
                dockerfile_text.contains(&format!("/usr/local/bin/{binary}")),
                "{name}: the Dockerfile does not install {binary}"
            );
        }
        for volume in service
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let host = volume.as_str().unwrap().split(':').next().unwrap();
            if host.starts_with("./") {
                assert!(
                    repo_root().join(host).exists(),
                    "{name}: mounted {host} missing"
                );
            }
        }
        for dependency in service
            .get("depends_on")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
        {
            let dep = dependency.0.as_str().unwrap();
            assert!(names.contains(&dep), "{name} depends on unknown {dep}");
        }
    }

    // The services' variables are configuration keys they read, and their ports are the ones
    // they listen on.
    let gateway_env = environment(&services["gateway"]);
    let overlay = config_overlay(
        &gateway_env,
        &[
            "gateway",
            "kafka",
            "schema_registry",
            "auth",
            "api_keys",
            "webhooks",
            "media",
            "database",
            "s3",
            "telemetry",
        ],
        "gateway",
    );
    let config: gateway::Config =
        substrate_runtime::config::load_config_from(gateway::config::DEFAULTS, &overlay)
            .unwrap_or_else(|e| panic!("gateway env in compose: {e}"));
    assert!(config.gateway.routes_file.starts_with("/config"));
    assert_port(&services["gateway"], &config.gateway.listen);

    let writer_env = environment(&services["notification-writer"]);
    let overlay = config_overlay(
        &writer_env,
        &[
            "notification_writer",
            "kafka",
            "schema_registry",
            "database",
            "telemetry",
        ],
        "notification-writer",
    );
    let config: notification_writer::Config = substrate_runtime::config::load_config_from(
        &notification_writer::config::defaults(),
        &overlay,
    )
    .unwrap_or_else(|e| panic!("notification-writer env in compose: {e}"));
    assert_port(
        &services["notification-writer"],
        &config.notification_writer.listen,
    );

    let evaluator_env = environment(&services["rule-evaluator"]);
    let overlay = config_overlay(
        &evaluator_env,
        &[
            "rule_evaluator",
            "kafka",
            "schema_registry",
            "database",
            "telemetry",
        ],
        "rule-evaluator",
    );
    let config: rule_evaluator::Config =
        substrate_runtime::config::load_config_from(rule_evaluator::config::DEFAULTS, &overlay)
            .unwrap_or_else(|e| panic!("rule-evaluator env in compose: {e}"));
    assert_port(&services["rule-evaluator"], &config.rule_evaluator.listen);

    let dispatcher_env = environment(&services["dispatcher"]);
    let overlay = config_overlay(
        &dispatcher_env,
        &[
            "dispatcher",
            "kafka",
            "schema_registry",
            "database",
            "s3",
            "secrets",
            "telemetry",
        ],
        "dispatcher",
    );
    let config: dispatcher::Config =
        substrate_runtime::config::load_config_from(dispatcher::config::DEFAULTS, &overlay)
            .unwrap_or_else(|e| panic!("dispatcher env in compose: {e}"));
    assert_port(&services["dispatcher"], &config.dispatcher.listen);
    assert!(config.s3.is_some(), "the dispatcher gets the object store");
    assert_eq!(
        environment(&services["provision"]).get("SUBSTRATE_SECRETS__KEYS"),
        dispatcher_env.get("SUBSTRATE_SECRETS__KEYS"),
        "esctl seals rule secrets with the key the dispatcher opens them with"
    );

    let saga_env = environment(&services["media-saga"]);
    let overlay = config_overlay(
        &saga_env,
        &[
            "media_saga",
            "kafka",
            "schema_registry",
            "database",
            "s3",
            "telemetry",
        ],
        "media-saga",
    );
    let config: media_saga::Config =
        substrate_runtime::config::load_config_from(media_saga::config::DEFAULTS, &overlay)
            .unwrap_or_else(|e| panic!("media-saga env in compose: {e}"));
    assert_port(&services["media-saga"], &config.media_saga.listen);
    let minio_env = environment(&services["minio"]);
    assert_eq!(
        minio_env.get("MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_MEDIA"),
        config.media_saga.webhook_secret.as_ref(),
        "MinIO authenticates to media-saga's webhook with its secret"
    );

    // esctl reads its connection settings from the same variables (clap `env`).
    let esctl: String = std::fs::read_dir(repo_root().join("crates/esctl/src"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    for key in environment(&services["provision"])
        .keys()
        .filter(|k| k.starts_with("SUBSTRATE_"))
    {
        assert!(
            esctl.contains(&format!("env = \"{key}\"")),
            "esctl does not read {key}"
        );
    }
    let command = yaml_text(&services["provision"]["command"]);
    assert!(command.contains("esctl migrate") && command.contains("esctl provision"));

    // Everything the image copies exists.
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for source in &parts[1..parts.len() - 1] {
            if *source != "." {
                assert!(
                    repo_root().join(source).exists(),
                    "Dockerfile copies missing {source}"
                );
            }
        }
    }
}

fn assert_port(service: &Value, listen: &str) {
    let port = listen.rsplit(':').next().unwrap();
    let published: Vec<String> = service["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().rsplit(':').next().unwrap().to_string())
        .collect();
    assert!(
        published.contains(&port.to_string()),
        "listens on {port} but publishes {published:?}"
    );
}

#[test]
fn interpolation_takes_defaults() {
    assert_eq!(interpolate("${A:-x}y"), "xy");
    assert_eq!(interpolate("plain"), "plain");
}

/// Compose's Prometheus scrapes each service where it serves `/metrics` (the gateway's
/// operational listener), and the services send spans to compose's Jaeger.
#[test]
fn compose_observability_matches_the_services() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    let text =
        std::fs::read_to_string(repo_root().join("deploy/observability/compose/prometheus.yml"))
            .unwrap();
    let prometheus: Value = serde_yaml::from_str(&text).expect("prometheus.yml parses");
    let targets: Vec<String> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|job| job["static_configs"].as_sequence().unwrap().clone())
        .flat_map(|c| c["targets"].as_sequence().unwrap().clone())
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    for (service, key) in [
        ("gateway", "SUBSTRATE_GATEWAY__OPS_LISTEN"),
        (
            "notification-writer",
            "SUBSTRATE_NOTIFICATION_WRITER__LISTEN",
        ),
        ("rule-evaluator", "SUBSTRATE_RULE_EVALUATOR__LISTEN"),
        ("dispatcher", "SUBSTRATE_DISPATCHER__LISTEN"),
        ("media-saga", "SUBSTRATE_MEDIA_SAGA__LISTEN"),
    ] {
        let env = environment(&services[service]);
        let port = env[key].rsplit(':').next().unwrap().to_string();
        assert!(
            targets.contains(&format!("{service}:{port}")),
            "prometheus does not scrape {service}:{port}: {targets:?}"
        );
        let otlp = env
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .unwrap_or_else(|| panic!("{service} has no OTLP endpoint"));
        let host = otlp
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap();
        assert!(
            services.contains_key(host),
            "{service} sends spans to unknown {host}"
        );
    }
}
