//! Media sagas' tables: credits charged and refunded exactly once per request (the
//! `media_debit` / `media_refund` functions of the migration), the sagas and their durable
//! deadlines (`media_sagas`, `media_deadlines`), and the files users own (`media_files`).
//! Functions taking a [`Transaction`] are steps of one saga transition; the caller commits.

use std::fmt;

use chrono::{DateTime, Utc};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{GenericClient, Transaction};
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
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "SELECT media_debit", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "media_debit"))]
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
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "SELECT media_refund", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "media_refund"))]
pub async fn refund<C: GenericClient>(client: &C, request: Uuid) -> Result<bool, DbError> {
    Ok(client
        .query_one("SELECT public.media_refund($1)", &[&request])
        .await?
        .get(0))
}

/// The user's balance (`None` before their first upload).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "SELECT credits", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "credits"))]
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
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "SELECT media_files", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "media_files"))]
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
    pub state: SagaState,
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
    /// Reads a row of `SELECT {SAGA_COLUMNS}`; a state this code does not know is an error.
    pub fn from_row(row: &tokio_postgres::Row) -> Result<Self, DbError> {
        Ok(Self {
            request_id: row.try_get(0)?,
            user_id: row.try_get(1)?,
            state: row.try_get(2)?,
            file_name: row.try_get(3)?,
            media_type: row.try_get(4)?,
            file_size: row.try_get(5)?,
            upload_path: row.try_get(6)?,
            permanent_path: row.try_get(7)?,
            retry_count: row.try_get(8)?,
            reason: row.try_get(9)?,
            created_at: row.try_get(10)?,
            expires_at: row.try_get(11)?,
            received_at: row.try_get(12)?,
            ready_at: row.try_get(13)?,
        })
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
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "SELECT media_sagas", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "media_sagas"))]
pub async fn saga<C: GenericClient>(client: &C, request: Uuid) -> Result<Option<Saga>, DbError> {
    client
        .query_opt(
            &format!("SELECT {SAGA_COLUMNS} FROM public.media_sagas WHERE request_id = $1"),
            &[&request],
        )
        .await?
        .as_ref()
        .map(Saga::from_row)
        .transpose()
}

/// Where a saga stands (the `state` column, which the table's CHECK limits to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SagaState {
    /// Credit charged, upload URL signed; waiting for the file.
    Signed,
    /// Not enough credits (terminal).
    Rejected,
    /// The file arrived; moving it to its permanent key.
    Received,
    /// The file is in place and listed among the user's files (terminal).
    Confirmed,
    /// The upload URL expired first; credit refunded (terminal).
    Expired,
    /// The move failed after every retry; credit refunded (terminal).
    Failed,
}

impl SagaState {
    pub const ALL: [SagaState; 6] = [
        Self::Signed,
        Self::Rejected,
        Self::Received,
        Self::Confirmed,
        Self::Expired,
        Self::Failed,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Signed => "signed",
            Self::Rejected => "rejected",
            Self::Received => "received",
            Self::Confirmed => "confirmed",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the saga has finished (nothing moves it any more).
    pub const fn is_terminal(self) -> bool {
        !matches!(self, Self::Signed | Self::Received)
    }
}

impl fmt::Display for SagaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for SagaState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'a> FromSql<'a> for SagaState {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = <&str as FromSql>::from_sql(ty, raw)?;
        Self::parse(text).ok_or_else(|| format!("unknown saga state `{text}`").into())
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

/// A durable deadline of a saga (`media_deadlines.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadlineKind {
    /// The upload URL's TTL: expire the saga and refund unless the file arrived.
    UploadTtl,
    /// The move to permanent storage did not report back in time: retry it, or fail the saga.
    MoveTimeout,
}

impl DeadlineKind {
    pub const ALL: [DeadlineKind; 2] = [Self::UploadTtl, Self::MoveTimeout];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UploadTtl => "upload_ttl",
            Self::MoveTimeout => "move_timeout",
        }
    }
}

