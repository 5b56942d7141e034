//! What a matching rule does: the action specs a rule carries (`actions` JSON array), checked when
//! the rule is saved — known type, required settings, http(s) URLs, and `{{field}}` references in
//! message templates that exist in the topic's schema. Delivery is the dispatcher's business.
//! An `Action` holds its secrets (URLs, signing secrets, headers): it is the authoring form, and
//! what is stored or sent is its split ([`crate::split`]). Its `Debug` shows no secret.

use std::collections::BTreeMap;

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::schema::resolve;
use crate::RuleError;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// POST the event as JSON, signed per Standard Webhooks with each `whsec_` secret.
    Webhook {
        url: String,
        #[serde(default)]
        secrets: Vec<String>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// How long to wait for this endpoint's answer, overriding the dispatcher's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Slack incoming webhook with a message template (`{{purchase.amount}}`).
    Slack {
        webhook_url: String,
        template: String,
        /// How long to wait for this endpoint's answer, overriding the dispatcher's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Discord webhook with a message template.
    Discord {
        webhook_url: String,
        template: String,
        /// How long to wait for this endpoint's answer, overriding the dispatcher's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Archive the event as NDJSON under `prefix/topic/date/…` in a bucket.
    S3 {
        bucket: String,
        #[serde(default)]
        prefix: String,
    },
    /// Forward the event to a Kafka topic.
    Kafka { topic: String },
    /// Write a user notification (through the notification-writer's input).
    Notification {
        event_type: String,
        #[serde(default)]
        recipient_field: Option<String>,
    },
}

/// The longest per-action HTTP timeout a rule may set.
pub const MAX_TIMEOUT_MS: u64 = 120_000;

impl Action {
    /// The HTTP timeout this action sets for its endpoint, if any.
    pub fn timeout_ms(&self) -> Option<u64> {
        match self {
            Self::Webhook { timeout_ms, .. }
            | Self::Slack { timeout_ms, .. }
            | Self::Discord { timeout_ms, .. } => *timeout_ms,
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Slack { .. } => "slack",
            Self::Discord { .. } => "discord",
            Self::S3 { .. } => "s3",
            Self::Kafka { .. } => "kafka",
            Self::Notification { .. } => "notification",
        }
    }
}

impl std::fmt::Debug for Action {
    /// Only what may be shown: URLs redacted, secrets and header values left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (public, secret) = self.split();
        match secret {
            Some(secret) => write!(f, "{public:?} + {secret:?}"),
            None => write!(f, "{public:?}"),
        }
    }
}

/// Parses and checks a rule's actions against the topic's schema.
pub fn parse_actions(value: &serde_json::Value, schema: &Schema) -> Result<Vec<Action>, RuleError> {
    let items = value
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| RuleError::Malformed("`actions` must be a non-empty array".into()))?;
    let mut actions = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let action: Action = serde_json::from_value(item.clone())
            .map_err(|e| RuleError::Malformed(format!("action {index}: {e}")))?;
        let bad =
            |m: String| RuleError::Malformed(format!("action {index} ({}): {m}", action.kind()));
        if let Some(timeout) = action.timeout_ms() {
            if timeout == 0 || timeout > MAX_TIMEOUT_MS {
                return Err(bad(format!(
                    "timeout_ms must be between 1 and {MAX_TIMEOUT_MS}"
                )));
            }
        }
        match &action {
            Action::Webhook { url, secrets, .. } => {
                check_url(url).map_err(bad)?;
                for secret in secrets {
                    if !secret.starts_with("whsec_") {
                        return Err(bad("secrets must start with `whsec_`".into()));
                    }
                }
            }
            Action::Slack {
                webhook_url,
                template,
                ..
            }
            | Action::Discord {
                webhook_url,
                template,
                ..
            } => {
                check_url(webhook_url).map_err(bad)?;
                for field in template_fields(template).map_err(bad)? {
                    resolve(schema, field).map_err(|e| bad(format!("template: {e}")))?;
                }
            }
            Action::S3 { bucket, .. } if bucket.is_empty() => {
                return Err(bad("`bucket` is empty".into()))
            }
            Action::Kafka { topic } if topic.is_empty() => {
                return Err(bad("`topic` is empty".into()))
            }
            Action::Notification {
                event_type,
                recipient_field,
            } => {
                if !crate::names::is_event_type(event_type) {
                    return Err(bad(crate::names::event_type_rule(event_type)));
                }
                if let Some(field) = recipient_field {
                    resolve(schema, field).map_err(|e| bad(format!("recipient_field: {e}")))?;
                }
            }
            _ => {}
        }
        actions.push(action);
    }
    Ok(actions)
}

