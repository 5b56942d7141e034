//! The delivery loop. Requests come from the requests topic and the delay topics; each is
//! delivered in its own task (bounded in total and per endpoint), its attempt logged, and a
//! failure routed to the next delay topic or the dead letter. Offsets are stored below the lowest
//! request still in flight, so a crash redelivers exactly what was not finished (receivers see
//! duplicates only with the same `webhook-id`). The secret of an HTTP action is resolved from
//! Postgres for the attempt and never leaves it: logs, audit rows and dead-letter reasons name
//! the redacted endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{Message, OwnedMessage};
use serde_json::json;
use substrate_avro::{avro_to_json, Registry};
use substrate_db::dispatch::Attempt;
use substrate_kafka::consumer::GroupConsumer;
use substrate_kafka::delay_gate::{DelayGate, Gate};
use substrate_kafka::delay_topics::{Retrier, RetryState, Routed};
use substrate_rules::{ActionSecret, PublicAction};
use substrate_runtime::failure::{retry_transient, Classify, Stopped};
use substrate_secrets::url_hash;
use tokio_util::sync::CancellationToken;

use crate::audit::AuditLog;
use crate::endpoints::Endpoints;
use crate::metrics::{DEFERRED, DELIVERIES, DELIVERY_SECONDS};
use crate::outcome::Outcome;
use crate::request::Request;
use crate::secrets::SecretStore;
use crate::signing::{self, Secret};
use crate::sinks::archive::{ArchiveError, Archiver};
use crate::sinks::http::HttpSink;
use crate::sinks::kafka::KafkaSink;
use crate::template::render;

pub struct Dispatcher {
    pub consumer: Arc<GroupConsumer>,
    pub registry: Registry,
    pub http: HttpSink,
    pub archiver: Archiver,
    pub kafka: KafkaSink,
    pub audit: AuditLog,
    pub endpoints: Endpoints,
    pub secrets: SecretStore,
    pub retrier: Retrier,
    pub max_in_flight: usize,
    /// The consumer group (named on each record's span).
    pub group_id: String,
}

/// Whether an attempt's audit row was committed.
enum Logged {
    Yes,
    /// The table refused the row (why).
    Refused(String),
    /// Shutdown came first.
    Interrupted,
}

/// What one attempt did, for the audit log and the routing decision.
struct Attempted {
    outcome: Outcome,
    status: Option<u16>,
}

impl Dispatcher {
    pub async fn run(self, shutdown: CancellationToken, drain: Duration) -> anyhow::Result<()> {
        let this = Arc::new(self);
        let gate = DelayGate::new(this.consumer.clone());
        let schedule = this.retrier.schedule().clone();
        let admit = move |message: &OwnedMessage| {
            !schedule.is_delay_topic(message.topic())
                || gate.check(message, RetryState::of(message).due_ms) == Gate::Due
        };
        let handler = {
            let this = this.clone();
            let shutdown = shutdown.clone();
            move |message: OwnedMessage| {
                let this = this.clone();
                let shutdown = shutdown.clone();
                async move {
                    let state = RetryState::of(&message);
                    this.handle(&message, &state, &shutdown).await
                }
            }
        };
        substrate_kafka::worker::run(
            this.consumer.clone(),
            &this.group_id,
            this.max_in_flight,
            shutdown,
            drain,
            admit,
            handler,
        )
        .await;
        Ok(())
    }

