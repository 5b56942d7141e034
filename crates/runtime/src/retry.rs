//! Retrying an effect that must eventually happen (a first load, a write whose failure is an
//! outage, not a bad input) with capped exponential backoff, until it succeeds or shutdown.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `effect` until it succeeds, logging each failure as `"{what} failed; retrying"` and
/// backing off from `first_delay` (doubling, at most 5 s); `None` when shutdown came first.
pub async fn until_ok<T, E, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    first_delay: Duration,
    mut effect: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delay = first_delay;
    loop {
        match effect().await {
            Ok(value) => return Some(value),
            Err(error) => tracing::warn!(%error, "{what} failed; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
