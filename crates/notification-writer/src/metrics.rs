//! Metric names of the notification-writer.

/// Counter: rows inserted into user_notifications (duplicates skipped are not counted).
pub const ROWS_INSERTED: &str = "notification_writer_rows_inserted_total";
/// Histogram: records per written batch.
pub const BATCH_ROWS: &str = "notification_writer_batch_rows";
/// Counter: failed batch writes that were retried.
pub const DB_RETRIES: &str = "notification_writer_db_retries_total";

pub fn describe() {
    metrics::describe_counter!(ROWS_INSERTED, "Rows inserted into user_notifications");
    metrics::describe_histogram!(BATCH_ROWS, "Records per written batch");
    metrics::describe_counter!(DB_RETRIES, "Failed batch writes that were retried");
}