    /// Handles one record until its effects are durable; false when shutdown interrupted it.
    async fn handle(
        &self,
        message: &OwnedMessage,
        state: &RetryState,
        shutdown: &CancellationToken,
    ) -> bool {
        let Some(payload) = message.payload() else {
            return self
                .give_up(message, state, "the record has no value", shutdown)
                .await;
        };
        let decoded = retry_transient(shutdown, "dispatcher.decode", || {
            self.registry.decode(payload)
        })
        .await;
        let request = match decoded {
            Err(Stopped::Cancelled) => return false,
            Err(Stopped::Permanent(e)) => {
                let error = format!("undecodable: {}", e.message);
                return self.give_up(message, state, &error, shutdown).await;
            }
            Ok((value, _)) => match Request::from_json(&avro_to_json(&value)) {
                Ok(r) => r,
                Err(error) => {
                    return self.give_up(message, state, &error, shutdown).await;
                }
            },
        };
        let sink = request.action.kind();
        let started = Instant::now();
        let attempted_at = chrono::Utc::now();

        // The sealed part of an HTTP action: without it nothing can be delivered, ever.
        let resolved = retry_transient(shutdown, "dispatcher.resolve_secret", || {
            self.secrets.resolve(&request)
        })
        .await;
        let secret = match resolved {
            Ok(secret) => secret,
            Err(Stopped::Cancelled) => return false,
            Err(Stopped::Permanent(e)) => {
                tracing::warn!(request = %request.request_id, error = %e, "no usable secret");
                let error = e.to_string();
                return self
                    .refuse(message, state, &request, "failed", error, started, shutdown)
                    .await;
            }
        };
        let url = secret.as_deref().map(|s| s.url.as_str());

        // Disabled endpoints are not called; the request waits in the dead letter for replay.
        if url.is_some_and(|u| self.endpoints.is_disabled(&url_hash(u))) {
            let error = format!(
                "endpoint {} is disabled (it answered 410 Gone)",
                request.target()
            );
            return self
                .refuse(
                    message, state, &request, "skipped", error, started, shutdown,
                )
                .await;
        }

        // A saturated endpoint (hanging, or slower than its share of traffic) does not get to hold
        // more of the in-flight slots: its request waits in the first delay topic instead, not
        // counted as an attempt, and every other endpoint keeps flowing.
        let _reservation = match url {
            None => None,
            Some(url) => match self.http.reserve(url) {
                Some(reservation) => Some(reservation),
                None => return self.defer(message, state, &request, sink, shutdown).await,
            },
        };

        tracing::debug!(request = %request.request_id, sink, attempt = state.attempt(), "delivering");
        let mut attempted = self.deliver(&request, secret.as_deref()).await;
        if let Some(secret) = &secret {
            // An error text may quote what was sent (a URL in a client error): never onward.
            attempted.outcome = attempted.outcome.map_reason(|r| secret.scrub(&r));
        }
        let latency = started.elapsed();
        tracing::debug!(request = %request.request_id, outcome = ?attempted.outcome, ?latency, "attempted");
        metrics::histogram!(DELIVERY_SECONDS, "sink" => sink).record(latency.as_secs_f64());
        let spent = match &attempted.outcome {
            Outcome::Retry { after, .. } => self
                .retrier
                .schedule()
                .next(state.attempt(), *after)
                .is_none(),
            _ => false,
        };
        let (outcome_label, error) = match &attempted.outcome {
            Outcome::Delivered => ("delivered", None),
            Outcome::Retry { reason, .. } if spent => ("failed", Some(reason.clone())),
            Outcome::Retry { reason, .. } => ("retry", Some(reason.clone())),
            Outcome::Permanent { reason } => ("failed", Some(reason.clone())),
            Outcome::Disable { reason } => ("disabled", Some(reason.clone())),
        };
        metrics::counter!(DELIVERIES, "sink" => sink, "outcome" => outcome_label).increment(1);
        let row = self.row(
            &request,
            state,
            outcome_label,
            attempted.status.map(i32::from),
            error,
            started,
            attempted_at,
        );
        match self.log(row, shutdown).await {
            Logged::Yes => {}
            Logged::Interrupted => return false,
            Logged::Refused(refusal) => {
                // The attempt happened but cannot be audited: the request goes to the dead
                // letter, naming both, so that it is seen (a replay repeats the attempt with
                // the same idempotency key).
                let error = format!("attempt outcome {outcome_label}; {refusal}");
                return self.give_up(message, state, &error, shutdown).await;
            }
        }
        match attempted.outcome {
            Outcome::Delivered => true,
            Outcome::Retry { after, reason } => {
                let routed = retry_transient(shutdown, "dispatcher.route_retry", || {
                    self.retrier.retry(message, state, &reason, after)
                })
                .await;
                match routed {
                    Err(Stopped::Cancelled) => false,
                    Err(Stopped::Permanent(e)) => {
                        let error = format!("{reason}; the retry topic refused the record: {e}");
                        self.give_up(message, state, &error, shutdown).await
                    }
                    Ok(Routed::DeadLetter) => {
                        tracing::warn!(request = %request.request_id, attempts = state.attempt(), %reason, "delivery failed for good");
                        true
                    }
                    Ok(Routed::Retry { topic, .. }) => {
                        tracing::debug!(request = %request.request_id, %topic, %reason, "delivery will be retried");
                        true
                    }
                }
            }
            Outcome::Permanent { reason } => self.give_up(message, state, &reason, shutdown).await,
            Outcome::Disable { reason } => {
                let hash = url.map(url_hash).unwrap_or_default();
                let endpoint = request.target();
                let disabled = retry_transient(shutdown, "dispatcher.disable_endpoint", || {
                    self.endpoints.disable(&hash, &endpoint, &reason)
                })
                .await;
                match disabled {
                    Err(Stopped::Cancelled) => return false,
                    Err(Stopped::Permanent(e)) => {
                        tracing::error!(%endpoint, error = %e, "recording a disabled endpoint failed")
                    }
                    Ok(()) => {}
                }
                tracing::warn!(%endpoint, "endpoint disabled (410 Gone)");
                self.give_up(message, state, &reason, shutdown).await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        request: &Request,
        state: &RetryState,
        outcome: &'static str,
        http_status: Option<i32>,
        error: Option<String>,
        started: Instant,
        attempted_at: chrono::DateTime<chrono::Utc>,
    ) -> Attempt {
        Attempt {
            request_id: request.request_id,
            event_id: request.event_id.clone(),
            rule_id: request.rule_id,
            rule_version: request.rule_version,
            sink: request.action.kind().to_string(),
            target: storable(request.target()),
            attempt: state.attempt() as i32,
            outcome,
            http_status,
            error: error.map(|e| storable(e.chars().take(1000).collect())),
            latency_ms: started.elapsed().as_millis().min(i32::MAX as u128) as i32,
            attempted_at,
        }
    }

    async fn log(&self, row: Attempt, shutdown: &CancellationToken) -> Logged {
        tokio::select! {
            logged = self.audit.record(row) => match logged {
                Ok(()) => Logged::Yes,
                Err(e) if e.is_transient() => Logged::Interrupted,
                Err(e) => Logged::Refused(e.to_string()),
            },
            _ = shutdown.cancelled() => Logged::Interrupted,
        }
    }

    /// Logs a request that is not attempted (`outcome` says why) and dead-letters it; false
    /// when shutdown interrupted it.
    #[allow(clippy::too_many_arguments)]
    async fn refuse(
        &self,
        message: &OwnedMessage,
        state: &RetryState,
        request: &Request,
        outcome: &'static str,
        error: String,
        started: Instant,
        shutdown: &CancellationToken,
    ) -> bool {
        let row = self.row(
            request,
            state,
            outcome,
            None,
            Some(error.clone()),
            started,
            chrono::Utc::now(),
        );
        match self.log(row, shutdown).await {
            Logged::Yes => self.give_up(message, state, &error, shutdown).await,
            Logged::Refused(refusal) => {
                let error = format!("{error}; {refusal}");
                self.give_up(message, state, &error, shutdown).await
            }
            Logged::Interrupted => false,
        }
    }

    /// Sends a request for a saturated endpoint to the first delay topic; false on shutdown.
    async fn defer(
        &self,
        message: &OwnedMessage,
        state: &RetryState,
        request: &Request,
        sink: &'static str,
        shutdown: &CancellationToken,
    ) -> bool {
        let reason = format!("endpoint {} is saturated; deferred", request.target());
        let deferred = retry_transient(shutdown, "dispatcher.defer", || {
            self.retrier.defer(message, state, &reason)
        })
        .await;
        match deferred {
            Ok(_) => {
                metrics::counter!(DEFERRED, "sink" => sink).increment(1);
                true
            }
            Err(Stopped::Cancelled) => false,
            Err(Stopped::Permanent(e)) => {
                let error = format!("{reason}, but the delay topic refused it: {e}");
                self.give_up(message, state, &error, shutdown).await
            }
        }
    }

    /// Dead-letters the request (naming its first topic); false when shutdown interrupted it.
    async fn give_up(
        &self,
        message: &OwnedMessage,
        state: &RetryState,
        error: &str,
        shutdown: &CancellationToken,
    ) -> bool {
        self.retrier
            .dead_letter()
            .park(message, &state.origin, error, state.attempt(), shutdown)
            .await
    }

    /// One attempt at the request's action; HTTP actions come with their opened secret.
    async fn deliver(&self, request: &Request, secret: Option<&ActionSecret>) -> Attempted {
        let outcome_only = |outcome| Attempted {
            outcome,
            status: None,
        };
        let http = match (&request.action, secret) {
            (PublicAction::Webhook { .. }, Some(s))
            | (PublicAction::Slack { .. }, Some(s))
            | (PublicAction::Discord { .. }, Some(s)) => Some(s),
            (PublicAction::Webhook { .. }, None)
            | (PublicAction::Slack { .. }, None)
            | (PublicAction::Discord { .. }, None) => {
                // `SecretStore::resolve` gives every HTTP action its secret.
                return outcome_only(Outcome::Permanent {
                    reason: "the action's sealed secret is missing".into(),
                });
            }
            _ => None,
        };
        match &request.action {
            PublicAction::Webhook { timeout_ms, .. } => {
                let secret = http.expect("checked above");
                let body = serde_json::to_vec(&json!({
                    "type": request.event_type,
                    "timestamp": request.event_time(),
                    "data": request.payload,
                    "event_id": request.event_id,
                    "rule": {"id": request.rule_id, "name": request.rule_name, "version": request.rule_version},
                }))
                .expect("JSON values serialize");
                let secrets: Result<Vec<Secret>, _> =
                    secret.secrets.iter().map(|s| Secret::parse(s)).collect();
                let Ok(secrets) = secrets else {
                    return outcome_only(Outcome::Permanent {
                        reason: "a webhook secret is not `whsec_` + base64".into(),
                    });
                };
                let id = request.request_id.to_string();
                let timestamp = chrono::Utc::now().timestamp();
                let mut all: Vec<(String, String)> = secret
                    .headers
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                all.push((signing::HEADER_ID.into(), id.clone()));
                all.push((signing::HEADER_TIMESTAMP.into(), timestamp.to_string()));
                if !secrets.is_empty() {
                    all.push((
                        signing::HEADER_SIGNATURE.into(),
                        signing::signature_header(&secrets, &id, timestamp, &body),
                    ));
                }
                let timeout = timeout_ms.map(Duration::from_millis);
                let result = self
                    .http
                    .post(&secret.url, body, &all, timeout, request.trace())
                    .await;
                Attempted {
                    outcome: result.outcome,
                    status: result.status,
                }
            }
            PublicAction::Slack {
                template,
                timeout_ms,
                ..
            } => {
                let body = json!({"text": render(template, &request.payload)});
                let url = &http.expect("checked above").url;
                self.chat(url, &body, request, *timeout_ms).await
            }
            PublicAction::Discord {
                template,
                timeout_ms,
                ..
            } => {
                let body = json!({"content": render(template, &request.payload)});
                let url = &http.expect("checked above").url;
                self.chat(url, &body, request, *timeout_ms).await
            }
            PublicAction::S3 { bucket, prefix } => {
                let line = serde_json::to_vec(&json!({
                    "request_id": request.request_id,
                    "event_id": request.event_id,
                    "event_type": request.event_type,
                    "event_time": request.event_time(),
                    "source_topic": request.source_topic,
                    "rule_id": request.rule_id,
                    "rule_name": request.rule_name,
                    "data": request.payload,
                }))
                .expect("JSON values serialize");
                let dir = Archiver::dir(prefix, &request.source_topic, request.event_time_ms);
                outcome_only(match self.archiver.append(bucket, dir, line).await {
                    Ok(_) => Outcome::Delivered,
                    Err(ArchiveError::Retry(reason)) => Outcome::Retry {
                        after: None,
                        reason,
                    },
                    Err(ArchiveError::Permanent(reason)) => Outcome::Permanent { reason },
                })
            }
            PublicAction::Kafka { topic } => outcome_only(self.kafka.forward(topic, request).await),
            PublicAction::Notification {
                event_type,
                recipient_field,
            } => outcome_only(
                self.kafka
                    .notify(event_type, recipient_field.as_deref(), request)
                    .await,
            ),
        }
    }

    async fn chat(
        &self,
        url: &str,
        body: &serde_json::Value,
        request: &Request,
        timeout_ms: Option<u64>,
    ) -> Attempted {
        let id = request.request_id.to_string();
        let headers = [(signing::HEADER_ID.to_string(), id)];
        let result = self
            .http
            .post(
                url,
                serde_json::to_vec(body).expect("JSON values serialize"),
                &headers,
                timeout_ms.map(Duration::from_millis),
                request.trace(),
            )
            .await;
        Attempted {
            outcome: result.outcome,
            status: result.status,
        }
    }
}

/// Text as Postgres can store it: a NUL (which a receiver's answer may contain) becomes U+FFFD.
fn storable(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}