/// The URL may be a secret (Slack, Discord): the error does not repeat it.
fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") || url.starts_with("http://") {
        Ok(())
    } else {
        Err(format!(
            "the URL is not an http(s) URL ({})",
            substrate_secrets::redact_url(url)
        ))
    }
}

/// The `{{field.path}}` references of a template.
pub fn template_fields(template: &str) -> Result<Vec<&str>, String> {
    let mut fields = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("unclosed `{{` in template")?;
        let field = after[..end].trim();
        if field.is_empty() {
            return Err("empty `{{}}` in template".into());
        }
        fields.push(field);
        rest = &after[end + 2..];
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Schema {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../avro/public/commerce/purchase.events.avsc"
        ))
        .unwrap();
        Schema::parse_str(&text).unwrap()
    }

    #[test]
    fn valid_actions_of_every_kind() {
        let actions = parse_actions(
            &json!([
                {"type": "slack", "webhook_url": "https://hooks.slack.com/services/x", "template": "VIP {{user.email}} spent {{purchase.amount}}"},
                {"type": "discord", "webhook_url": "https://discord.com/api/webhooks/1/x", "template": "{{ purchase.id }}"},
                {"type": "webhook", "url": "https://example.com/hook", "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]},
                {"type": "s3", "bucket": "event-archive", "prefix": "purchases"},
                {"type": "kafka", "topic": "public.commerce.vip.events"},
                {"type": "notification", "event_type": "commerce.vip_purchase", "recipient_field": "user.id"}
            ]),
            &schema(),
        )
        .unwrap();
        assert_eq!(actions.len(), 6);
        assert_eq!(actions[0].kind(), "slack");
    }

    #[test]
    fn invalid_actions_name_the_problem() {
        for (actions, fragment) in [
            (json!([]), "non-empty"),
            (json!([{"type": "pager"}]), "unknown variant `pager`"),
            (json!([{"type": "webhook"}]), "missing field `url`"),
            (
                json!([{"type": "webhook", "url": "ftp://x"}]),
                "not an http(s) URL",
            ),
            (
                json!([{"type": "webhook", "url": "https://x", "secrets": ["abc"]}]),
                "whsec_",
            ),
            (
                json!([{"type": "slack", "webhook_url": "https://x", "template": "{{purchase.total}}"}]),
                "unknown field `purchase.total`",
            ),
            (
                json!([{"type": "slack", "webhook_url": "https://x", "template": "{{oops"}]),
                "unclosed",
            ),
            (
                json!([{"type": "s3", "bucket": "", "prefix": "p"}]),
                "bucket",
            ),
            (
                json!([{"type": "kafka", "topic": "t", "extra": 1}]),
                "unknown field `extra`",
            ),
            (
                json!([{"type": "webhook", "url": "https://x", "timeout_ms": 0}]),
                "timeout_ms must be between 1 and 120000",
            ),
            (
                json!([{"type": "notification", "event_type": "commerce.vip-purchase"}]),
                "event_type `commerce.vip-purchase` must be namespaced",
            ),
        ] {
            let err = parse_actions(&actions, &schema()).unwrap_err().to_string();
            assert!(err.contains(fragment), "{actions}: {err}");
        }
    }
}
