//! The read side of `user_notifications` in commit order.
//!
//! Every row carries `tx`, the id of the transaction that inserted it. A query hands out only
//! rows with `tx` below the xmin of its own snapshot: every transaction below xmin has ended, and
//! every row they inserted is visible in that snapshot, so nothing can later appear below that
//! point. Rows are ordered by [`Cursor`] = `(tx, id)`. Handing rows out in cursor order, up to a
//! snapshot's xmin, therefore never skips a row that commits later, and a client that resumes
//! after the last cursor it saw receives exactly the rows it has not seen.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;
use uuid::Uuid;

use crate::DbError;

/// A position in the feed: `(tx, id)`, written `<tx>-<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor {
    pub tx: u64,
    pub id: i64,
}

impl Cursor {
    /// Before every row.
    pub const START: Cursor = Cursor { tx: 0, id: 0 };

    /// Just below transaction `xmin`: every row of an older transaction is at or before it.
    pub fn below(xmin: u64) -> Self {
        Self {
            tx: xmin.saturating_sub(1),
            id: i64::MAX,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.tx, self.id)
    }
}

impl FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a notification cursor (<tx>-<id>, as in event ids)");
        let (tx, id) = s.trim().split_once('-').ok_or_else(bad)?;
        let cursor = Self {
            tx: tx.parse().map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
        };
        if cursor.id < 0 {
            return Err(bad());
        }
        Ok(cursor)
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One notification as clients read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedRow {
    pub cursor: Cursor,
    pub id: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: serde_json::Value,
    pub visibility: String,
    pub recipient_id: Option<Uuid>,
    pub sender_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl FeedRow {
    /// The RLS policy's rule: broadcast rows, and direct rows of which `user` is the sender or
    /// the recipient.
    pub fn visible_to(&self, user: Uuid) -> bool {
        self.visibility == "broadcast"
            || self.recipient_id == Some(user)
            || self.sender_id == Some(user)
    }
}

const COLUMNS: &str = "n.tx::text, n.id, n.event_id, n.event_type, n.payload, n.visibility, \
                       n.recipient_id, n.sender_id, n.created_at";

fn row(r: &tokio_postgres::Row, at: usize) -> Result<FeedRow, DbError> {
    let tx: String = r.get(at);
    let id: i64 = r.get(at + 1);
    Ok(FeedRow {
        cursor: Cursor {
            tx: tx
                .parse()
                .map_err(|_| DbError::Config(format!("tx `{tx}` is not a number")))?,
            id,
        },
        id,
        event_id: r.get(at + 2),
        event_type: r.get(at + 3),
        payload: r.get(at + 4),
        visibility: r.get(at + 5),
        recipient_id: r.get(at + 6),
        sender_id: r.get(at + 7),
        created_at: r.get(at + 8),
    })
}

const VISIBLE: &str = "(n.visibility = 'broadcast' OR n.recipient_id = $U OR n.sender_id = $U)";

/// The xmin of a fresh snapshot: rows of transactions below it are final.
pub async fn watermark<C: GenericClient>(client: &C) -> Result<u64, DbError> {
    let row = client
        .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
        .await?;
    let text: String = row.get(0);
    text.parse()
        .map_err(|_| DbError::Config(format!("xmin `{text}` is not a number")))
}

/// Final rows of every user after `after`, in cursor order, at most `limit`, with the
/// watermark of the snapshot that read them (all in one statement, so one snapshot).
pub async fn final_after<C: GenericClient>(
    client: &C,
    after: Cursor,
    limit: i64,
) -> Result<(Vec<FeedRow>, u64), DbError> {
    let rows = client
        .query(
            &format!(
                "SELECT w.xmin::text, {COLUMNS}
                 FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) w
                 LEFT JOIN LATERAL (
                   SELECT * FROM public.user_notifications n
                   WHERE (n.tx, n.id) > ($1::text::xid8, $2) AND n.tx < w.xmin
                   ORDER BY n.tx, n.id LIMIT $3
                 ) n ON true
                 ORDER BY n.tx, n.id"
            ),
            &[&after.tx.to_string(), &after.id, &limit],
        )
        .await?;
    let mut watermark = 0;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let xmin: String = r.get(0);
        watermark = xmin
            .parse()
            .map_err(|_| DbError::Config(format!("xmin `{xmin}` is not a number")))?;
        if r.get::<_, Option<String>>(1).is_some() {
            out.push(row(r, 1)?);
        }
    }
    Ok((out, watermark))
}

