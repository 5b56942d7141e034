//! The saga's Prometheus metrics.

pub const EMITTED: &str = "media_saga_records_emitted_total";
pub const FINISHED: &str = "media_saga_sagas_finished_total";
pub const STEP_SECONDS: &str = "media_saga_step_seconds";
pub const MOVES: &str = "media_saga_moves_total";
pub const DEADLINES_FIRED: &str = "media_saga_deadlines_fired_total";
/// Gauge: due upload TTLs waiting until the arrivals written before them are read.
pub const DEADLINES_HELD: &str = "media_saga_deadlines_held";

pub fn describe() {
    metrics::describe_counter!(EMITTED, "Records produced, by topic");
    metrics::describe_counter!(
        FINISHED,
        "Upload sagas that reached a terminal state, by state"
    );
    metrics::describe_histogram!(STEP_SECONDS, "Time to handle one record, by input topic");
    metrics::describe_counter!(MOVES, "Moves of uploads to their permanent key, by outcome");
    metrics::describe_counter!(DEADLINES_FIRED, "Deadlines handled, by kind and effect");
    metrics::describe_gauge!(
        DEADLINES_HELD,
        "Due deadlines waiting for the arrivals, moved-file reports and retries written before them to be read"
    );
}
