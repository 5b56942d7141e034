//! What a delivery attempt's result means: 2xx succeeds; 3xx fails (redirects are not
//! followed); 408, 429, 5xx and transport errors are retried, 429 and 503 after `Retry-After`
//! when given; 410 disables the endpoint; any other 4xx is permanent. Retries go through delay
//! topics `internal.dispatch.retry.<delay>` (substrate_kafka::delay_topics), then the dead letter.

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

impl Outcome {
    /// The same outcome with its reason rewritten (to scrub secrets from it).
    pub fn map_reason(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            Self::Delivered => Self::Delivered,
            Self::Retry { after, reason } => Self::Retry {
                after,
                reason: f(reason),
            },
            Self::Permanent { reason } => Self::Permanent { reason: f(reason) },
            Self::Disable { reason } => Self::Disable { reason: f(reason) },
        }
    }
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
}
