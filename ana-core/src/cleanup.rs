//! The background clean-up task every SQL store runs: [`spawn_cleanup`] over its
//! [`CleanupSteps`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::repository::RepositoryError;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// What the background clean-up does; see [`spawn_cleanup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanupConfig {
    /// Time between two rounds (default one minute). The first round runs at once.
    pub interval: Duration,
    /// Rows per statement (default 1,000): each round repeats a statement while it fills a
    /// batch, so one statement never locks many rows.
    pub batch_size: u32,
    /// Whether to mark Running records past their timeout Failed (default yes).
    pub fail_timed_out: bool,
    /// Whether to delete expired records (default yes).
    pub delete_expired: bool,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(60),
            batch_size: 1_000,
            fail_timed_out: true,
            delete_expired: true,
        }
    }
}

impl CleanupConfig {
    /// The default configuration with rounds every `interval`.
    pub fn every(interval: Duration) -> Self {
        Self {
            interval,
            ..Self::default()
        }
    }
}

/// Totals of a background clean-up, as of its last round.
#[derive(Clone, Debug, Default)]
pub struct CleanupReport {
    /// Rounds completed (with or without errors).
    pub rounds: u64,
    /// Running records marked Failed after their timeout.
    pub failed: u64,
    /// Expired records deleted.
    pub deleted: u64,
    /// Rounds that hit a store error.
    pub errors: u64,
    /// The last store error, if any round hit one.
    pub last_error: Option<Arc<RepositoryError>>,
}

/// The running background clean-up. Stop it with [`shutdown`](Self::shutdown); dropping the
/// handle stops it too. A statement in flight when it stops is abandoned: each statement is
/// atomic, so it took effect whole or not at all.
pub struct CleanupHandle {
    stop: watch::Sender<bool>,
    report: watch::Receiver<CleanupReport>,
    task: JoinHandle<()>,
}

impl fmt::Debug for CleanupHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CleanupHandle")
            .field("report", &*self.report.borrow())
            .field("finished", &self.task.is_finished())
            .finish()
    }
}

impl CleanupHandle {
    /// The totals as of the last round.
    pub fn report(&self) -> CleanupReport {
        self.report.borrow().clone()
    }

    /// A receiver of the totals, updated after each round (to wait for a round:
    /// `receiver.wait_for(|r| r.rounds >= n)`).
    pub fn subscribe(&self) -> watch::Receiver<CleanupReport> {
        self.report.clone()
    }

    /// Stops the task and returns the final totals.
    pub async fn shutdown(self) -> CleanupReport {
        let _ = self.stop.send(true);
        // The task ends at its next await point; a panic inside it (none is expected) is
        // reported as what was counted so far.
        let _ = self.task.await;
        self.report.borrow().clone()
    }
}

/// The two batched steps of a store's clean-up, each changing at most `limit` records and
/// answering how many it changed.
pub trait CleanupSteps: Clone + Send + Sync + 'static {
    /// Marks Failed Running records whose timeout has passed.
    fn fail_timed_out(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<u64, RepositoryError>> + Send;

    /// Deletes expired records no holder may still be at work on.
    fn delete_expired(
        &self,
        limit: u32,
    ) -> impl Future<Output = Result<u64, RepositoryError>> + Send;
}

/// Starts a Tokio task that runs `store`'s [`CleanupSteps`] every `config.interval`, in
/// batches of `config.batch_size`, until the handle is shut down or dropped. Store errors are
/// counted in the [`CleanupReport`] and the next round tries again.
///
/// Must be called inside a Tokio runtime.
pub fn spawn_cleanup<S: CleanupSteps>(store: S, config: CleanupConfig) -> CleanupHandle {
    let (stop, mut stopped) = watch::channel(false);
    let (publish, report) = watch::channel(CleanupReport::default());
    let task = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(config.interval.max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut totals = CleanupReport::default();
        loop {
            tokio::select! {
                biased;
                // A send of `true` or the handle dropped.
                _ = stopped.wait_for(|stop| *stop) => break,
                _ = ticks.tick() => {}
            }
            let round = tokio::select! {
                biased;
                _ = stopped.wait_for(|stop| *stop) => break,
                round = cleanup_round(&store, &config) => round,
            };
            totals.rounds += 1;
            totals.failed += round.failed;
            totals.deleted += round.deleted;
            if let Some(error) = round.error {
                totals.errors += 1;
                totals.last_error = Some(Arc::new(error));
            }
            publish.send_replace(totals.clone());
        }
    });
    CleanupHandle { stop, report, task }
}

async fn cleanup_round<S: CleanupSteps>(store: &S, config: &CleanupConfig) -> Round {
    let batch = config.batch_size.max(1);
    let mut round = Round::default();
    if config.fail_timed_out {
        match drain(batch, || store.fail_timed_out(batch)).await {
            Ok(count) => round.failed = count,
            Err(error) => round.error = Some(error),
        }
    }
    if config.delete_expired && round.error.is_none() {
        match drain(batch, || store.delete_expired(batch)).await {
            Ok(count) => round.deleted = count,
            Err(error) => round.error = Some(error),
        }
    }
    round
}

#[derive(Default)]
struct Round {
    failed: u64,
    deleted: u64,
    error: Option<RepositoryError>,
}

/// Repeats `step` while it fills a batch; returns the total.
async fn drain<F, Fut>(batch: u32, mut step: F) -> Result<u64, RepositoryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, RepositoryError>>,
{
    let mut total = 0;
    loop {
        let count = step().await?;
        total += count;
        if count < u64::from(batch) {
            return Ok(total);
        }
    }
}
