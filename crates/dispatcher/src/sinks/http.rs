//! HTTP deliveries (webhooks, Slack, Discord): one shared client that never follows redirects,
//! a whole-request timeout (an action may set its own), the SSRF guard, a concurrency limit per
//! endpoint (scheme, host, port) so a slow endpoint only ever occupies its own slots, bounds on
//! how many requests may wait for one endpoint (beyond them the caller defers the request to a
//! delay topic instead of holding it), and at most a few KiB read of any answer. URLs may be
//! secrets: no error or log here quotes one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use substrate_runtime::trace::{TraceParent, TRACEPARENT};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::outcome::{classify_status, Outcome};
use crate::ssrf;

/// The answer to one POST.
#[derive(Debug)]
pub struct HttpResult {
    pub outcome: Outcome,
    pub status: Option<u16>,
}

/// At most this much of an answer is read (enough for an error message; the rest is dropped).
const MAX_ANSWER_BYTES: usize = 4096;
/// When the endpoint map holds this many entries, idle ones are removed.
const PRUNE_AT: usize = 1024;

/// How many requests one endpoint may hold, and when it counts as stalled.
#[derive(Debug, Clone, Copy)]
pub struct EndpointLimits {
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Requests always admitted (in flight or waiting for a slot).
    pub queue: usize,
    /// Beyond `queue`, a request is held only while the endpoint is expected to reach it
    /// within this long at the rate it has been answering (a hanging endpoint: never); else it
    /// is deferred, so a slow endpoint cannot take the in-flight slots of the others.
    pub max_wait: Duration,
    /// Before its first answer, an endpoint may hold at most this many (it has
    /// [`FIRST_ANSWER_GRACE`] to answer before it counts as hanging).
    pub max: usize,
}

/// How long a busy endpoint may take to give its first answer before it counts as hanging.
pub const FIRST_ANSWER_GRACE: Duration = Duration::from_secs(1);

/// One endpoint's slots, how many requests hold or wait for one, and how fast it answers.
struct Endpoint {
    permits: Arc<Semaphore>,
    load: AtomicUsize,
    rate: Mutex<Rate>,
}

/// Answers per second, counted in one-second windows.
struct Rate {
    /// Milliseconds since [`epoch`] when the endpoint became busy.
    busy_ms: u64,
    /// Milliseconds since [`epoch`] when the current window (or the busy spell) started.
    since_ms: u64,
    answers: u64,
    /// Answers in the last complete window, if one completed while busy.
    last: Option<u64>,
    /// Moving average of how long an answer takes, once one came.
    latency_ms: Option<f64>,
}

impl Rate {
    fn new(now: u64) -> Self {
        Self {
            busy_ms: now,
            since_ms: now,
            answers: 0,
            last: None,
            latency_ms: None,
        }
    }

    fn answered(&mut self, now: u64, took_ms: f64) {
        if now.saturating_sub(self.since_ms) >= 1000 {
            self.last = Some(self.answers);
            self.answers = 0;
            self.since_ms = now;
        }
        self.answers += 1;
        self.latency_ms = Some(match self.latency_ms {
            Some(average) => average * 0.8 + took_ms * 0.2,
            None => took_ms,
        });
    }

    fn answered_any(&self) -> bool {
        self.answers > 0 || self.last.is_some()
    }

