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

/// Where a media saga stands (the row of `media_sagas`).
#[derive(Debug, Clone, PartialEq)]
pub struct Saga {
    pub request_id: Uuid,
    pub user_id: Uuid,
    /// `signed`, `received` (in flight); `rejected`, `confirmed`, `expired`, `failed` (terminal).
    pub state: String,
    pub file_name: String,
    pub media_type: String,
    pub file_size: i64,
    pub upload_path: Option<String>,
    pub permanent_path: Option<String>,
    pub retry_count: i32,
    pub reason: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub received_at: Option<chrono::DateTime<chrono::Utc>>,
    pub ready_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The columns [`Saga::from_row`] reads, for `SELECT {SAGA_COLUMNS} FROM public.media_sagas`.
pub const SAGA_COLUMNS: &str = "request_id, user_id, state, file_name, media_type, file_size, \
     upload_path, permanent_path, retry_count, reason, created_at, expires_at, received_at, ready_at";

impl Saga {
    pub fn from_row(row: &tokio_postgres::Row) -> Self {
        Self {
            request_id: row.get(0),
            user_id: row.get(1),
            state: row.get(2),
            file_name: row.get(3),
            media_type: row.get(4),
            file_size: row.get(5),
            upload_path: row.get(6),
            permanent_path: row.get(7),
            retry_count: row.get(8),
            reason: row.get(9),
            created_at: row.get(10),
            expires_at: row.get(11),
            received_at: row.get(12),
            ready_at: row.get(13),
        }
    }

    /// Whether an object found at the upload path is the one this saga signed for: `size` and
    /// `content_type` as declared. The error says what differs.
    pub fn check_upload(&self, size: i64, content_type: Option<&str>) -> Result<(), String> {
        if size != self.file_size {
            return Err(format!(
                "the object has {size} bytes; the upload declared {}",
                self.file_size
            ));
        }
        let declared = self.media_type.as_str();
        let found = content_type
            .map(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        if found != declared {
            return Err(format!(
                "the object's content type is `{found}`; the upload declared `{declared}`"
            ));
        }
        Ok(())
    }
}

/// A saga by request id.
pub async fn saga<C: GenericClient>(client: &C, request: Uuid) -> Result<Option<Saga>, DbError> {
    Ok(client
        .query_opt(
            &format!("SELECT {SAGA_COLUMNS} FROM public.media_sagas WHERE request_id = $1"),
            &[&request],
        )
        .await?
        .as_ref()
        .map(Saga::from_row))
}
