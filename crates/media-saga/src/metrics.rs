//! The saga's Prometheus metrics. The funnel (intents → signed or rejected → received →
//! confirmed, expired, failed) is `media_saga_transitions_total{from, to}`, `from="none"` for a
//! saga's creation.

use substrate_db::media::{Saga, SagaState};

pub const EMITTED: &str = "media_saga_records_emitted_total";
pub const FINISHED: &str = "media_saga_sagas_finished_total";
/// Counter: state changes of upload sagas, by `from` (`none` when created) and `to`.
pub const TRANSITIONS: &str = "media_saga_transitions_total";
/// Histogram: upload intent → terminal state, by `state`.
pub const UPLOAD_SECONDS: &str = "media_saga_upload_duration_seconds";
/// Histogram: sizes of the uploads moved to their permanent key.
pub const OBJECT_BYTES: &str = "media_saga_object_size_bytes";
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
    metrics::describe_counter!(
        TRANSITIONS,
        "State changes of upload sagas, by from (none when created) and to"
    );
    metrics::describe_histogram!(
        UPLOAD_SECONDS,
        metrics::Unit::Seconds,
        "Upload intent to terminal state, by state"
    );
    metrics::describe_histogram!(
        OBJECT_BYTES,
        metrics::Unit::Bytes,
        "Sizes of the uploads moved to their permanent key"
    );
    metrics::describe_histogram!(
        STEP_SECONDS,
        metrics::Unit::Seconds,
        "Time to handle one record, by input topic"
    );
    metrics::describe_counter!(MOVES, "Moves of uploads to their permanent key, by outcome");
    metrics::describe_counter!(DEADLINES_FIRED, "Deadlines handled, by kind and effect");
    metrics::describe_gauge!(
        DEADLINES_HELD,
        "Due deadlines waiting for the arrivals, moved-file reports and retries written before them to be read"
    );
}

/// Counts `saga` (as it was before, or `None` when just created as `to`) changing to `to`,
/// once the change is committed; a terminal `to` also counts the finished saga and its time
/// since the intent.
pub fn transition(before: Option<&Saga>, to: SagaState, created_at: chrono::DateTime<chrono::Utc>) {
    let from = before.map_or("none", |saga| saga.state.as_str());
    metrics::counter!(TRANSITIONS, "from" => from, "to" => to.as_str()).increment(1);
    if matches!(
        to,
        SagaState::Rejected | SagaState::Confirmed | SagaState::Expired | SagaState::Failed
    ) {
        metrics::counter!(FINISHED, "state" => to.as_str()).increment(1);
        let elapsed = (chrono::Utc::now() - created_at)
            .to_std()
            .unwrap_or_default();
        metrics::histogram!(UPLOAD_SECONDS, "state" => to.as_str()).record(elapsed.as_secs_f64());
    }
}
