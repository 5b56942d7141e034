//! The dispatcher's metrics.

pub const DELIVERIES: &str = "dispatcher_attempts_total";
pub const DELIVERY_SECONDS: &str = "dispatcher_attempt_seconds";
/// Requests for a saturated endpoint sent to the first delay topic (not an attempt), by sink.
pub const DEFERRED: &str = "dispatcher_deferred_total";
/// Histogram: attempts per `dispatch_attempts` write.
pub const AUDIT_BATCH_ROWS: &str = "dispatcher_audit_batch_rows";
/// Histogram: records per archive object, and the objects' sizes.
pub const ARCHIVE_BATCH_ROWS: &str = "dispatcher_archive_batch_rows";
pub const ARCHIVE_OBJECT_BYTES: &str = "dispatcher_archive_object_bytes";
/// Secrets of HTTP actions looked up, by outcome: `cache`, `database`, `missing`, `unopenable`,
/// `inline` (a record written before secrets were sealed).
pub const SECRET_LOOKUPS: &str = "dispatcher_secret_lookups_total";

pub fn describe() {
    metrics::describe_histogram!(AUDIT_BATCH_ROWS, "Attempts per dispatch_attempts write");
    metrics::describe_histogram!(ARCHIVE_BATCH_ROWS, "Records per archive object");
    metrics::describe_histogram!(
        ARCHIVE_OBJECT_BYTES,
        metrics::Unit::Bytes,
        "Sizes of the archive objects written"
    );
    metrics::describe_counter!(DELIVERIES, "Delivery attempts by sink and outcome");
    metrics::describe_histogram!(
        DELIVERY_SECONDS,
        metrics::Unit::Seconds,
        "Duration of one delivery attempt"
    );
    metrics::describe_counter!(
        SECRET_LOOKUPS,
        "Secrets of HTTP actions looked up, by outcome"
    );
    metrics::describe_counter!(
        DEFERRED,
        "Requests for a saturated endpoint deferred to the first delay topic"
    );
}
