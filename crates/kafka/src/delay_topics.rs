//! Retries that never block a partition. A record whose processing failed in a way worth
//! retrying is re-produced, bytes untouched, to a delay topic (`<prefix>.<delay>`, e.g.
//! `internal.dispatch.retry.30s`) with headers counting the attempts and naming when it is due;
//! when the schedule is spent, or the failure is permanent, it goes to the dead-letter topic.
//! Consumers of delay topics hold records back with [`crate::delay_gate::DelayGate`].

use std::time::Duration;

use rdkafka::message::{Header, Message};

use crate::dead_letter::DeadLetter;
use crate::headers::{header_str, TRACEPARENT};
use crate::origin::{
    copy_headers, Origin, RETRY_ATTEMPTS, RETRY_DUE_MS, RETRY_ERROR, RETRY_HEADER_PREFIX,
    RETRY_ORIGIN_OFFSET, RETRY_ORIGIN_PARTITION, RETRY_ORIGIN_TOPIC, RETRY_ORIGIN_TRACEPARENT,
};
use crate::producer::{ProduceError, Producer};

/// The retry schedule: one delay per retry, each with its own topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub topic_prefix: String,
    pub delays: Vec<Duration>,
}

impl Schedule {
    pub fn new(topic_prefix: impl Into<String>, delays: Vec<Duration>) -> Self {
        Self {
            topic_prefix: topic_prefix.into(),
            delays,
        }
    }

    /// Parses delays written `250ms`, `5s`, `2m`, `1h`.
    pub fn parse(topic_prefix: &str, delays: &[String]) -> Result<Self, String> {
        let delays = delays
            .iter()
            .map(|d| parse_delay(d))
            .collect::<Result<Vec<_>, _>>()?;
        if delays.windows(2).any(|w| w[0] > w[1]) {
            return Err("delays must not decrease".into());
        }
        Ok(Self::new(topic_prefix, delays))
    }

    /// Attempts in total: the first one plus one per delay.
    pub fn max_attempts(&self) -> u32 {
        self.delays.len() as u32 + 1
    }

    /// Where retry number `retry` (1-based) waits, and for how long; `None` when retries are
    /// spent. A `Retry-After` longer than the scheduled delay moves the retry to the first topic
    /// whose delay covers it.
    pub fn next(&self, retry: u32, retry_after: Option<Duration>) -> Option<(String, Duration)> {
        let scheduled = *self.delays.get((retry as usize).checked_sub(1)?)?;
        let wanted = retry_after.map_or(scheduled, |r| r.max(scheduled));
        let delay = self
            .delays
            .iter()
            .copied()
            .find(|d| *d >= wanted)
            .unwrap_or(*self.delays.last()?);
        Some((self.topic(delay), delay))
    }

    /// Every delay topic of the schedule (to subscribe and to provision).
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.delays.iter().map(|d| self.topic(*d)).collect();
        topics.dedup();
        topics
    }

    /// `<prefix>.5s`, `<prefix>.2m`, `<prefix>.1h`, `<prefix>.250ms`.
    pub fn topic(&self, delay: Duration) -> String {
        format!("{}.{}", self.topic_prefix, delay_label(delay))
    }

    pub fn is_delay_topic(&self, topic: &str) -> bool {
        topic
            .strip_prefix(&self.topic_prefix)
            .is_some_and(|rest| rest.starts_with('.'))
    }
}

pub fn delay_label(delay: Duration) -> String {
    let millis = delay.as_millis();
    let secs = delay.as_secs();
    if !millis.is_multiple_of(1000) || secs == 0 {
        format!("{millis}ms")
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

pub fn parse_delay(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("delay `{text}` needs a unit (ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("delay `{text}` must start with a whole number"))?;
    let delay = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("delay `{text}`: unit must be ms, s, m or h")),
    };
    if delay.is_zero() {
        return Err(format!("delay `{text}` must be > 0"));
    }
    Ok(delay)
}

/// What the headers of a record say about its earlier attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryState {
    /// Attempts made before this one (0 for a fresh record).
    pub attempts: u32,
    pub due_ms: Option<i64>,
    pub origin: Origin,
    pub last_error: Option<String>,
}

impl RetryState {
    pub fn of<M: Message>(message: &M) -> Self {
        let headers = message.headers();
        let get = |key: &str| headers.and_then(|h| header_str(h, key));
        let origin = match (
            get(RETRY_ORIGIN_TOPIC),
            get(RETRY_ORIGIN_PARTITION).and_then(|p| p.parse().ok()),
            get(RETRY_ORIGIN_OFFSET).and_then(|o| o.parse().ok()),
        ) {
            (Some(topic), Some(partition), Some(offset)) => Origin {
                topic: topic.to_string(),
                partition,
                offset,
            },
            _ => Origin::of(message),
        };
        Self {
            attempts: get(RETRY_ATTEMPTS)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            due_ms: get(RETRY_DUE_MS).and_then(|d| d.parse().ok()),
            origin,
            last_error: get(RETRY_ERROR).map(String::from),
        }
    }

    /// The number of the attempt being made now (1-based).
    pub fn attempt(&self) -> u32 {
        self.attempts + 1
    }
}

/// Where a failed record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    Retry { topic: String, due_ms: i64 },
    DeadLetter,
}

/// Routes failed records to the next delay topic or, when the schedule is spent or the failure
/// is permanent, to the dead-letter topic.
#[derive(Clone)]
pub struct Retrier {
    producer: Producer,
    schedule: Schedule,
    dead_letter: DeadLetter,
}

