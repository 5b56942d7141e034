//! The platform's one failure model. Every error a consumer meets is either transient (an
//! outage: back off, keep the offset, try the same input again) or permanent (this input can
//! never succeed: dead-letter it and move on). Libraries say which by implementing [`Classify`];
//! consumers retry only transient failures, through [`Backoff`], whose waits are capped and
//! observable (a counter, a gauge and a warning that names the cause). Nothing here knows Kafka.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Transient failures retried, by operation.
pub const TRANSIENT_RETRIES: &str = "substrate_transient_retries_total";
/// The wait before the next try of an operation that is backing off (0 once it succeeded).
pub const BACKOFF_SECONDS: &str = "substrate_backoff_seconds";

/// Whether trying the same input again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// An outage or overload (network, broker, database, registry unavailable): retry later.
    Transient,
    /// The input itself cannot be processed (bad data, refused by a constraint): dead-letter it.
    Permanent,
}

/// Errors that know their class.
pub trait Classify {
    fn class(&self) -> Class;

    fn is_transient(&self) -> bool {
        self.class() == Class::Transient
    }
}

/// A classified failure with its whole cause chain as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    class: Class,
    message: String,
}

impl Failure {
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            class: Class::Transient,
            message: message.into(),
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            class: Class::Permanent,
            message: message.into(),
        }
    }

    /// `error`'s class, and its message with every cause.
    pub fn of<E: Classify + std::error::Error + 'static>(error: &E) -> Self {
        Self {
            class: error.class(),
            message: chain(error),
        }
    }

    /// Prefixes the message with what was being done (`"producing to t: <cause>"`).
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl Classify for Failure {
    fn class(&self) -> Class {
        self.class
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            Class::Transient => "transient",
            Class::Permanent => "permanent",
        };
        write!(f, "{} ({class})", self.message)
    }
}

impl std::error::Error for Failure {}

/// `error` and its sources joined by `": "`, skipping a source whose text the outer message
/// already contains (many errors print their source themselves).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let part = inner.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = inner.source();
    }
    text
}

/// Capped exponential backoff for one operation, reported as it happens.
#[derive(Debug)]
pub struct Backoff {
    operation: &'static str,
    first: Duration,
    cap: Duration,
    next: Duration,
    retries: u32,
}

impl Backoff {
    /// 100 ms, doubling, at most 5 s.
    pub fn new(operation: &'static str) -> Self {
        Self::with_limits(
            operation,
            Duration::from_millis(100),
            Duration::from_secs(5),
        )
    }

    pub fn with_limits(operation: &'static str, first: Duration, cap: Duration) -> Self {
        Self {
            operation,
            first,
            cap,
            next: first,
            retries: 0,
        }
    }

    /// Transient failures retried since the last success.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Counts and logs a transient failure, then waits before the next try; false when shutdown
    /// came first. (The cause is logged at once, so the wait does not hold on to it.)
    pub fn wait(
        &mut self,
        shutdown: &CancellationToken,
        cause: &dyn fmt::Display,
    ) -> impl Future<Output = bool> + Send + 'static {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        self.retries += 1;
        metrics::counter!(TRANSIENT_RETRIES, "operation" => self.operation).increment(1);
        metrics::gauge!(BACKOFF_SECONDS, "operation" => self.operation).set(delay.as_secs_f64());
        tracing::warn!(
            operation = self.operation,
            retry = self.retries,
            delay_ms = delay.as_millis() as u64,
            cause = %cause,
            "transient failure; backing off"
        );
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown.cancelled() => false,
                _ = tokio::time::sleep(delay) => true,
            }
        }
    }

    /// The operation succeeded: the next failure starts from the first delay again.
    pub fn succeeded(&mut self) {
        if self.retries > 0 {
            metrics::gauge!(BACKOFF_SECONDS, "operation" => self.operation).set(0.0);
            tracing::info!(
                operation = self.operation,
                retries = self.retries,
                "recovered"
            );
        }
        self.retries = 0;
        self.next = self.first;
    }
}

/// Why [`retry_transient`] stopped without a result.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped<E> {
    /// The effect failed permanently: retrying cannot help.
    Permanent(E),
    /// Shutdown started while backing off.
    Cancelled,
}

/// Runs `effect` until it succeeds, backing off after transient failures; a permanent failure
/// is returned at once, never retried.
pub async fn retry_transient<T, E, F, Fut>(
    shutdown: &CancellationToken,
    operation: &'static str,
    mut effect: F,
) -> Result<T, Stopped<E>>
where
    E: Classify + fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(operation);
    loop {
        match effect().await {
            Ok(value) => {
                backoff.succeeded();
                return Ok(value);
            }
            Err(error) if error.is_transient() => {
                if !backoff.wait(shutdown, &error).await {
                    return Err(Stopped::Cancelled);
                }
            }
            Err(error) => return Err(Stopped::Permanent(error)),
        }
    }
}

