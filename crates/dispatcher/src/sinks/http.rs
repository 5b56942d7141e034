//! HTTP deliveries (webhooks, Slack, Discord): one shared client that never follows redirects,
//! a whole-request timeout, the SSRF guard, and a concurrency limit per endpoint (scheme, host,
//! port) so a slow endpoint only ever occupies its own slots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::Semaphore;

use crate::outcome::{classify_status, Outcome};
use crate::ssrf;

/// The answer to one POST.
#[derive(Debug)]
pub struct HttpResult {
    pub outcome: Outcome,
    pub status: Option<u16>,
}

pub struct HttpSink {
    client: reqwest::Client,
    allow_private: bool,
    timeout: Duration,
    per_endpoint: usize,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl HttpSink {
    pub fn new(
        timeout: Duration,
        connect_timeout: Duration,
        per_endpoint: usize,
        allow_private: bool,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(per_endpoint)
            .user_agent(concat!(
                "event-substrate-dispatcher/",
                env!("CARGO_PKG_VERSION")
            ));
        if !allow_private {
            builder = builder.dns_resolver(ssrf::GuardedResolver::shared());
        }
        Ok(Self {
            client: builder.build()?,
            allow_private,
            timeout,
            per_endpoint,
            limits: Mutex::new(HashMap::new()),
        })
    }

    fn limit(&self, url: &reqwest::Url) -> Arc<Semaphore> {
        let key = format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );
        self.limits
            .lock()
            .expect("endpoint limits lock")
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint)))
            .clone()
    }

    /// POSTs a JSON `body` with `headers`.
    pub async fn post(&self, url: &str, body: Vec<u8>, headers: &[(String, String)]) -> HttpResult {
        let permanent = |reason: String| HttpResult {
            outcome: Outcome::Permanent { reason },
            status: None,
        };
        let url = match reqwest::Url::parse(url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            Ok(url) => return permanent(format!("`{url}` is not an http(s) URL")),
            Err(e) => return permanent(format!("`{url}` is not a URL: {e}")),
        };
        if !self.allow_private {
            if let Err(reason) = ssrf::check_literal(&url) {
                return permanent(reason);
            }
        }
        let mut map = HeaderMap::new();
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in headers {
            match (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                (Ok(n), Ok(v)) => {
                    map.insert(n, v);
                }
                _ => return permanent(format!("header `{name}` is not a valid HTTP header")),
            }
        }
        let limit = self.limit(&url);
        let _permit = limit
            .acquire_owned()
            .await
            .expect("semaphores are never closed");
        match self.client.post(url).headers(map).body(body).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                // Read (and bound) the body so the connection can be reused.
                let _ = tokio::time::timeout(Duration::from_secs(1), response.bytes()).await;
                HttpResult {
                    outcome: classify_status(status, retry_after.as_deref()),
                    status: Some(status),
                }
            }
            Err(e) => {
                let reason = if e.is_timeout() {
                    format!("timed out after {} ms", self.timeout.as_millis())
                } else {
                    error_chain(&e)
                };
                if reason.contains(ssrf::REFUSED) {
                    permanent(reason)
                } else {
                    HttpResult {
                        outcome: Outcome::Retry {
                            after: None,
                            reason,
                        },
                        status: None,
                    }
                }
            }
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let next = inner.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = inner.source();
    }
    text
}
