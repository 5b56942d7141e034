//! `user_notifications`: batched, idempotent inserts (unique `event_id`). One statement per
//! batch; the table's statement trigger sends the realtime `NOTIFY`.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::DbError;

/// One row to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub visibility: Visibility,
    pub recipient_id: Option<Uuid>,
    pub sender_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Broadcast,
    Direct,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Broadcast => "broadcast",
            Self::Direct => "direct",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "broadcast" => Some(Self::Broadcast),
            "direct" => Some(Self::Direct),
            _ => None,
        }
    }
}

/// Inserts the rows in one statement; rows whose `event_id` exists are skipped.
/// Returns the number of rows inserted.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "INSERT user_notifications", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "INSERT", db.collection.name = "user_notifications"))]
pub async fn insert_batch<C: GenericClient>(
    client: &C,
    rows: &[NewNotification],
) -> Result<u64, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ids = Vec::with_capacity(rows.len());
    let mut types = Vec::with_capacity(rows.len());
    let mut payloads = Vec::with_capacity(rows.len());
    let mut visibilities = Vec::with_capacity(rows.len());
    let mut recipients = Vec::with_capacity(rows.len());
    let mut senders = Vec::with_capacity(rows.len());
    let mut times = Vec::with_capacity(rows.len());
    for row in rows {
        ids.push(row.event_id);
        types.push(row.event_type.as_str());
        payloads.push(&row.payload);
        visibilities.push(row.visibility.as_str());
        recipients.push(row.recipient_id);
        senders.push(row.sender_id);
        times.push(row.created_at);
    }
    let inserted = client
        .execute(
            "INSERT INTO public.user_notifications
                 (event_id, event_type, payload, visibility, recipient_id, sender_id, created_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::uuid[],
                                  $6::uuid[], $7::timestamptz[])
             ON CONFLICT (event_id) DO NOTHING",
            &[
                &ids,
                &types,
                &payloads,
                &visibilities,
                &recipients,
                &senders,
                &times,
            ],
        )
        .await?;
    Ok(inserted)
}
