//! What a delivery attempt's result means: 2xx succeeds; 3xx fails (redirects are not
//! followed); 408, 429, 5xx and transport errors are retried, 429 and 503 after `Retry-After`
//! when given; 410 disables the endpoint; any other 4xx is permanent. Retries go through delay
//! topics `internal.dispatch.retry.<delay>` (default 5s, 30s, 2m, 10m, 1h), then the dead letter.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again, not before this delay (when the endpoint said so).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Do not try again.
    Permanent {
        reason: String,
    },
    /// The endpoint is gone (410): stop sending to it.
    Disable {
        reason: String,
    },
}

/// Classifies an HTTP answer.
pub fn classify_status(status: u16, retry_after: Option<&str>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Disable {
            reason: "410 Gone: the endpoint asked to be disabled".into(),
        },
        408 | 500..=599 | 429 => Outcome::Retry {
            after: if matches!(status, 429 | 503) {
                retry_after.and_then(parse_retry_after)
            } else {
                None
            },
            reason: format!("HTTP {status}"),
        },
        300..=399 => Outcome::Permanent {
            reason: format!("HTTP {status}: redirects are not followed"),
        },
        _ => Outcome::Permanent {
            reason: format!("HTTP {status}"),
        },
    }
}

/// `Retry-After` in seconds (HTTP dates are not honoured; the schedule applies then).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The retry schedule: one delay per retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub delays: Vec<Duration>,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            delays: [5, 30, 120, 600, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        }
    }
}

impl Schedule {
    /// The delay topic for retry number `attempt` (1-based), or `None` when retries are spent.
    /// A `Retry-After` longer than the scheduled delay moves the retry to the first topic whose
    /// delay covers it.
    pub fn topic_for(&self, attempt: usize, retry_after: Option<Duration>) -> Option<String> {
        let scheduled = *self.delays.get(attempt.checked_sub(1)?)?;
        let wanted = retry_after.map_or(scheduled, |r| r.max(scheduled));
        let delay = self
            .delays
            .iter()
            .copied()
            .find(|d| *d >= wanted)
            .unwrap_or(*self.delays.last()?);
        Some(retry_topic(delay))
    }

    /// Every delay topic of the schedule (for provisioning).
    pub fn topics(&self) -> Vec<String> {
        self.delays.iter().map(|d| retry_topic(*d)).collect()
    }
}

/// `internal.dispatch.retry.5s`, `….2m`, `….1h`.
pub fn retry_topic(delay: Duration) -> String {
    let secs = delay.as_secs();
    let label = if secs >= 3600 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else if secs > 0 {
        format!("{secs}s")
    } else {
        format!("{}ms", delay.as_millis())
    };
    format!("internal.dispatch.retry.{label}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(classify_status(204, None), Outcome::Delivered);
        assert!(matches!(
            classify_status(302, None),
            Outcome::Permanent { .. }
        ));
        assert!(matches!(
            classify_status(400, None),
            Outcome::Permanent { .. }
        ));
        assert!(matches!(
            classify_status(404, None),
            Outcome::Permanent { .. }
        ));
        assert!(matches!(
            classify_status(410, None),
            Outcome::Disable { .. }
        ));
        assert_eq!(
            classify_status(429, Some("120")),
            Outcome::Retry {
                after: Some(Duration::from_secs(120)),
                reason: "HTTP 429".into()
            }
        );
        assert_eq!(
            classify_status(503, Some("7")),
            Outcome::Retry {
                after: Some(Duration::from_secs(7)),
                reason: "HTTP 503".into()
            }
        );
        assert_eq!(
            classify_status(500, Some("7")),
            Outcome::Retry {
                after: None,
                reason: "HTTP 500".into()
            }
        );
        assert!(matches!(classify_status(408, None), Outcome::Retry { .. }));
        assert!(matches!(classify_status(504, None), Outcome::Retry { .. }));
    }

    #[test]
    fn schedule_topics() {
        let schedule = Schedule::default();
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
        assert_eq!(
            schedule.topic_for(1, None).as_deref(),
            Some("internal.dispatch.retry.5s")
        );
        assert_eq!(
            schedule.topic_for(5, None).as_deref(),
            Some("internal.dispatch.retry.1h")
        );
        assert_eq!(schedule.topic_for(6, None), None);
        assert_eq!(schedule.topic_for(0, None), None);
        // Retry-After of 100 s on the first retry waits in the 2 minute topic.
        assert_eq!(
            schedule
                .topic_for(1, Some(Duration::from_secs(100)))
                .as_deref(),
            Some("internal.dispatch.retry.2m")
        );
        assert_eq!(
            retry_topic(Duration::from_millis(200)),
            "internal.dispatch.retry.200ms"
        );
    }
}
