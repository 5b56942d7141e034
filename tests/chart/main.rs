//! The Helm chart (`charts/event-substrate`) against real components: helm v3.22.0 and a real
//! kube-apiserver v1.37.2 on etcd, both on loopback (`scripts/stack/k8s.sh start`, which
//! `scripts/test.sh` runs first and writes `.local/k8s.env`). Lint with every values file,
//! refusals of bad values, strict server-side validation of every rendered object (the
//! ServiceMonitor and ScaledObject CRDs installed into the API server), install / upgrade /
//! uninstall, the migrations hook Job, and each service's own config loader reading the
//! config the chart renders for it.

mod config;
mod kube;

use std::path::PathBuf;

use substrate_testkit::repo_root;

use kube::{documents, Kube};

fn chart() -> PathBuf {
    repo_root().join("charts/event-substrate")
}

fn values(name: &str) -> PathBuf {
    chart().join("ci").join(name)
}

/// The values files of the positive cases, each a whole installation.
const VALUES: [&str; 3] = [
    "minimal-values.yaml",
    "production-values.yaml",
    "keda-values.yaml",
];

#[test]
fn lint_strict_with_the_default_values_and_every_values_file() {
    let kube = Kube::load();
    for file in VALUES {
        let out = kube.helm(&[
            "lint",
            "--strict",
            chart().to_str().unwrap(),
            "-f",
            values(file).to_str().unwrap(),
        ]);
        assert!(out.ok, "helm lint --strict -f {file}:\n{}", out.text);
    }
    let out = kube.helm(&["lint", "--strict", chart().to_str().unwrap()]);
    assert!(out.ok, "helm lint --strict (default values):\n{}", out.text);
}

#[test]
fn invalid_values_are_refused_with_a_message_naming_the_problem() {
    let kube = Kube::load();
    let dir = chart().join("ci/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "unknown key, wrong type, missing secret: {files:?}"
    );
    for file in files {
        // The first line says what must be refused: `# refused: <text the error contains>`.
        let text = std::fs::read_to_string(&file).unwrap();
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# refused: "))
            .unwrap_or_else(|| panic!("{}: no `# refused:` line", file.display()))
            .trim()
            .to_string();
        let chart = chart();
        for command in [&["lint", "--strict"][..], &["template", "check"][..]] {
            let mut args: Vec<&str> = command.to_vec();
            args.push(chart.to_str().unwrap());
            args.extend(["-f", file.to_str().unwrap()]);
            let out = kube.helm(&args);
            assert!(
                !out.ok,
                "helm {command:?} accepted {}:\n{}",
                file.display(),
                out.text
            );
            assert!(
                out.text.contains(&expected),
                "helm {command:?} -f {}: the error does not say `{expected}`:\n{}",
                file.display(),
                out.text
            );
        }
    }
}

#[test]
fn every_rendered_object_passes_strict_server_side_validation() {
    let kube = Kube::load();
    kube.install_crds();
    for file in VALUES {
        let namespace = kube.namespace(&format!("dry-{}", file.split('-').next().unwrap()));
        let rendered = kube.template("dry", &namespace, &[values(file)], &[]);
        let kinds: Vec<String> = documents(&rendered)
            .iter()
            .filter_map(|d| d["kind"].as_str().map(str::to_string))
            .collect();
        assert!(
            kinds.iter().filter(|k| *k == "Deployment").count() == 5,
            "{file}: {kinds:?}"
        );
        let out = kube.kubectl_stdin(
            &[
                "apply",
                "--dry-run=server",
                "--validate=strict",
                "-n",
                &namespace,
                "-f",
                "-",
            ],
            &rendered,
        );
        assert!(out.ok, "{file}: the API server refused:\n{}", out.text);
        // Every object was validated (none skipped), hooks and the test pod included.
        let validated = out
            .text
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        assert_eq!(validated, kinds.len(), "{file}:\n{}", out.text);
        if file.starts_with("production") {
            for kind in [
                "HorizontalPodAutoscaler",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "Ingress",
                "ServiceMonitor",
            ] {
                assert!(
                    kinds.iter().any(|k| k == kind),
                    "{file} renders no {kind}: {kinds:?}"
                );
            }
        }
        if file.starts_with("keda") {
            let scaled = kinds.iter().filter(|k| *k == "ScaledObject").count();
            assert_eq!(scaled, 4, "one ScaledObject per consumer: {kinds:?}");
        }
    }
}