/// Rows `user` may see with `after < cursor <= up_to`, in cursor order, at most `limit`. The
/// caller guarantees `up_to` is final (at or below a watermark it read).
pub async fn visible_between<C: GenericClient>(
    client: &C,
    user: Uuid,
    after: Cursor,
    up_to: Cursor,
    limit: i64,
) -> Result<Vec<FeedRow>, DbError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM public.user_notifications n
         WHERE (n.tx, n.id) > ($1::text::xid8, $2) AND (n.tx, n.id) <= ($3::text::xid8, $4)
           AND {VISIBLE}
         ORDER BY n.tx, n.id LIMIT $5"
    )
    .replace("$U", "$6");
    let rows = client
        .query(
            &sql,
            &[
                &after.tx.to_string(),
                &after.id,
                &up_to.tx.to_string(),
                &up_to.id,
                &limit,
                &user,
            ],
        )
        .await?;
    rows.iter().map(|r| row(r, 0)).collect()
}

/// A page of `user`'s final rows: after `after` ascending, or before `before` descending.
pub async fn page<C: GenericClient>(
    client: &C,
    user: Uuid,
    after: Option<Cursor>,
    before: Option<Cursor>,
    limit: i64,
) -> Result<Vec<FeedRow>, DbError> {
    let (bound, order) = match (after, before) {
        (_, Some(before)) => (("<", before), "DESC"),
        (after, None) => ((">", after.unwrap_or(Cursor::START)), "ASC"),
    };
    let (op, cursor) = bound;
    let sql = format!(
        "SELECT {COLUMNS} FROM public.user_notifications n
         WHERE (n.tx, n.id) {op} ($1::text::xid8, $2)
           AND n.tx < pg_snapshot_xmin(pg_current_snapshot())
           AND {VISIBLE}
         ORDER BY n.tx {order}, n.id {order} LIMIT $3"
    )
    .replace("$U", "$4");
    let rows = client
        .query(&sql, &[&cursor.tx.to_string(), &cursor.id, &limit, &user])
        .await?;
    rows.iter().map(|r| row(r, 0)).collect()
}

/// Records that `user` has read everything up to `cursor` (never moves backwards).
pub async fn mark_read<C: GenericClient>(
    client: &C,
    user: Uuid,
    cursor: Cursor,
) -> Result<Cursor, DbError> {
    let row = client
        .query_opt(
            "INSERT INTO public.notification_reads AS r (user_id, tx, id)
             VALUES ($1, $2::text::xid8, $3)
             ON CONFLICT (user_id) DO UPDATE
               SET tx = EXCLUDED.tx, id = EXCLUDED.id, updated_at = now()
               WHERE (r.tx, r.id) < (EXCLUDED.tx, EXCLUDED.id)
             RETURNING tx::text, id",
            &[&user, &cursor.tx.to_string(), &cursor.id],
        )
        .await?;
    match row {
        Some(row) => Ok(Cursor {
            tx: row.get::<_, String>(0).parse().unwrap_or(cursor.tx),
            id: row.get(1),
        }),
        // The stored cursor is already further: it stays.
        None => read_cursor(client, user).await,
    }
}

/// How far `user` has read.
pub async fn read_cursor<C: GenericClient>(client: &C, user: Uuid) -> Result<Cursor, DbError> {
    let row = client
        .query_opt(
            "SELECT tx::text, id FROM public.notification_reads WHERE user_id = $1",
            &[&user],
        )
        .await?;
    Ok(row
        .map(|r| Cursor {
            tx: r.get::<_, String>(0).parse().unwrap_or(0),
            id: r.get(1),
        })
        .unwrap_or(Cursor::START))
}

/// Unread counts stop here (a badge shows "10000+"; counting further costs a scan).
pub const UNREAD_CAP: i64 = 10_000;

/// Final rows `user` may see after their read cursor, at most [`UNREAD_CAP`].
pub async fn unread<C: GenericClient>(client: &C, user: Uuid) -> Result<(i64, Cursor), DbError> {
    let read = read_cursor(client, user).await?;
    let sql = format!(
        "SELECT count(*) FROM (
           SELECT 1 FROM public.user_notifications n
           WHERE (n.tx, n.id) > ($1::text::xid8, $2)
             AND n.tx < pg_snapshot_xmin(pg_current_snapshot())
             AND {VISIBLE}
           LIMIT $4) unread"
    )
    .replace("$U", "$3");
    let row = client
        .query_one(&sql, &[&read.tx.to_string(), &read.id, &user, &UNREAD_CAP])
        .await?;
    Ok((row.get(0), read))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_order_by_transaction_then_id_and_round_trip() {
        let a = Cursor { tx: 7, id: 900 };
        let b = Cursor { tx: 8, id: 3 };
        assert!(a < b, "a later transaction sorts after, whatever its ids");
        assert_eq!("7-900".parse::<Cursor>().unwrap(), a);
        assert_eq!(a.to_string(), "7-900");
        assert!(Cursor::below(8) > a && Cursor::below(8) < b);
        for bad in ["", "7", "a-1", "7-", "-1", "7--1", "1.5-2"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }
}
