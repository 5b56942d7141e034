//! An action split in two: the [`PublicAction`] that `rules.actions` stores and dispatch
//! requests carry (everything but secrets; HTTP destinations only as `redact_url`'s display
//! form), and the [`ActionSecret`] that is sealed at rest and only the dispatcher opens: the
//! URL of every HTTP action (Slack and Discord URLs are bearer secrets, webhook URLs may be),
//! the webhook's `whsec_` signing secrets and its extra headers (which may hold credentials).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use substrate_secrets::redact_url;

use crate::actions::Action;

/// What may travel: an action without its secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PublicAction {
    Webhook {
        /// The URL as [`redact_url`] shows it.
        endpoint: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    Slack {
        endpoint: String,
        template: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    Discord {
        endpoint: String,
        template: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    S3 {
        bucket: String,
        #[serde(default)]
        prefix: String,
    },
    Kafka {
        topic: String,
    },
    Notification {
        event_type: String,
        #[serde(default)]
        recipient_field: Option<String>,
    },
}

/// The sealed part of an HTTP action. Its `Debug` shows only the redacted URL and counts.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSecret {
    pub url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl fmt::Debug for ActionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActionSecret")
            .field("url", &redact_url(&self.url))
            .field("secrets", &self.secrets.len())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ActionSecret {
    /// The bytes that are sealed.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("strings serialize")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a sealed action secret: {e}"))
    }

    /// `text` with every secret of this action replaced: the URL (as written and as a URL
    /// parser prints it) by its redacted form, signing secrets and header values by
    /// `[redacted]`. For error texts that may quote what was sent.
    pub fn scrub(&self, text: &str) -> String {
        let shown = redact_url(&self.url);
        let mut text = text.replace(&self.url, &shown);
        if let Ok(parsed) = url::Url::parse(&self.url) {
            text = text.replace(parsed.as_str(), &shown);
        }
        for secret in self
            .secrets
            .iter()
            .chain(self.headers.values())
            .filter(|s| s.len() >= 4)
        {
            text = text.replace(secret.as_str(), "[redacted]");
        }
        text
    }
}

/// Why a public action and a sealed secret do not make an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the {0} action needs its sealed secret, and there is none")]
    Missing(&'static str),
    #[error("the sealed secret is for another endpoint than the action's {endpoint}")]
    Mismatch { endpoint: String },
}

impl Action {
    /// The public part, and the secret part of HTTP actions.
    pub fn split(&self) -> (PublicAction, Option<ActionSecret>) {
        match self.clone() {
            Action::Webhook {
                url,
                secrets,
                headers,
                timeout_ms,
            } => (
                PublicAction::Webhook {
                    endpoint: redact_url(&url),
                    timeout_ms,
                },
                Some(ActionSecret {
                    url,
                    secrets,
                    headers,
                }),
            ),
            Action::Slack {
                webhook_url,
                template,
                timeout_ms,
            } => (
                PublicAction::Slack {
                    endpoint: redact_url(&webhook_url),
                    template,
                    timeout_ms,
                },
                Some(ActionSecret::url_only(webhook_url)),
            ),
            Action::Discord {
                webhook_url,
                template,
                timeout_ms,
            } => (
                PublicAction::Discord {
                    endpoint: redact_url(&webhook_url),
                    template,
                    timeout_ms,
                },
                Some(ActionSecret::url_only(webhook_url)),
            ),
            Action::S3 { bucket, prefix } => (PublicAction::S3 { bucket, prefix }, None),
            Action::Kafka { topic } => (PublicAction::Kafka { topic }, None),
            Action::Notification {
                event_type,
                recipient_field,
            } => (
                PublicAction::Notification {
                    event_type,
                    recipient_field,
                },
                None,
            ),
        }
    }
}

impl ActionSecret {
    fn url_only(url: String) -> Self {
        Self {
            url,
            secrets: Vec::new(),
            headers: BTreeMap::new(),
        }
    }
}

impl PublicAction {
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

    /// The redacted endpoint of an HTTP action (whose secret is sealed).
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Self::Webhook { endpoint, .. }
            | Self::Slack { endpoint, .. }
            | Self::Discord { endpoint, .. } => Some(endpoint),
            _ => None,
        }
    }

    /// Whether delivering it needs a sealed secret.
    pub fn needs_secret(&self) -> bool {
        self.endpoint().is_some()
    }

    /// Checks that `secret` belongs to this action: its URL redacts to the action's endpoint.
    pub fn check(&self, secret: Option<&ActionSecret>) -> Result<(), JoinError> {
        match (self.endpoint(), secret) {
            (None, _) => Ok(()),
            (Some(_), None) => Err(JoinError::Missing(self.kind())),
            (Some(endpoint), Some(secret)) if redact_url(&secret.url) != endpoint => {
                Err(JoinError::Mismatch {
                    endpoint: endpoint.to_string(),
                })
            }
            (Some(_), Some(_)) => Ok(()),
        }
    }

    /// Parses a stored or transported action: the public form, or an action written before
    /// secrets were sealed (its secrets inline), split. The second is `Some` only then.
    pub fn parse(value: &serde_json::Value) -> Result<(Self, Option<ActionSecret>), String> {
        match serde_json::from_value::<PublicAction>(value.clone()) {
            Ok(public) => Ok((public, None)),
            Err(public_error) => match serde_json::from_value::<Action>(value.clone()) {
                Ok(inline) => {
                    let (public, secret) = inline.split();
                    Ok((public, secret))
                }
                Err(_) => Err(public_error.to_string()),
            },
        }
    }
}