impl fmt::Display for DeadlineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'a> FromSql<'a> for DeadlineKind {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = <&str as FromSql>::from_sql(ty, raw)?;
        Self::parse(text).ok_or_else(|| format!("unknown deadline kind `{text}`").into())
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

// ---- sagas ----

/// The saga's row, locked until the transaction ends.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "SELECT media_sagas", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "media_sagas"))]
pub async fn lock_saga(tx: &Transaction<'_>, request: Uuid) -> Result<Option<Saga>, DbError> {
    tx.query_opt(
        &format!("SELECT {SAGA_COLUMNS} FROM public.media_sagas WHERE request_id = $1 FOR UPDATE"),
        &[&request],
    )
    .await?
    .as_ref()
    .map(Saga::from_row)
    .transpose()
}

/// A new upload saga after its credit decision.
#[derive(Debug, Clone)]
pub struct NewSaga<'a> {
    pub request_id: Uuid,
    pub user_id: Uuid,
    pub file_name: &'a str,
    pub media_type: &'a str,
    pub file_size: i64,
    pub upload_path: &'a str,
    pub permanent_path: &'a str,
    /// The intent's trace context, for the saga's deadlines.
    pub traceparent: Option<&'a str>,
}

/// Records the decision: `Signed` with `expires_at` = now + `ttl_secs` (whole milliseconds,
/// as signed into the URL) when approved, else `Rejected` (finished) saying why.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "INSERT media_sagas", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "INSERT", db.collection.name = "media_sagas"))]
pub async fn insert_saga(
    tx: &Transaction<'_>,
    new: &NewSaga<'_>,
    approved: bool,
    ttl_secs: f64,
) -> Result<Saga, DbError> {
    let (state, reason) = if approved {
        (SagaState::Signed, None)
    } else {
        (SagaState::Rejected, Some("insufficient credits"))
    };
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO public.media_sagas (request_id, user_id, state, file_name,
                     media_type, file_size, upload_path, permanent_path, reason,
                     expires_at, finished_at, traceparent)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                     CASE WHEN $3 = 'signed'
                          THEN date_trunc('milliseconds', now()) + $10 * interval '1 second' END,
                     CASE WHEN $3 = 'rejected' THEN now() END, $11)
                 RETURNING {SAGA_COLUMNS}"
            ),
            &[
                &new.request_id,
                &new.user_id,
                &state.as_str(),
                &new.file_name,
                &new.media_type,
                &new.file_size,
                &new.upload_path,
                &new.permanent_path,
                &reason,
                &ttl_secs,
                &new.traceparent,
            ],
        )
        .await?;
    Saga::from_row(&row)
}

/// The file arrived: `Received`, the retry count raised to `retry_count`, the upload's TTL
/// cancelled.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "UPDATE media_sagas", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE", db.collection.name = "media_sagas"))]
pub async fn mark_received(
    tx: &Transaction<'_>,
    request: Uuid,
    retry_count: i32,
) -> Result<(), DbError> {
    tx.execute(
        "UPDATE public.media_sagas SET state = 'received', received_at = now(),
             retry_count = GREATEST(retry_count, $2), updated_at = now()
         WHERE request_id = $1",
        &[&request, &retry_count],
    )
    .await?;
    tx.execute(
        "DELETE FROM public.media_deadlines WHERE request_id = $1 AND kind = 'upload_ttl'",
        &[&request],
    )
    .await?;
    Ok(())
}

/// The permanent object was reported before the upload's arrival was read.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "UPDATE media_sagas", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE", db.collection.name = "media_sagas"))]
pub async fn mark_ready(tx: &Transaction<'_>, request: Uuid) -> Result<(), DbError> {
    tx.execute(
        "UPDATE public.media_sagas SET ready_at = now(), updated_at = now() WHERE request_id = $1",
        &[&request],
    )
    .await?;
    Ok(())
}

/// Completes the upload: the file row, `Confirmed`, no deadlines left.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "INSERT media_files", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "INSERT", db.collection.name = "media_files"))]
pub async fn confirm(tx: &Transaction<'_>, saga: &Saga) -> Result<Saga, DbError> {
    tx.execute(
        "INSERT INTO public.media_files (request_id, user_id, file_path, file_name, media_type, file_size)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (request_id) DO NOTHING",
        &[
            &saga.request_id,
            &saga.user_id,
            &saga.permanent_path,
            &saga.file_name,
            &saga.media_type,
            &saga.file_size,
        ],
    )
    .await?;
    let row = tx
        .query_one(
            &format!(
                "UPDATE public.media_sagas SET state = 'confirmed', ready_at = COALESCE(ready_at, now()),
                     finished_at = now(), updated_at = now()
                 WHERE request_id = $1 RETURNING {SAGA_COLUMNS}"
            ),
            &[&saga.request_id],
        )
        .await?;
    tx.execute(
        "DELETE FROM public.media_deadlines WHERE request_id = $1",
        &[&saga.request_id],
    )
    .await?;
    Saga::from_row(&row)
}

