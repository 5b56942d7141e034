//! Applies `supabase/migrations/*.sql` in file-name order, each once, each in its own
//! transaction, under an advisory lock so concurrent starts do not race. Applied versions are
//! recorded in `substrate_migrations.applied`.

use std::path::Path;

use tokio_postgres::Client;

use crate::DbError;

const LOCK_KEY: i64 = 0x5375_6273_7472;

/// Returns the file names applied by this call.
pub async fn migrate(client: &mut Client, dir: &Path) -> Result<Vec<String>, DbError> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| DbError::Migration {
            file: dir.display().to_string(),
            message: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();

    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS substrate_migrations;
             CREATE TABLE IF NOT EXISTS substrate_migrations.applied (
                 version text PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = apply_all(client, &files).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    result
}

async fn apply_all(
    client: &mut Client,
    files: &[std::path::PathBuf],
) -> Result<Vec<String>, DbError> {
    let mut applied = Vec::new();
    for path in files {
        let version = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let done = client
            .query_opt(
                "SELECT 1 FROM substrate_migrations.applied WHERE version = $1",
                &[&version],
            )
            .await?
            .is_some();
        if done {
            continue;
        }
        let sql = std::fs::read_to_string(path).map_err(|e| DbError::Migration {
            file: version.clone(),
            message: e.to_string(),
        })?;
        let tx = client.transaction().await?;
        tx.batch_execute(&sql)
            .await
            .map_err(|e| DbError::Migration {
                file: version.clone(),
                message: e
                    .as_db_error()
                    .map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string()),
            })?;
        tx.execute(
            "INSERT INTO substrate_migrations.applied (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(migration = %version, "applied");
        applied.push(version);
    }
    Ok(applied)
}
