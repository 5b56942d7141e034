//! `rules`: what the rule-evaluator loads (enabled rules with their version) and what the
//! operator CLI writes. Validation happens before a write, in the caller (substrate-rules).

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::DbError;

/// Channel announcing rule changes (payload: the rule id).
pub const RULES_CHANGED: &str = "rules_changed";

#[derive(Debug, Clone, PartialEq)]
pub struct RuleRow {
    pub id: Uuid,
    pub name: String,
    pub enabled: bool,
    pub topics: Vec<String>,
    pub event_types: Vec<String>,
    pub condition: serde_json::Value,
    pub condition_text: Option<String>,
    pub actions: serde_json::Value,
    pub priority: i32,
    pub version: i32,
}

const COLUMNS: &str =
    "id, name, enabled, topics, event_types, condition, condition_text, actions, priority, version";

fn row(r: &tokio_postgres::Row) -> RuleRow {
    RuleRow {
        id: r.get(0),
        name: r.get(1),
        enabled: r.get(2),
        topics: r.get(3),
        event_types: r.get(4),
        condition: r.get(5),
        condition_text: r.get(6),
        actions: r.get(7),
        priority: r.get(8),
        version: r.get(9),
    }
}

/// Enabled rules, highest priority first.
pub async fn load_enabled<C: GenericClient>(client: &C) -> Result<Vec<RuleRow>, DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM public.rules WHERE enabled ORDER BY priority DESC, name"
            ),
            &[],
        )
        .await?;
    Ok(rows.iter().map(row).collect())
}

pub async fn list<C: GenericClient>(client: &C) -> Result<Vec<RuleRow>, DbError> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM public.rules ORDER BY name"),
            &[],
        )
        .await?;
    Ok(rows.iter().map(row).collect())
}

/// Inserts a rule, or updates the one with the same name (a new version). Returns it.
pub async fn upsert<C: GenericClient>(client: &C, rule: &RuleRow) -> Result<RuleRow, DbError> {
    let r = client
        .query_one(
            &format!(
                "INSERT INTO public.rules (name, enabled, topics, event_types, condition, condition_text, actions, priority)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (name) DO UPDATE SET enabled = EXCLUDED.enabled, topics = EXCLUDED.topics,
                   event_types = EXCLUDED.event_types, condition = EXCLUDED.condition,
                   condition_text = EXCLUDED.condition_text, actions = EXCLUDED.actions,
                   priority = EXCLUDED.priority
                 RETURNING {COLUMNS}"
            ),
            &[
                &rule.name,
                &rule.enabled,
                &rule.topics,
                &rule.event_types,
                &rule.condition,
                &rule.condition_text,
                &rule.actions,
                &rule.priority,
            ],
        )
        .await?;
    Ok(row(&r))
}

/// Enables or disables a rule by name; false when there is no such rule.
pub async fn set_enabled<C: GenericClient>(
    client: &C,
    name: &str,
    enabled: bool,
) -> Result<bool, DbError> {
    let n = client
        .execute(
            "UPDATE public.rules SET enabled = $2 WHERE name = $1",
            &[&name, &enabled],
        )
        .await?;
    Ok(n > 0)
}