/// Batches refused for a permanent reason and split to find the refused item.
pub const BATCH_SPLITS: &str = "substrate_batch_splits_total";

/// Writes items `0..len` as one batch through `write`. Transient failures back off and retry
/// the same range; a range refused for a permanent reason is split in halves until the refused
/// item is alone, which goes to `refused` (to dead-letter it) while the others are written.
/// `write` may be called with any sub-range, in order. `Err(Stopped::Cancelled)` when shutdown
/// (or `refused` returning false) interrupted it; what was written stays written.
pub async fn write_splitting<E, W, WF, R, RF>(
    len: usize,
    shutdown: &CancellationToken,
    operation: &'static str,
    mut write: W,
    mut refused: R,
) -> Result<(), Stopped<E>>
where
    E: Classify + fmt::Display,
    W: FnMut(std::ops::Range<usize>) -> WF,
    WF: Future<Output = Result<(), E>>,
    R: FnMut(usize, E) -> RF,
    RF: Future<Output = bool>,
{
    let mut backoff = Backoff::new(operation);
    // Ranges still to write, the next one last: a refused range is replaced by its halves.
    let mut todo: Vec<std::ops::Range<usize>> = Vec::with_capacity(8);
    todo.push(0..len);
    while let Some(range) = todo.pop() {
        if range.is_empty() {
            continue;
        }
        match write(range.clone()).await {
            Ok(()) => backoff.succeeded(),
            Err(e) if e.is_transient() => {
                if !backoff.wait(shutdown, &e).await {
                    return Err(Stopped::Cancelled);
                }
                todo.push(range);
            }
            Err(e) if range.len() == 1 => {
                if !refused(range.start, e).await {
                    return Err(Stopped::Cancelled);
                }
            }
            Err(e) => {
                metrics::counter!(BATCH_SPLITS, "operation" => operation).increment(1);
                tracing::warn!(operation, error = %e, items = range.len(), "a batch was refused; splitting it to find the refused item");
                let mid = range.start + range.len() / 2;
                todo.push(mid..range.end);
                todo.push(range.start..mid);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_and_permanent_ones_are_not() {
        let shutdown = CancellationToken::new();
        let calls = AtomicU32::new(0);
        let result = retry_transient(&shutdown, "test", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(Failure::transient("down")),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(result, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry_transient(&shutdown, "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Failure::permanent("bad row"))
        })
        .await;
        assert_eq!(
            result,
            Err(Stopped::Permanent(Failure::permanent("bad row")))
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "never retried");
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_capped_and_stops_at_shutdown() {
        let shutdown = CancellationToken::new();
        let mut backoff = Backoff::with_limits(
            "test",
            Duration::from_millis(100),
            Duration::from_millis(400),
        );
        let started = tokio::time::Instant::now();
        for _ in 0..5 {
            assert!(backoff.wait(&shutdown, &"cause").await);
        }
        // 100 + 200 + 400 + 400 + 400
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert_eq!(backoff.retries(), 5);
        backoff.succeeded();
        assert_eq!(backoff.retries(), 0);
        shutdown.cancel();
        assert!(!backoff.wait(&shutdown, &"cause").await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_batch_is_split_around_the_bad_items() {
        let shutdown = CancellationToken::new();
        let written = std::sync::Mutex::new(Vec::new());
        let refused = std::sync::Mutex::new(Vec::new());
        let transient_once = AtomicU32::new(0);
        let result = write_splitting(
            10,
            &shutdown,
            "test",
            |range| {
                let bad = range.clone().any(|i| i == 3 || i == 7);
                let blip = transient_once.fetch_add(1, Ordering::SeqCst) == 0;
                let written = &written;
                async move {
                    if blip {
                        return Err(Failure::transient("blip"));
                    }
                    if bad {
                        return Err(Failure::permanent("bad item"));
                    }
                    written.lock().unwrap().extend(range);
                    Ok(())
                }
            },
            |index, _e| {
                refused.lock().unwrap().push(index);
                async { true }
            },
        )
        .await;
        assert_eq!(result, Ok(()));
        assert_eq!(*refused.lock().unwrap(), vec![3, 7]);
        assert_eq!(
            *written.lock().unwrap(),
            vec![0, 1, 2, 4, 5, 6, 8, 9],
            "every other item written once, in order"
        );
    }

    #[test]
    fn failures_print_their_class_and_causes() {
        let io = std::io::Error::other("connection reset");
        assert_eq!(chain(&io), "connection reset");
        let failure = Failure::transient("reset").context("inserting");
        assert_eq!(failure.to_string(), "inserting: reset (transient)");
        assert!(failure.is_transient());
        assert!(!Failure::permanent("x").is_transient());
    }
}
