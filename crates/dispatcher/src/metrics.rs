//! The dispatcher's metrics.

pub const DELIVERIES: &str = "dispatcher_attempts_total";
pub const DELIVERY_SECONDS: &str = "dispatcher_attempt_seconds";
pub const DEAD_LETTERED: &str = "dispatcher_dead_lettered_total";
/// Requests for a saturated endpoint sent to the first delay topic (not an attempt), by sink.
pub const DEFERRED: &str = "dispatcher_deferred_total";
/// Secrets of HTTP actions looked up, by result: `cache`, `database`, `missing`, `unopenable`,
/// `inline` (a record written before secrets were sealed).
pub const SECRET_LOOKUPS: &str = "dispatcher_secret_lookups_total";

pub fn describe() {
    metrics::describe_counter!(DELIVERIES, "Delivery attempts by sink and outcome");
    metrics::describe_histogram!(DELIVERY_SECONDS, "Duration of one delivery attempt");
    metrics::describe_counter!(DEAD_LETTERED, "Requests sent to the dead-letter topic");
    metrics::describe_counter!(
        SECRET_LOOKUPS,
        "Secrets of HTTP actions looked up, by result"
    );
    metrics::describe_counter!(
        DEFERRED,
        "Requests for a saturated endpoint deferred to the first delay topic"
    );
}