/// Splits a rule's actions: the public JSON array for `rules.actions`, and the secret of every
/// HTTP action with its index.
pub fn split_actions(actions: &[Action]) -> (serde_json::Value, Vec<(i32, ActionSecret)>) {
    let mut public = Vec::with_capacity(actions.len());
    let mut secrets = Vec::new();
    for (index, action) in actions.iter().enumerate() {
        let (p, s) = action.split();
        public.push(serde_json::to_value(p).expect("actions serialize"));
        if let Some(s) = s {
            secrets.push((index as i32, s));
        }
    }
    (serde_json::Value::Array(public), secrets)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SLACK: &str = "https://hooks.slack.com/services/T0/B0/SECRETTOKEN";
    const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn actions() -> Vec<Action> {
        serde_json::from_value(json!([
            {"type": "webhook", "url": "https://example.com/hook?token=QUERYSECRET", "secrets": [WHSEC],
             "headers": {"Authorization": "Bearer HEADERSECRET"}, "timeout_ms": 500},
            {"type": "slack", "webhook_url": SLACK, "template": "{{purchase.amount}}"},
            {"type": "discord", "webhook_url": "https://discord.com/api/webhooks/1/DISCORDSECRET", "template": "x"},
            {"type": "s3", "bucket": "b", "prefix": "p"},
            {"type": "kafka", "topic": "t"},
            {"type": "notification", "event_type": "commerce.vip"}
        ]))
        .unwrap()
    }

    #[test]
    fn the_public_part_carries_no_secret_and_the_sealed_part_every_one() {
        let (public, secrets) = split_actions(&actions());
        let text = public.to_string();
        for secret in [
            "QUERYSECRET",
            WHSEC,
            "HEADERSECRET",
            "SECRETTOKEN",
            "DISCORDSECRET",
            "/services/",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(
            public[0]["endpoint"],
            redact_url("https://example.com/hook?token=QUERYSECRET")
        );
        assert_eq!(public[0]["timeout_ms"], 500);
        assert_eq!(public[1]["template"], "{{purchase.amount}}");
        assert_eq!(
            public[3],
            json!({"type": "s3", "bucket": "b", "prefix": "p"})
        );
        assert_eq!(
            secrets.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(secrets[0].1.secrets, [WHSEC]);
        assert_eq!(secrets[1].1.url, SLACK);
        // Round trip through the sealed bytes, and the public form reads back.
        let back = ActionSecret::from_bytes(&secrets[0].1.to_bytes()).unwrap();
        assert_eq!(back, secrets[0].1);
        for (index, value) in public.as_array().unwrap().iter().enumerate() {
            let (action, inline) = PublicAction::parse(value).unwrap();
            assert!(inline.is_none());
            let secret = secrets
                .iter()
                .find(|(i, _)| *i == index as i32)
                .map(|(_, s)| s);
            action.check(secret).unwrap();
        }
    }

    #[test]
    fn a_secret_of_another_endpoint_or_none_is_refused() {
        let (public, secrets) = split_actions(&actions());
        let (slack, _) = PublicAction::parse(&public[1]).unwrap();
        assert_eq!(slack.check(None), Err(JoinError::Missing("slack")));
        assert!(matches!(
            slack.check(Some(&secrets[2].1)),
            Err(JoinError::Mismatch { .. })
        ));
        let error = slack.check(Some(&secrets[2].1)).unwrap_err().to_string();
        assert!(!error.contains("SECRET"), "{error}");
    }

    #[test]
    fn actions_written_with_inline_secrets_still_parse_split() {
        let legacy = json!({"type": "slack", "webhook_url": SLACK, "template": "t"});
        let (public, inline) = PublicAction::parse(&legacy).unwrap();
        assert_eq!(public.kind(), "slack");
        assert_eq!(inline.unwrap().url, SLACK);
        assert!(PublicAction::parse(&json!({"type": "slack", "endpoint": "x"})).is_err());
    }

    #[test]
    fn debug_output_and_scrubbed_text_show_no_secret() {
        for action in actions() {
            let shown = format!("{action:?}");
            for secret in [
                "QUERYSECRET",
                WHSEC,
                "HEADERSECRET",
                "SECRETTOKEN",
                "DISCORDSECRET",
            ] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        let (_, secrets) = split_actions(&actions());
        let webhook = &secrets[0].1;
        let text = format!(
            "error sending request for url (https://example.com/hook?token=QUERYSECRET): {WHSEC} Bearer HEADERSECRET"
        );
        let scrubbed = webhook.scrub(&text);
        assert!(
            !scrubbed.contains("QUERYSECRET")
                && !scrubbed.contains(WHSEC)
                && !scrubbed.contains("HEADERSECRET"),
            "{scrubbed}"
        );
        assert!(scrubbed.contains("https://example.com/…#"), "{scrubbed}");
    }
}
