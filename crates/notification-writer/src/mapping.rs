//! How a decoded event becomes a `user_notifications` row: its type, who sees it (broadcast or
//! direct to a recipient), who sent it, and the event id that makes the insert idempotent.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value as Json;
use substrate_db::notifications::{NewNotification, Visibility};
use substrate_rules::names::{event_type_rule, is_event_type};
use uuid::Uuid;

/// Ids for events that carry none are derived from their position in the log.
const POSITION_NAMESPACE: Uuid = Uuid::from_u128(0x2b1e_8c4d_9f3a_4c61_b7e0_3d5a_6f81_c902);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// A disabled mapping is not consumed (lets a config file switch off a default one).
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// `{domain}.{entity}` written to `event_type`…
    #[serde(default)]
    pub event_type: String,
    /// …or the record field that holds it.
    #[serde(default)]
    pub event_type_field: Option<String>,
    /// A string field holding the JSON to store as the payload (default: the whole record).
    #[serde(default)]
    pub payload_field: Option<String>,
    /// Fixed visibility (`broadcast` or `direct`)…
    #[serde(default)]
    pub visibility: Option<String>,
    /// …or the record field that holds it.
    #[serde(default)]
    pub visibility_field: Option<String>,
    #[serde(default)]
    pub recipient_field: Option<String>,
    #[serde(default)]
    pub sender_field: Option<String>,
}

fn enabled() -> bool {
    true
}

/// Where a record came from, for ids and error messages.
pub struct Origin<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub ce_id: Option<&'a str>,
    pub ce_time: Option<&'a str>,
}

impl Mapping {
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        match (&self.visibility, &self.visibility_field) {
            (Some(v), None) if Visibility::parse(v).is_some() => {}
            (None, Some(_)) => {}
            (Some(v), None) => return Err(format!("visibility `{v}` must be broadcast or direct")),
            _ => return Err("set exactly one of visibility and visibility_field".into()),
        }
        if self.event_type_field.is_some() {
            if !self.event_type.is_empty() {
                return Err("set only one of event_type and event_type_field".into());
            }
        } else if !is_event_type(&self.event_type) {
            return Err(event_type_rule(&self.event_type));
        }
        Ok(())
    }

    /// Maps one decoded record (as JSON); errors are permanent for that record.
    pub fn to_row(&self, record: Json, origin: &Origin<'_>) -> Result<NewNotification, String> {
        let visibility_text = match (&self.visibility, &self.visibility_field) {
            (Some(fixed), _) => fixed.clone(),
            (None, Some(field)) => record
                .get(field)
                .and_then(Json::as_str)
                .ok_or_else(|| format!("field `{field}` (visibility) is missing"))?
                .to_string(),
            (None, None) => return Err("mapping has no visibility".into()),
        };
        let visibility = Visibility::parse(&visibility_text).ok_or_else(|| {
            format!("visibility `{visibility_text}` is neither broadcast nor direct")
        })?;
        let recipient_id = uuid_field(&record, self.recipient_field.as_deref())?;
        let sender_id = uuid_field(&record, self.sender_field.as_deref())?;
        if visibility == Visibility::Direct && recipient_id.is_none() {
            return Err("a direct notification needs a recipient".into());
        }
        let event_id = origin
            .ce_id
            .and_then(|id| Uuid::parse_str(id).ok())
            .or_else(|| {
                record
                    .get("event_id")
                    .and_then(Json::as_str)
                    .and_then(|id| Uuid::parse_str(id).ok())
            })
            .unwrap_or_else(|| {
                let position = format!("{}/{}/{}", origin.topic, origin.partition, origin.offset);
                Uuid::new_v5(&POSITION_NAMESPACE, position.as_bytes())
            });
        let created_at = origin
            .ce_time
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(Utc::now);
        let event_type = match &self.event_type_field {
            None => self.event_type.clone(),
            Some(field) => {
                let value = record
                    .get(field)
                    .and_then(Json::as_str)
                    .ok_or_else(|| format!("field `{field}` (event type) is missing"))?;
                if !is_event_type(value) {
                    return Err(event_type_rule(value));
                }
                value.to_string()
            }
        };
        let payload = match &self.payload_field {
            None => record,
            Some(field) => {
                let text = record
                    .get(field)
                    .and_then(Json::as_str)
                    .ok_or_else(|| format!("field `{field}` (payload) is missing"))?;
                serde_json::from_str(text)
                    .map_err(|e| format!("field `{field}` is not JSON: {e}"))?
            }
        };
        Ok(NewNotification {
            event_id,
            event_type,
            payload,
            visibility,
            recipient_id,
            sender_id,
            created_at,
        })
    }
}

