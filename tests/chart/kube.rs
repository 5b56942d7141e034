//! helm and kubectl against the chart tests' API server (`.local/k8s.env`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_yaml::Value;
use substrate_testkit::repo_root;

pub struct Kube {
    helm: PathBuf,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    crds: Vec<PathBuf>,
}

/// A command's result: success and its stdout and stderr together.
pub struct Out {
    pub ok: bool,
    pub text: String,
    pub stdout: String,
}

impl Out {
    fn of(output: std::process::Output) -> Self {
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        Self {
            ok: output.status.success(),
            text: format!("{stdout}{}", String::from_utf8_lossy(&output.stderr)),
            stdout,
        }
    }
}

fn settings() -> BTreeMap<String, String> {
    let path = repo_root().join(".local/k8s.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} missing: start the chart tests' API server with `bash scripts/stack/k8s.sh start`",
            path.display()
        )
    });
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Kube {
    pub fn load() -> Self {
        let s = settings();
        let get = |k: &str| {
            PathBuf::from(
                s.get(k)
                    .unwrap_or_else(|| panic!("{k} not in .local/k8s.env")),
            )
        };
        Self {
            helm: get("HELM"),
            kubectl: get("KUBECTL"),
            kubeconfig: get("KUBECONFIG"),
            crds: vec![get("SERVICEMONITOR_CRD"), get("SCALEDOBJECT_CRD")],
        }
    }

    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            // helm's own state (repositories, cache) stays out of the home directory
            .env(
                "HELM_CACHE_HOME",
                repo_root().join(".local/data/k8s/helm/cache"),
            )
            .env(
                "HELM_CONFIG_HOME",
                repo_root().join(".local/data/k8s/helm/config"),
            )
            .env(
                "HELM_DATA_HOME",
                repo_root().join(".local/data/k8s/helm/data"),
            );
        command
    }

    fn run(&self, program: &Path, args: &[&str], stdin: Option<&str>) -> Out {
        let mut child = self
            .command(program, args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        Out::of(child.wait_with_output().unwrap())
    }

    /// Starts helm without waiting for it.
    pub fn spawn_helm(&self, args: &[&str]) -> Running {
        let child = self
            .command(&self.helm, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Running(child)
    }

    pub fn helm(&self, args: &[&str]) -> Out {
        self.run(&self.helm, args, None)
    }

    pub fn kubectl(&self, args: &[&str]) -> Out {
        self.run(&self.kubectl, args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Out {
        self.run(&self.kubectl, args, Some(input))
    }

    /// `helm template` of the chart; panics with helm's message when it fails.
    pub fn template(
        &self,
        release: &str,
        namespace: &str,
        files: &[PathBuf],
        sets: &[&str],
    ) -> String {
        let chart = repo_root().join("charts/event-substrate");
        let mut args = vec![
            "template".to_string(),
            release.to_string(),
            chart.display().to_string(),
            "-n".into(),
            namespace.into(),
        ];
        for file in files {
            args.extend(["-f".into(), file.display().to_string()]);
        }
        for set in sets {
            args.extend(["--set".into(), set.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.helm(&args);
        assert!(out.ok, "helm {args:?}:\n{}", out.text);
        out.stdout
    }

    /// A fresh namespace for one test (the API server is shared by the tests of this binary).
    pub fn namespace(&self, prefix: &str) -> String {
        let name = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let out = self.kubectl(&["create", "namespace", &name]);
        assert!(out.ok, "{}", out.text);
        // What a controller-manager would add to every namespace (this API server runs alone).
        let out = self.kubectl(&["create", "serviceaccount", "default", "-n", &name]);
        assert!(out.ok, "{}", out.text);
        name
    }

    /// The CRDs of ServiceMonitor and ScaledObject, installed once and established, and the
    /// cluster-scoped objects the production values refer to.
    pub fn install_crds(&self) {
        static DONE: OnceLock<()> = OnceLock::new();
        DONE.get_or_init(|| {
            for crd in &self.crds {
                let out = self.kubectl(&["apply", "--server-side", "-f", crd.to_str().unwrap()]);
                assert!(out.ok, "{}: {}", crd.display(), out.text);
            }
            // The PriorityClass production-values.yaml names, as a platform team would have it.
            let class = "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\n\
                         metadata:\n  name: event-substrate\nvalue: 100000\n";
            let out = self.kubectl_stdin(&["apply", "-f", "-"], class);
            assert!(out.ok, "{}", out.text);
            for name in [
                "servicemonitors.monitoring.coreos.com",
                "scaledobjects.keda.sh",
            ] {
                let out = self.kubectl(&[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    &format!("crd/{name}"),
                ]);
                assert!(out.ok, "{name}: {}", out.text);
            }
        });
    }

    pub fn get(&self, namespace: &str, kind: &str) -> Value {
        let out = self.kubectl(&["get", kind, "-n", namespace, "-o", "yaml"]);
        assert!(out.ok, "{}", out.text);
        serde_yaml::from_str(&out.stdout).unwrap()
    }

    pub fn names(&self, namespace: &str, kind: &str) -> Vec<String> {
        self.get(namespace, kind)["items"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// Deployment → the `checksum/*` annotations of its pod template.
    pub fn checksums(&self, namespace: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for item in self.get(namespace, "deployments")["items"]
            .as_sequence()
            .unwrap()
        {
            let name = item["metadata"]["name"].as_str().unwrap().to_string();
            if let Some(annotations) =
                item["spec"]["template"]["metadata"]["annotations"].as_mapping()
            {
                let sums: Vec<String> = annotations
                    .iter()
                    .filter(|(k, _)| k.as_str().is_some_and(|k| k.starts_with("checksum/")))
                    .map(|(k, v)| {
                        format!("{}={}", k.as_str().unwrap(), v.as_str().unwrap_or_default())
                    })
                    .collect();
                if !sums.is_empty() {
                    out.insert(name, sums.join(","));
                }
            }
        }
        out
    }
}

/// A helm process started by [`Kube::spawn_helm`].
pub struct Running(std::process::Child);

impl Running {
    pub fn wait(self) -> Out {
        Out::of(self.0.wait_with_output().unwrap())
    }
}

/// The YAML documents of a multi-document stream, empty ones dropped.
pub fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// The ConfigMaps, Secrets and ServiceAccount a pod spec refers to, as (kubectl kind, name).
pub fn references(spec: &Value) -> Vec<(&'static str, String)> {
    let mut refs = Vec::new();
    if let Some(sa) = spec["serviceAccountName"].as_str() {
        refs.push(("serviceaccounts", sa.to_string()));
    }
    for volume in spec["volumes"].as_sequence().into_iter().flatten() {
        if let Some(name) = volume["configMap"]["name"].as_str() {
            refs.push(("configmaps", name.to_string()));
        }
        if let Some(name) = volume["secret"]["secretName"].as_str() {
            refs.push(("secrets", name.to_string()));
        }
    }
    for container in spec["containers"]
        .as_sequence()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_sequence().into_iter().flatten())
    {
        for env in container["env"].as_sequence().into_iter().flatten() {
            if let Some(name) = env["valueFrom"]["secretKeyRef"]["name"].as_str() {
                if env["valueFrom"]["secretKeyRef"]["optional"].as_bool() != Some(true) {
                    refs.push(("secrets", name.to_string()));
                }
            }
            if let Some(name) = env["valueFrom"]["configMapKeyRef"]["name"].as_str() {
                refs.push(("configmaps", name.to_string()));
            }
        }
        for from in container["envFrom"].as_sequence().into_iter().flatten() {
            if let Some(name) = from["secretRef"]["name"].as_str() {
                refs.push(("secrets", name.to_string()));
            }
            if let Some(name) = from["configMapRef"]["name"].as_str() {
                refs.push(("configmaps", name.to_string()));
            }
        }
    }
    refs.sort();
    refs.dedup();
    refs
}