/// Ends the saga in `Expired` or `Failed` saying why (the caller refunds in the same
/// transaction).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "UPDATE media_sagas", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE", db.collection.name = "media_sagas"))]
pub async fn finish(
    tx: &Transaction<'_>,
    request: Uuid,
    state: SagaState,
    reason: &str,
) -> Result<(), DbError> {
    debug_assert!(matches!(state, SagaState::Expired | SagaState::Failed));
    tx.execute(
        "UPDATE public.media_sagas SET state = $2, reason = $3, finished_at = now(),
             updated_at = now()
         WHERE request_id = $1",
        &[&request, &state.as_str(), &reason],
    )
    .await?;
    Ok(())
}

/// Counts a move retry.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "UPDATE media_sagas", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE", db.collection.name = "media_sagas"))]
pub async fn set_retry_count(
    tx: &Transaction<'_>,
    request: Uuid,
    count: i32,
) -> Result<(), DbError> {
    tx.execute(
        "UPDATE public.media_sagas SET retry_count = $2, updated_at = now() WHERE request_id = $1",
        &[&request, &count],
    )
    .await?;
    Ok(())
}

// ---- deadlines ----

/// Schedules the upload's TTL at `due_at` (the saga's `expires_at`); kept when already there.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "INSERT media_deadlines", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "INSERT", db.collection.name = "media_deadlines"))]
pub async fn schedule_upload_ttl(
    tx: &Transaction<'_>,
    request: Uuid,
    due_at: DateTime<Utc>,
    scope: &str,
) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO public.media_deadlines (request_id, kind, due_at, scope)
         VALUES ($1, 'upload_ttl', $2, $3) ON CONFLICT DO NOTHING",
        &[&request, &due_at, &scope],
    )
    .await?;
    Ok(())
}

/// (Re)arms the move timeout `after_secs` from now, unfired.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "INSERT media_deadlines", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "INSERT", db.collection.name = "media_deadlines"))]
pub async fn schedule_move_timeout(
    tx: &Transaction<'_>,
    request: Uuid,
    after_secs: f64,
    scope: &str,
) -> Result<(), DbError> {
    tx.execute(
        "INSERT INTO public.media_deadlines (request_id, kind, due_at, scope)
         VALUES ($1, 'move_timeout', now() + $2 * interval '1 second', $3)
         ON CONFLICT (request_id, kind)
         DO UPDATE SET due_at = EXCLUDED.due_at, fired_at = NULL",
        &[&request, &after_secs, &scope],
    )
    .await?;
    Ok(())
}

/// Moves a deadline `after_secs` from now.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "UPDATE media_deadlines", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE", db.collection.name = "media_deadlines"))]
pub async fn postpone_deadline(
    tx: &Transaction<'_>,
    request: Uuid,
    kind: DeadlineKind,
    after_secs: f64,
) -> Result<(), DbError> {
    tx.execute(
        "UPDATE public.media_deadlines SET due_at = now() + $3 * interval '1 second'
         WHERE request_id = $1 AND kind = $2",
        &[&request, &kind.as_str(), &after_secs],
    )
    .await?;
    Ok(())
}

/// A deadline that fell due.
#[derive(Debug, Clone, PartialEq)]
pub struct DueDeadline {
    pub request_id: Uuid,
    pub kind: DeadlineKind,
    pub due_at: DateTime<Utc>,
    /// The saga's trace context (its upload intent's).
    pub traceparent: Option<String>,
}

/// Unfired deadlines of `scope` due by now, oldest first.
pub async fn due_deadlines<C: GenericClient>(
    client: &C,
    scope: &str,
    limit: i64,
) -> Result<Vec<DueDeadline>, DbError> {
    let rows = client
        .query(
            "SELECT d.request_id, d.kind, d.due_at, s.traceparent
             FROM public.media_deadlines d
             LEFT JOIN public.media_sagas s ON s.request_id = d.request_id
             WHERE d.scope = $2 AND d.fired_at IS NULL AND d.due_at <= now()
             ORDER BY d.due_at LIMIT $1",
            &[&limit, &scope],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(DueDeadline {
                request_id: r.try_get(0)?,
                kind: r.try_get(1)?,
                due_at: r.try_get(2)?,
                traceparent: r.try_get(3)?,
            })
        })
        .collect()
}