impl Retrier {
    pub fn new(producer: Producer, schedule: Schedule, dead_letter: DeadLetter) -> Self {
        Self {
            producer,
            schedule,
            dead_letter,
        }
    }

    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    pub fn dead_letter_topic(&self) -> &str {
        self.dead_letter.topic()
    }

    pub fn dead_letter(&self) -> &DeadLetter {
        &self.dead_letter
    }

    /// After attempt `state.attempt()` failed with a retriable `error`.
    pub async fn retry<M: Message>(
        &self,
        message: &M,
        state: &RetryState,
        error: &str,
        retry_after: Option<Duration>,
    ) -> Result<Routed, ProduceError> {
        let made = state.attempt();
        let Some((topic, delay)) = self.schedule.next(made, retry_after) else {
            let error = format!("{error} (after {made} attempts)");
            self.dead_letter
                .send_from(message, &state.origin, &error, made)
                .await?;
            crate::dead_letter::count(&state.origin.topic, "retries_exhausted");
            return Ok(Routed::DeadLetter);
        };
        self.produce_to(&topic, message, state, made, delay, error)
            .await
    }

    /// Re-produces `message` unchanged to `topic`, recording `attempts` made and due after
    /// `delay`.
    async fn produce_to<M: Message>(
        &self,
        topic: &str,
        message: &M,
        state: &RetryState,
        attempts: u32,
        delay: Duration,
        error: &str,
    ) -> Result<Routed, ProduceError> {
        let due_ms = chrono::Utc::now().timestamp_millis() + delay.as_millis() as i64;
        let mut headers = copy_headers(message, &[RETRY_HEADER_PREFIX]);
        let made_text = attempts.to_string();
        let due_text = due_ms.to_string();
        let partition = state.origin.partition.to_string();
        let offset = state.origin.offset.to_string();
        let error: String = error.chars().take(2000).collect();
        // The first attempt's context, kept across every retry (the record's own `traceparent`
        // becomes the retry's send span).
        let first_trace = message
            .headers()
            .and_then(|h| {
                header_str(h, RETRY_ORIGIN_TRACEPARENT).or_else(|| header_str(h, TRACEPARENT))
            })
            .unwrap_or_default()
            .to_string();
        for (key, value) in [
            (RETRY_ORIGIN_TRACEPARENT, first_trace.as_str()),
            (RETRY_ATTEMPTS, made_text.as_str()),
            (RETRY_DUE_MS, due_text.as_str()),
            (RETRY_ERROR, error.as_str()),
            (RETRY_ORIGIN_TOPIC, state.origin.topic.as_str()),
            (RETRY_ORIGIN_PARTITION, partition.as_str()),
            (RETRY_ORIGIN_OFFSET, offset.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        self.producer
            .send(
                topic,
                message.key(),
                message.payload().unwrap_or_default(),
                headers,
            )
            .await?;
        Ok(Routed::Retry {
            topic: topic.to_string(),
            due_ms,
        })
    }

    /// Puts the record back into the first delay topic without counting an attempt (it was
    /// not tried: its endpoint had no room), due after the first delay.
    pub async fn defer<M: Message>(
        &self,
        message: &M,
        state: &RetryState,
        reason: &str,
    ) -> Result<Routed, ProduceError> {
        let Some(delay) = self.schedule.delays.first().copied() else {
            return self.give_up(message, state, reason).await;
        };
        let topic = self.schedule.topic(delay);
        self.produce_to(&topic, message, state, state.attempts, delay, reason)
            .await
    }

    /// A permanent failure: straight to the dead-letter topic.
    pub async fn give_up<M: Message>(
        &self,
        message: &M,
        state: &RetryState,
        error: &str,
    ) -> Result<Routed, ProduceError> {
        self.dead_letter
            .send_from(message, &state.origin, error, state.attempt())
            .await?;
        crate::dead_letter::count(&state.origin.topic, "permanent");
        Ok(Routed::DeadLetter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_topics_and_next() {
        let schedule = Schedule::parse(
            "internal.dispatch.retry",
            &["5s", "30s", "2m", "10m", "1h"].map(String::from),
        )
        .unwrap();
        assert_eq!(
            schedule.topics(),
            vec![
                "internal.dispatch.retry.5s",
                "internal.dispatch.retry.30s",
                "internal.dispatch.retry.2m",
                "internal.dispatch.retry.10m",
                "internal.dispatch.retry.1h"
            ]
        );
        assert_eq!(schedule.max_attempts(), 6);
        assert_eq!(
            schedule.next(1, None),
            Some((
                "internal.dispatch.retry.5s".to_string(),
                Duration::from_secs(5)
            ))
        );
        assert_eq!(
            schedule.next(5, None).unwrap().0,
            "internal.dispatch.retry.1h"
        );
        assert_eq!(schedule.next(6, None), None);
        assert_eq!(schedule.next(0, None), None);
        // Retry-After of 100 s on the first retry waits in the 2 minute topic.
        assert_eq!(
            schedule.next(1, Some(Duration::from_secs(100))).unwrap().0,
            "internal.dispatch.retry.2m"
        );
        assert!(schedule.is_delay_topic("internal.dispatch.retry.5s"));
        assert!(!schedule.is_delay_topic("internal.dispatch.requests"));
        assert_eq!(delay_label(Duration::from_millis(250)), "250ms");
        assert_eq!(delay_label(Duration::from_millis(1500)), "1500ms");
        assert!(Schedule::parse("p", &["5".into()]).is_err());
        assert!(Schedule::parse("p", &["5d".into()]).is_err());
        assert!(Schedule::parse("p", &["0s".into()]).is_err());
        assert!(Schedule::parse("p", &["1m".into(), "5s".into()]).is_err());
    }
}