#[test]
fn install_upgrade_and_uninstall_against_the_api_server() {
    let kube = Kube::load();
    let namespace = kube.namespace("install");
    let release = "es";
    let minimal = values("minimal-values.yaml");
    let release_command = |verb: &str, extra: &[&str]| {
        let chart = chart();
        let mut args = vec![
            verb,
            release,
            chart.to_str().unwrap(),
            "-n",
            &namespace,
            "-f",
            minimal.to_str().unwrap(),
            "--no-hooks",
            "--timeout",
            "60s",
        ];
        args.extend_from_slice(extra);
        kube.helm(&args)
    };
    let out = release_command("install", &[]);
    assert!(out.ok, "helm install:\n{}", out.text);
    let deployments = kube.names(&namespace, "deployments");
    assert_eq!(deployments.len(), 5, "{deployments:?}");
    for kind in ["configmaps", "secrets", "services", "serviceaccounts"] {
        assert!(
            !kube.names(&namespace, kind).is_empty(),
            "no {kind} installed"
        );
    }
    let before = kube.checksums(&namespace);
    assert_eq!(
        before.len(),
        5,
        "a config checksum on every pod template: {before:?}"
    );

    // A changed config value rolls exactly the pods whose config changed.
    let out = release_command("upgrade", &["--set", config::CHANGED_GATEWAY_VALUE]);
    assert!(out.ok, "helm upgrade:\n{}", out.text);
    let after = kube.checksums(&namespace);
    let changed: Vec<&String> = after
        .iter()
        .filter(|(name, sum)| before.get(*name) != Some(sum))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        changed.len(),
        1,
        "only the gateway's config changed: {before:?} → {after:?}"
    );
    assert!(changed[0].contains("gateway"), "{changed:?}");
    let history = kube.helm(&["history", release, "-n", &namespace]);
    assert!(
        history.text.contains("deployed") && history.text.lines().count() >= 3,
        "{}",
        history.text
    );

    let out = kube.helm(&[
        "uninstall",
        release,
        "-n",
        &namespace,
        "--no-hooks",
        "--wait",
        "--timeout",
        "60s",
    ]);
    assert!(out.ok, "helm uninstall:\n{}", out.text);
    assert!(kube.names(&namespace, "deployments").is_empty());
    assert!(kube
        .names(&namespace, "configmaps")
        .iter()
        .all(|n| n == "kube-root-ca.crt"));
}

#[test]
fn the_migrations_hook_job_runs_first_with_what_it_needs() {
    let kube = Kube::load();
    let namespace = kube.namespace("hooks");
    // Without a controller-manager no Job ever runs, so helm waits for the pre-install hook until
    // its timeout (and then deletes the hook's helpers). What is asserted, while helm waits: the
    // Job exists with everything its pod refers to, and nothing of the release proper yet.
    let install = kube.spawn_helm(&[
        "install",
        "hooked",
        chart().to_str().unwrap(),
        "-n",
        &namespace,
        "-f",
        values("minimal-values.yaml").to_str().unwrap(),
        "--timeout",
        "40s",
    ]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let job = loop {
        let jobs = kube.get(&namespace, "jobs");
        if let Some(job) = jobs["items"]
            .as_sequence()
            .and_then(|items| items.first())
            .cloned()
        {
            break job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no hook Job was created"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let hook = job["metadata"]["annotations"]["helm.sh/hook"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        hook.contains("pre-install") && hook.contains("pre-upgrade"),
        "{hook}"
    );
    let spec = &job["spec"]["template"]["spec"];
    let text = serde_yaml::to_string(spec).unwrap();
    assert!(
        text.contains("migrate") && text.contains("provision"),
        "{text}"
    );
    for (kind, name) in kube::references(spec) {
        assert!(
            kube.names(&namespace, kind).contains(&name),
            "the Job needs {kind}/{name}, which does not exist while it waits"
        );
    }
    assert!(
        kube.names(&namespace, "deployments").is_empty(),
        "the hook runs before the release"
    );
    let out = install.wait();
    assert!(
        !out.ok,
        "the hook cannot complete without a controller:\n{}",
        out.text
    );
}

#[test]
fn each_service_loads_the_config_the_chart_renders_for_it() {
    let kube = Kube::load();
    for file in VALUES {
        let rendered = kube.template("cfg", "default", &[values(file)], &[]);
        let docs = documents(&rendered);
        let checked = config::check_every_service(&docs);
        assert_eq!(checked, 5, "{file}: all five services");
    }
}