fn uuid_field(record: &Json, field: Option<&str>) -> Result<Option<Uuid>, String> {
    let Some(field) = field else { return Ok(None) };
    match record.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Uuid::parse_str(s)
            .map(Some)
            .map_err(|_| format!("field `{field}` is not a UUID")),
        Some(_) => Err(format!("field `{field}` is not a UUID string")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn origin() -> Origin<'static> {
        Origin {
            topic: "t",
            partition: 1,
            offset: 42,
            ce_id: None,
            ce_time: None,
        }
    }

    fn message_mapping() -> Mapping {
        Mapping {
            enabled: true,
            event_type: "user.message".into(),
            event_type_field: None,
            payload_field: None,
            visibility: None,
            visibility_field: Some("visibility".into()),
            recipient_field: Some("recipient_id".into()),
            sender_field: Some("sender_id".into()),
        }
    }

    #[test]
    fn maps_direct_and_broadcast_messages() {
        let sender = Uuid::new_v4();
        let recipient = Uuid::new_v4();
        let event_id = Uuid::new_v4();
        let row = message_mapping()
            .to_row(
                json!({"event_id": event_id, "sender_id": sender, "recipient_id": recipient,
                       "visibility": "direct", "message": "hi"}),
                &origin(),
            )
            .unwrap();
        assert_eq!(row.event_id, event_id);
        assert_eq!(row.visibility, Visibility::Direct);
        assert_eq!(row.recipient_id, Some(recipient));
        assert_eq!(row.sender_id, Some(sender));
        assert_eq!(row.payload["message"], "hi");

        let row = message_mapping()
            .to_row(
                json!({"sender_id": sender, "recipient_id": null, "visibility": "broadcast"}),
                &origin(),
            )
            .unwrap();
        assert_eq!(row.visibility, Visibility::Broadcast);
        // No id in the event: derived from the position, the same on redelivery.
        let again = message_mapping()
            .to_row(
                json!({"sender_id": sender, "visibility": "broadcast"}),
                &origin(),
            )
            .unwrap();
        assert_eq!(row.event_id, again.event_id);
    }

    #[test]
    fn rejects_records_that_cannot_be_notifications() {
        let m = message_mapping();
        assert!(m
            .to_row(json!({"visibility": "direct"}), &origin())
            .unwrap_err()
            .contains("recipient"));
        assert!(m
            .to_row(json!({"visibility": "loud"}), &origin())
            .unwrap_err()
            .contains("neither"));
        assert!(m
            .to_row(
                json!({"visibility": "broadcast", "sender_id": "x"}),
                &origin()
            )
            .unwrap_err()
            .contains("sender_id"));
        assert!(Mapping {
            visibility: Some("direct".into()),
            ..message_mapping()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn dispatch_notifications_take_type_and_payload_from_fields() {
        let m = Mapping {
            enabled: true,
            event_type: String::new(),
            event_type_field: Some("event_type".into()),
            payload_field: Some("payload".into()),
            visibility: None,
            visibility_field: Some("visibility".into()),
            recipient_field: Some("recipient_id".into()),
            sender_field: None,
        };
        m.validate().unwrap();
        let recipient = Uuid::new_v4();
        let row = m
            .to_row(
                json!({"event_type": "commerce.vip_purchase", "visibility": "direct",
                       "recipient_id": recipient, "payload": "{\"amount\": 750}"}),
                &origin(),
            )
            .unwrap();
        assert_eq!(row.event_type, "commerce.vip_purchase");
        assert_eq!(row.payload, json!({"amount": 750}));
        assert_eq!(row.recipient_id, Some(recipient));
        assert!(m
            .to_row(
                json!({"event_type": "x", "visibility": "broadcast", "payload": "{}"}),
                &origin()
            )
            .unwrap_err()
            .contains("domain.entity"));
        assert!(m
            .to_row(
                json!({"event_type": "commerce.vip-purchase", "visibility": "broadcast", "payload": "{}"}),
                &origin()
            )
            .unwrap_err()
            .contains("must be namespaced"));
        assert!(m
            .to_row(
                json!({"event_type": "a.b", "visibility": "broadcast", "payload": "nope"}),
                &origin()
            )
            .unwrap_err()
            .contains("not JSON"));
    }
}
