//! In-process services for tests that need settings of their own, and small HTTP helpers.

use std::net::SocketAddr;
use std::path::Path;

use substrate_runtime::Shutdown;
use substrate_testkit::{repo_root, Stack};
use tokio::net::TcpListener;

/// A gateway running inside the test process.
pub struct TestGateway {
    pub url: String,
    /// The operational listener (`/readyz`, `/metrics`).
    pub ops_url: String,
    pub shutdown: Shutdown,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestGateway {
    /// Starts a gateway against the stack with `overlay` (YAML) on top of the defaults.
    pub async fn start(stack: &Stack, routes_file: &Path, overlay: &str) -> Self {
        let base = format!(
            "gateway:\n  routes_file: {routes}\n  avro_dir: {avro}\n  routes_poll_secs: 1\n\
             kafka:\n  bootstrap_servers: {kafka}\n\
             schema_registry:\n  url: {registry}\n\
             auth:\n  jwt_secret: {secret}\n\
             webhooks:\n  login_secret: {login}\n",
            routes = routes_file.display(),
            avro = repo_root().join("avro").display(),
            kafka = stack.bootstrap_servers,
            registry = stack.registry_url,
            secret = stack.jwt_secret,
            login = stack.login_webhook_secret,
        );
        let merged = merge_yaml(&base, overlay);
        let config: gateway::Config =
            substrate_runtime::config::load_config_from(gateway::config::DEFAULTS, &merged)
                .expect("test gateway config");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let ops_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops_addr: SocketAddr = ops_listener.local_addr().unwrap();
        let shutdown = Shutdown::default();
        let handle = tokio::spawn(gateway::serve(
            config,
            listener,
            ops_listener,
            shutdown.clone(),
        ));
        // A gateway that could not start says why here rather than as a refused connection.
        tokio::task::yield_now().await;
        if handle.is_finished() {
            panic!("the test gateway stopped: {:?}", handle.await);
        }
        Self {
            url: format!("http://{addr}"),
            ops_url: format!("http://{ops_addr}"),
            shutdown,
            handle,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle.await.unwrap().unwrap();
    }
}

/// Deep-merges two YAML documents (`overlay` wins).
pub fn merge_yaml(base: &str, overlay: &str) -> String {
    fn merge(a: &mut serde_yaml::Value, b: serde_yaml::Value) {
        match (a, b) {
            (serde_yaml::Value::Mapping(a), serde_yaml::Value::Mapping(b)) => {
                for (k, v) in b {
                    match a.get_mut(&k) {
                        Some(existing) => merge(existing, v),
                        None => {
                            a.insert(k, v);
                        }
                    }
                }
            }
            (a, b) => *a = b,
        }
    }
    let mut doc: serde_yaml::Value = serde_yaml::from_str(base).unwrap();
    if !overlay.trim().is_empty() {
        merge(&mut doc, serde_yaml::from_str(overlay).unwrap());
    }
    serde_yaml::to_string(&doc).unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs JSON with an optional bearer token; returns status, headers and JSON body.
pub async fn post_json(
    url: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let mut request = http().post(url).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, headers, body)
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

/// A Server-Sent Events reader over a streaming response (comments such as heartbeats are
/// skipped).
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
        }
    }

    /// The next event; `None` when the stream ended or nothing came within `wait`.
    pub async fn next(&mut self, wait: std::time::Duration) -> Option<SseEvent> {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block);
                let mut event = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut fields = 0;
                for line in text.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    let (name, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    fields += 1;
                    match name {
                        "id" => event.id = Some(value.to_string()),
                        "event" => event.event = Some(value.to_string()),
                        "data" => {
                            if !event.data.is_empty() {
                                event.data.push('\n');
                            }
                            event.data.push_str(value);
                        }
                        _ => {}
                    }
                }
                if fields > 0 {
                    return Some(event);
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
                _ => return None,
            }
        }
    }
}
