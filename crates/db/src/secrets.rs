//! `substrate_private`: the sealed secrets of rule actions (`action_secrets`, written with the
//! rule in one transaction, read by the dispatcher, re-sealed on rotation, pruned) and the login
//! webhook secret (`settings`). Plaintexts and keys never reach SQL: callers pass a keyring.

use chrono::{DateTime, Utc};
use substrate_secrets::{action_aad, Keyring, OpenError, Sealed};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::rules::RuleRow;
use crate::DbError;

/// Name of the login webhook secret in `substrate_private.settings`.
pub const LOGIN_WEBHOOK_SECRET: &str = "login_webhook_secret";

/// One sealed action secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionSecretRow {
    pub rule_id: Uuid,
    pub rule_version: i32,
    pub action_index: i32,
    pub sealed: Sealed,
}

impl ActionSecretRow {
    /// The associated data its ciphertext is bound to.
    pub fn aad(&self) -> Vec<u8> {
        action_aad(&self.rule_id, self.rule_version, self.action_index)
    }
}

fn row(r: &tokio_postgres::Row) -> ActionSecretRow {
    ActionSecretRow {
        rule_id: r.get(0),
        rule_version: r.get(1),
        action_index: r.get(2),
        sealed: Sealed {
            key_id: r.get(3),
            nonce: r.get(4),
            ciphertext: r.get(5),
        },
    }
}

const COLUMNS: &str = "rule_id, rule_version, action_index, key_id, nonce, ciphertext";

/// Saves a rule (a new version when it exists) and, in the same transaction, seals each
/// `(action index, plaintext)` of `secrets` with the keyring's active key, bound to the saved
/// rule's id and version. `rule.actions` must already be the public form.
pub async fn save_rule<C: GenericClient>(
    client: &mut C,
    rule: &RuleRow,
    secrets: &[(i32, Vec<u8>)],
    keyring: &Keyring,
) -> Result<RuleRow, DbError> {
    let tx = client.transaction().await?;
    let saved = crate::rules::upsert(&tx, rule).await?;
    let rows: Vec<ActionSecretRow> = secrets
        .iter()
        .map(|(index, plaintext)| {
            let aad = action_aad(&saved.id, saved.version, *index);
            ActionSecretRow {
                rule_id: saved.id,
                rule_version: saved.version,
                action_index: *index,
                sealed: keyring.seal(plaintext, &aad),
            }
        })
        .collect();
    insert(&tx, &rows).await?;
    tx.commit().await?;
    Ok(saved)
}

/// Inserts sealed rows (replacing a row of the same rule, version and index).
pub async fn insert<C: GenericClient>(client: &C, rows: &[ActionSecretRow]) -> Result<(), DbError> {
    for r in rows {
        client
            .execute(
                "INSERT INTO substrate_private.action_secrets
                     (rule_id, rule_version, action_index, key_id, nonce, ciphertext)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (rule_id, rule_version, action_index) DO UPDATE
                   SET key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce,
                       ciphertext = EXCLUDED.ciphertext, created_at = now(), rotated_at = NULL",
                &[
                    &r.rule_id,
                    &r.rule_version,
                    &r.action_index,
                    &r.sealed.key_id,
                    &r.sealed.nonce,
                    &r.sealed.ciphertext,
                ],
            )
            .await?;
    }
    Ok(())
}

/// The secret a request of `rule_version` uses for `action_index`: the row of the highest
/// version at or below it (an enable or disable makes a version without new secrets).
pub async fn for_request<C: GenericClient>(
    client: &C,
    rule_id: Uuid,
    rule_version: i32,
    action_index: i32,
) -> Result<Option<ActionSecretRow>, DbError> {
    let found = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM substrate_private.action_secrets
                 WHERE rule_id = $1 AND action_index = $3 AND rule_version <= $2
                 ORDER BY rule_version DESC LIMIT 1"
            ),
            &[&rule_id, &rule_version, &action_index],
        )
        .await?;
    Ok(found.as_ref().map(row))
}

/// Rows sealed per key id (what `esctl secrets status` shows, and whether an old key is
/// still needed).
pub async fn count_by_key<C: GenericClient>(client: &C) -> Result<Vec<(String, i64)>, DbError> {
    let rows = client
        .query(
            "SELECT key_id, count(*) FROM substrate_private.action_secrets
             GROUP BY key_id ORDER BY key_id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// What a rotation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// Rows re-sealed with the active key.
    pub resealed: u64,
    /// Rows that did not open (unknown key id, or tampered), left as they are.
    pub failed: Vec<(Uuid, i32, i32, OpenError)>,
}

/// Re-seals every row not sealed with the keyring's active key, in one transaction (rows are
/// locked, so a concurrent save or rotation waits).
pub async fn rotate<C: GenericClient>(
    client: &mut C,
    keyring: &Keyring,
) -> Result<Rotation, DbError> {
    let tx = client.transaction().await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM substrate_private.action_secrets
                 WHERE key_id <> $1 ORDER BY rule_id, rule_version, action_index FOR UPDATE"
            ),
            &[&keyring.active_key_id()],
        )
        .await?;
    let mut rotation = Rotation::default();
    for found in rows.iter().map(row) {
        match keyring.reseal(&found.sealed, &found.aad()) {
            Ok(sealed) => {
                tx.execute(
                    "UPDATE substrate_private.action_secrets
                        SET key_id = $4, nonce = $5, ciphertext = $6, rotated_at = now()
                      WHERE rule_id = $1 AND rule_version = $2 AND action_index = $3",
                    &[
                        &found.rule_id,
                        &found.rule_version,
                        &found.action_index,
                        &sealed.key_id,
                        &sealed.nonce,
                        &sealed.ciphertext,
                    ],
                )
                .await?;
                rotation.resealed += 1;
            }
            Err(e) => {
                rotation
                    .failed
                    .push((found.rule_id, found.rule_version, found.action_index, e))
            }
        }
    }
    tx.commit().await?;
    Ok(rotation)
}

/// Deletes rows no request younger than `older_than` can need: rows superseded by a newer
/// sealed version of their rule that was saved before the cutoff, and rows of deleted rules
/// sealed before it. Returns how many were deleted.
pub async fn prune<C: GenericClient>(
    client: &C,
    older_than: DateTime<Utc>,
) -> Result<u64, DbError> {
    Ok(client
        .execute(
            "DELETE FROM substrate_private.action_secrets s
              WHERE EXISTS (SELECT 1 FROM substrate_private.action_secrets n
                             WHERE n.rule_id = s.rule_id AND n.rule_version > s.rule_version
                               AND n.created_at < $1)
                 OR (s.created_at < $1
                     AND NOT EXISTS (SELECT 1 FROM public.rules r WHERE r.id = s.rule_id))",
            &[&older_than],
        )
        .await?)
}

/// Sets the secret the login webhook trigger sends (`X-Webhook-Secret`).
pub async fn set_login_webhook_secret<C: GenericClient>(
    client: &C,
    secret: &str,
) -> Result<(), DbError> {
    client
        .execute(
            "INSERT INTO substrate_private.settings (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            &[&LOGIN_WEBHOOK_SECRET, &secret],
        )
        .await?;
    Ok(())
}

/// When the login webhook secret was last set, if it is.
pub async fn login_webhook_secret_set_at<C: GenericClient>(
    client: &C,
) -> Result<Option<DateTime<Utc>>, DbError> {
    Ok(client
        .query_opt(
            "SELECT updated_at FROM substrate_private.settings WHERE name = $1",
            &[&LOGIN_WEBHOOK_SECRET],
        )
        .await?
        .map(|r| r.get(0)))
}