/// Locks a due, unfired deadline for this transaction; false when it is not due any more or
/// another instance holds it.
pub async fn lock_due_deadline(
    tx: &Transaction<'_>,
    request: Uuid,
    kind: DeadlineKind,
) -> Result<bool, DbError> {
    Ok(tx
        .query_opt(
            "SELECT 1 FROM public.media_deadlines
             WHERE request_id = $1 AND kind = $2 AND fired_at IS NULL AND due_at <= now()
             FOR UPDATE SKIP LOCKED",
            &[&request, &kind.as_str()],
        )
        .await?
        .is_some())
}

/// Marks a deadline fired (handled, or abandoned).
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "UPDATE media_deadlines", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE", db.collection.name = "media_deadlines"))]
pub async fn mark_fired<C: GenericClient>(
    client: &C,
    request: Uuid,
    kind: DeadlineKind,
) -> Result<(), DbError> {
    client
        .execute(
            "UPDATE public.media_deadlines SET fired_at = now()
             WHERE request_id = $1 AND kind = $2 AND fired_at IS NULL",
            &[&request, &kind.as_str()],
        )
        .await?;
    Ok(())
}

// ---- files ----

/// Whether `user` has an active file at `path`.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "SELECT media_files", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "media_files"))]
pub async fn owns_active_file<C: GenericClient>(
    client: &C,
    path: &str,
    user: Uuid,
) -> Result<bool, DbError> {
    Ok(client
        .query_opt(
            "SELECT 1 FROM public.media_files
             WHERE file_path = $1 AND user_id = $2 AND status = 'active'",
            &[&path, &user],
        )
        .await?
        .is_some())
}

/// When `user`'s file at `path` was deleted: `Ok(None)` when there is no such file,
/// `Some(None)` while it is active.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "SELECT media_files", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "SELECT", db.collection.name = "media_files"))]
pub async fn file_deleted_at<C: GenericClient>(
    client: &C,
    path: &str,
    user: Uuid,
) -> Result<Option<Option<DateTime<Utc>>>, DbError> {
    let Some(row) = client
        .query_opt(
            "SELECT status, deleted_at FROM public.media_files WHERE file_path = $1 AND user_id = $2",
            &[&path, &user],
        )
        .await?
    else {
        return Ok(None);
    };
    let status: &str = row.try_get(0)?;
    if status != "deleted" {
        return Ok(Some(None));
    }
    let at: Option<DateTime<Utc>> = row.try_get(1)?;
    Ok(Some(Some(at.unwrap_or_else(Utc::now))))
}

/// Marks `user`'s file at `path` deleted (once: the first time is kept) and returns when.
#[tracing::instrument(level = "debug", name = "db", skip_all, fields(otel.name = "UPDATE media_files", otel.kind = "client", db.system.name = "postgresql", db.operation.name = "UPDATE", db.collection.name = "media_files"))]
pub async fn mark_file_deleted<C: GenericClient>(
    client: &C,
    path: &str,
    user: Uuid,
) -> Result<DateTime<Utc>, DbError> {
    let at: Option<DateTime<Utc>> = client
        .query_one(
            "UPDATE public.media_files
             SET status = 'deleted', deleted_at = COALESCE(deleted_at, now())
             WHERE file_path = $1 AND user_id = $2 RETURNING deleted_at",
            &[&path, &user],
        )
        .await?
        .try_get(0)?;
    Ok(at.unwrap_or_else(Utc::now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_terminal_ones_are_known() {
        for state in SagaState::ALL {
            assert_eq!(SagaState::parse(state.as_str()), Some(state));
        }
        assert_eq!(SagaState::parse("Signed"), None);
        for kind in DeadlineKind::ALL {
            assert_eq!(DeadlineKind::parse(kind.as_str()), Some(kind));
        }
        let open: Vec<_> = SagaState::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(open, [SagaState::Signed, SagaState::Received]);
    }
}
