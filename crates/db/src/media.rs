//! Media sagas' tables: credits charged and refunded exactly once per request (the
//! `media_debit` / `media_refund` functions of the migration), and the files users own.

use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::DbError;

/// The credit decision for an upload request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debit {
    pub approved: bool,
    /// The balance after the decision.
    pub balance: i32,
}

/// Charges one credit for `request` when `user` has one (new users start with `starting`).
/// Calling it again for the same request returns the approval without charging again.
pub async fn debit<C: GenericClient>(
    client: &C,
    request: Uuid,
    user: Uuid,
    starting: i32,
) -> Result<Debit, DbError> {
    let row = client
        .query_one(
            "SELECT approved, balance FROM public.media_debit($1, $2, $3)",
            &[&request, &user, &starting],
        )
        .await?;
    Ok(Debit {
        approved: row.get(0),
        balance: row.get(1),
    })
}

/// Refunds the credit charged for `request`; false when there was none or it was refunded.
pub async fn refund<C: GenericClient>(client: &C, request: Uuid) -> Result<bool, DbError> {
    Ok(client
        .query_one("SELECT public.media_refund($1)", &[&request])
        .await?
        .get(0))
}

/// The user's balance (`None` before their first upload).
pub async fn balance<C: GenericClient>(client: &C, user: Uuid) -> Result<Option<i32>, DbError> {
    Ok(client
        .query_opt(
            "SELECT balance FROM public.credits WHERE user_id = $1",
            &[&user],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Sum of the user's ledger (equals the balance when every change went through the ledger).
pub async fn ledger_sum<C: GenericClient>(client: &C, user: Uuid) -> Result<i64, DbError> {
    Ok(client
        .query_one(
            "SELECT COALESCE(sum(delta), 0)::bigint FROM public.credit_ledger WHERE user_id = $1",
            &[&user],
        )
        .await?
        .get(0))
}

/// An active file.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaFile {
    pub request_id: Uuid,
    pub file_path: String,
    pub file_name: String,
    pub media_type: String,
    pub file_size: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The user's active files, newest first (at most 1000).
pub async fn active_files<C: GenericClient>(
    client: &C,
    user: Uuid,
) -> Result<Vec<MediaFile>, DbError> {
    let rows = client
        .query(
            "SELECT request_id, file_path, file_name, media_type, file_size, created_at
             FROM public.media_files WHERE user_id = $1 AND status = 'active'
             ORDER BY created_at DESC, file_path LIMIT 1000",
            &[&user],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| MediaFile {
            request_id: r.get(0),
            file_path: r.get(1),
            file_name: r.get(2),
            media_type: r.get(3),
            file_size: r.get(4),
            created_at: r.get(5),
        })
        .collect())
}