    /// How long `queued` requests would take: at the rate observed (the last whole window or
    /// the current one), or at `concurrency` requests per answer time, whichever is faster (the
    /// first window counts the wait for the first answers, so it alone underrates an endpoint
    /// that just started answering); forever while it has answered nothing.
    fn wait_ms(&self, queued: usize, now: u64, concurrency: usize) -> u64 {
        let elapsed = now.saturating_sub(self.since_ms).max(1);
        let current = self.answers * 1000 / elapsed;
        let by_latency = self
            .latency_ms
            .map_or(0, |ms| (concurrency as f64 * 1000.0 / ms.max(1.0)) as u64);
        match self.last.unwrap_or(0).max(current).max(by_latency) {
            0 => u64::MAX,
            per_second => queued as u64 * 1000 / per_second,
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

/// Counts a request against its endpoint's load while it lives.
struct Load(Arc<Endpoint>);

/// A request's place in its endpoint's queue ([`HttpSink::reserve`]).
pub struct Reservation(#[allow(dead_code)] Option<Load>);

impl Drop for Load {
    fn drop(&mut self) {
        self.0.load.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct HttpSink {
    client: reqwest::Client,
    allow_private: bool,
    timeout: Duration,
    limits: EndpointLimits,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

impl HttpSink {
    pub fn new(
        timeout: Duration,
        connect_timeout: Duration,
        limits: EndpointLimits,
        allow_private: bool,
        proxy: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(limits.concurrency)
            .user_agent(concat!(
                "event-substrate-dispatcher/",
                env!("CARGO_PKG_VERSION")
            ));
        builder = match proxy {
            Some(url) => builder.proxy(reqwest::Proxy::all(url)?),
            None => builder.no_proxy(),
        };
        if !allow_private {
            builder = builder.dns_resolver(ssrf::GuardedResolver::shared());
        }
        Ok(Self {
            client: builder.build()?,
            allow_private,
            timeout,
            limits,
            endpoints: Mutex::new(HashMap::new()),
        })
    }

    fn key(url: &reqwest::Url) -> String {
        format!(
            "{}://{}:{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        )
    }

    fn endpoint(&self, key: String) -> Arc<Endpoint> {
        let mut endpoints = self.endpoints.lock().expect("endpoints lock");
        if endpoints.len() >= PRUNE_AT && !endpoints.contains_key(&key) {
            // Entries nobody holds are idle: their endpoint has no request in flight.
            endpoints.retain(|_, e| Arc::strong_count(e) > 1);
        }
        endpoints
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Endpoint {
                    permits: Arc::new(Semaphore::new(self.limits.concurrency)),
                    load: AtomicUsize::new(0),
                    rate: Mutex::new(Rate::new(now_ms())),
                })
            })
            .clone()
    }

    /// Counts a request against its endpoint until the returned reservation is dropped; `None`
    /// when the endpoint already holds `limits.queue` requests and, at the rate it has been
    /// answering, would not reach this one within `limits.max_wait` (a hanging endpoint never
    /// would). The caller defers the request rather than hold it in memory. A busy endpoint that
    /// answers fast keeps its backlog. Check and count are one step, so concurrent callers never
    /// overshoot.
    pub fn reserve(&self, url: &str) -> Option<Reservation> {
        let Ok(url) = reqwest::Url::parse(url) else {
            // `post` refuses it permanently.
            return Some(Reservation(None));
        };
        let endpoint = self.endpoint(Self::key(&url));
        let before = endpoint.load.fetch_add(1, Ordering::SeqCst);
        let now = now_ms();
        let admit = {
            let mut rate = endpoint.rate.lock().expect("endpoint rate lock");
            if before == 0 {
                // Busy from now: its rate is measured from here, not from long ago.
                *rate = Rate::new(now);
            }
            if before < self.limits.queue {
                true
            } else if !rate.answered_any() {
                // No answer yet: held while it may still be starting up, up to a share.
                before < self.limits.max
                    && now.saturating_sub(rate.busy_ms) < FIRST_ANSWER_GRACE.as_millis() as u64
            } else {
                rate.wait_ms(before, now, self.limits.concurrency)
                    <= self.limits.max_wait.as_millis() as u64
            }
        };
        if !admit {
            endpoint.load.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Reservation(Some(Load(endpoint))))
    }

    /// POSTs a JSON `body` with `headers`, waiting at most `timeout` (else the default), in a
    /// client span whose context the request carries on as `traceparent` (without tracing: a
    /// child of `trace`, the request's own context).
    pub async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        headers: &[(String, String)],
        timeout: Option<Duration>,
        trace: Option<TraceParent>,
    ) -> HttpResult {
        let permanent = |reason: String| HttpResult {
            outcome: Outcome::Permanent { reason },
            status: None,
        };
        let url = match reqwest::Url::parse(url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => url,
            // The URL may be a secret: errors name only what is wrong with it.
            Ok(url) => {
                return permanent(format!(
                    "the URL's scheme `{}` is not http(s)",
                    url.scheme()
                ))
            }
            Err(e) => return permanent(format!("the URL does not parse: {e}")),
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
        // The URL may be a secret (Slack's, Discord's): the span names only the host.
        let span = if substrate_runtime::trace::enabled() {
            tracing::debug_span!(
                "http client",
                otel.name = "POST",
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                http.request.method = "POST",
                server.address = url.host_str(),
                server.port = url.port_or_known_default(),
                http.response.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let carried = TraceParent::of(&span).or_else(|| trace.map(|t| t.child()));
        if let Some(carried) = carried {
            if let Ok(value) = HeaderValue::from_str(&carried.to_string()) {
                map.insert(HeaderName::from_static(TRACEPARENT), value);
            }
        }
        let result = self
            .send(url, map, body, timeout)
            .instrument(span.clone())
            .await;
        match result.status {
            Some(status) => {
                span.record("http.response.status_code", status);
                if status >= 400 {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", status.to_string());
                }
            }
            None => {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", "no answer");
            }
        }
        result
    }

    async fn send(
        &self,
        url: reqwest::Url,
        map: HeaderMap,
        body: Vec<u8>,
        timeout: Option<Duration>,
    ) -> HttpResult {
        let permanent = |reason: String| HttpResult {
            outcome: Outcome::Permanent { reason },
            status: None,
        };
        let endpoint = self.endpoint(Self::key(&url));
        let _permit = endpoint
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphores are never closed");
        let timeout = timeout.unwrap_or(self.timeout);
        let request = self
            .client
            .post(url)
            .headers(map)
            .body(body)
            .timeout(timeout);
        let started = Instant::now();
        let sent = request.send().await;
        // Any answer (an error status, a refused connection) counts; a timeout does not.
        if !matches!(&sent, Err(e) if e.is_timeout()) {
            endpoint
                .rate
                .lock()
                .expect("endpoint rate lock")
                .answered(now_ms(), started.elapsed().as_secs_f64() * 1000.0);
        }
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                // Read a short answer so the connection can be reused; a longer one is cut off
                // (and its connection closed) rather than read into memory.
                let _ = tokio::time::timeout(Duration::from_secs(1), drain(response)).await;
                HttpResult {
                    outcome: classify_status(status, retry_after.as_deref()),
                    status: Some(status),
                }
            }
            Err(e) => {
                let reason = if e.is_timeout() {
                    format!("timed out after {} ms", timeout.as_millis())
                } else {
                    // reqwest names the URL in its errors; the URL may be a secret.
                    error_chain(&e.without_url())
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

/// Reads at most [`MAX_ANSWER_BYTES`] of an answer.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while let Ok(Some(chunk)) = response.chunk().await {
        read += chunk.len();
        if read >= MAX_ANSWER_BYTES {
            break;
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

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn an_endpoint_that_just_started_answering_is_rated_by_its_answer_time() {
        // 64 slots, 100 ms per answer: 640/s, although 64 answers in the first 200 ms of the
        // busy spell alone say 320/s.
        let mut rate = Rate::new(0);
        for _ in 0..64 {
            rate.answered(100, 100.0);
        }
        assert_eq!(rate.wait_ms(3200, 200, 64), 5000);
        assert_eq!(Rate::new(0).wait_ms(1, 200, 64), u64::MAX, "no answer yet");
    }
}
