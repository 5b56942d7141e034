//! The service lifecycle: one `CancellationToken` shared by every task of a service, a
//! `TaskTracker` that every background task is spawned through, and one drain bounded by the
//! configured grace period. The first signal (SIGTERM/SIGINT) cancels the token; a second one
//! exits the process at once. A background task that fails cancels the others and makes the
//! service exit non-zero. Nothing here knows what the tasks do.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit code after a second signal interrupted the drain (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

/// The `lifecycle` section of every service's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleConfig {
    /// How long in-flight work may take to finish after a shutdown signal before the service
    /// stops anyway (what was not finished is redelivered after a restart).
    #[serde(default = "default_grace_ms")]
    pub shutdown_grace_ms: u64,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            shutdown_grace_ms: default_grace_ms(),
        }
    }
}

fn default_grace_ms() -> u64 {
    10_000
}

impl LifecycleConfig {
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[derive(Clone)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
    failed: Arc<AtomicBool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new(LifecycleConfig::default().grace())
    }
}

impl Shutdown {
    pub fn new(grace: Duration) -> Self {
        Self {
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            grace,
            failed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A shutdown that also fires when `parent` is cancelled (tests use this to stop a service).
    pub fn child_of(parent: &CancellationToken) -> Self {
        Self {
            token: parent.child_token(),
            ..Self::default()
        }
    }

    /// The same lifecycle with another grace period.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// How long the drain may take.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    pub fn cancel(&self) {
        self.token.cancel()
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// True when a background task failed (the service then exits non-zero).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Runs a background task that must stop when the token is cancelled. Its failure is
    /// logged with its cause, cancels every other task and fails the service.
    pub fn spawn<F>(&self, name: &'static str, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let token = self.token.clone();
        let failed = self.failed.clone();
        self.tracker.spawn(async move {
            if let Err(e) = task.await {
                tracing::error!(
                    task = name,
                    error = format!("{e:#}"),
                    "background task failed; shutting down"
                );
                failed.store(true, Ordering::SeqCst);
                token.cancel();
            }
        })
    }

    /// Runs a piece of work that belongs to the service's drain (a detached step whose result
    /// the service still waits for at shutdown) and cannot fail the service.
    pub fn spawn_work<F>(&self, task: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Cancels the token on SIGTERM or SIGINT (Ctrl-C); a second signal exits the process at
    /// once with [`EXIT_INTERRUPTED`].
    pub fn cancel_on_signals(&self) {
        let token = self.token.clone();
        let grace = self.grace;
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "shutdown signal received; draining (a second signal exits at once)"
            );
            token.cancel();
            wait_for_signal().await;
            tracing::warn!("second shutdown signal; exiting without draining");
            std::process::exit(EXIT_INTERRUPTED);
        });
    }

    /// Waits for every tracked task to finish, at most the grace period. Returns false when
    /// some were still running.
    pub async fn drain(&self) -> bool {
        self.tracker.close();
        let drained = tokio::time::timeout(self.grace, self.tracker.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                tasks = self.tracker.len(),
                grace_ms = self.grace.as_millis() as u64,
                "tasks still running after the grace period; stopping anyway"
            );
        }
        drained
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_task_cancels_the_rest_and_fails_the_service() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        let token = shutdown.token();
        shutdown.spawn("waits", async move {
            token.cancelled().await;
            Ok(())
        });
        shutdown.spawn("fails", async { anyhow::bail!("broken") });
        shutdown.cancelled().await;
        assert!(shutdown.drain().await);
        assert!(shutdown.failed());
    }

    #[tokio::test(start_paused = true)]
    async fn the_drain_is_bounded_by_the_grace_period() {
        let shutdown = Shutdown::new(Duration::from_millis(300));
        shutdown.spawn_work(async { tokio::time::sleep(Duration::from_secs(60)).await });
        let started = tokio::time::Instant::now();
        assert!(!shutdown.drain().await);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert!(!shutdown.failed());
    }
}
