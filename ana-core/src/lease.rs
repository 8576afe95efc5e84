//! Waiting on another holder, and renewing the lease of one's own attempt.

use std::future::Future;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::repository::{Lease, RecordId, Renewal, RepositoryError};
use crate::wake::Watch;

/// The first pause of a waiting call whose store pushes wake-ups: polls are only a safety net.
const FIRST_POLL_PUSHED: Duration = Duration::from_millis(250);
/// The first pause of a waiting call whose store cannot push.
const FIRST_POLL: Duration = Duration::from_millis(10);
/// The longest pause between two polls: a lost wake-up delays a waiting call this long at most.
pub(crate) const MAX_POLL: Duration = Duration::from_secs(1);

/// A call waiting for another holder's record: its watch, its deadline and its next pause.
pub(crate) struct Waiting {
    watch: Watch,
    deadline: Instant,
    poll: Duration,
}

impl Waiting {
    /// Waiting up to `wait` from now, woken by `watch`.
    pub(crate) fn new(watch: Watch, wait: Duration) -> Self {
        let poll = if watch.is_pushed() {
            FIRST_POLL_PUSHED
        } else {
            FIRST_POLL
        };
        let now = Instant::now();
        Self {
            watch,
            deadline: now.checked_add(wait).unwrap_or(now + MAX_POLL * 3600),
            poll,
        }
    }

    /// Pauses until the record may have changed: a wake-up, the next poll (with a backoff) or
    /// the holder's timeout (`held_for` from now), whichever comes first. `false` when the
    /// wait is over and the call should answer the record as it stands.
    pub(crate) async fn pause(&mut self, held_for: Option<Duration>) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        let mut until = now.checked_add(self.poll).unwrap_or(self.deadline);
        if let Some(until_timeout) = held_for.and_then(|held| now.checked_add(held)) {
            until = until.min(until_timeout);
        }
        until = until.min(self.deadline);
        self.poll = (self.poll * 2).min(MAX_POLL);
        tokio::select! {
            () = self.watch.changed() => {}
            () = tokio::time::sleep_until(until) => {}
        }
        true
    }
}

/// The renewal task of an attempt, stopped when dropped (the attempt finished, failed or was
/// dropped).
#[derive(Debug)]
pub(crate) struct Renewing(AbortHandle);

impl Drop for Renewing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What renewing needs of a store.
pub(crate) trait Renew: Send + Sync + 'static {
    fn renew_lease<'a>(
        &'a self,
        id: RecordId<'a>,
        lease: Lease,
        lease_for: Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Renewal, RepositoryError>> + Send + 'a>>;
}

/// Starts renewing `lease` on `(target, key)` every third of `timeout`, each renewal holding the
/// record `timeout` longer, never past `max` after now. `None` without a Tokio runtime.
pub(crate) fn start(
    store: std::sync::Arc<dyn Renew>,
    target: &str,
    key: &str,
    lease: Lease,
    timeout: Duration,
    max: Duration,
) -> Option<Renewing> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (target, key) = (target.to_owned(), key.to_owned());
    let task = runtime.spawn(async move {
        let id = RecordId::new(&target, &key);
        renew_until(&*store, id, lease, timeout, max).await;
    });
    Some(Renewing(task.abort_handle()))
}

/// The renewal loop: stops at the ceiling, or once the lease is lost or cannot be renewed. A
/// store fault is tried again at the next tick (the record's timeout still holds until then).
async fn renew_until(
    store: &dyn Renew,
    id: RecordId<'_>,
    lease: Lease,
    timeout: Duration,
    max: Duration,
) {
    let start = Instant::now();
    let every = (timeout / 3).max(Duration::from_millis(1));
    // How long after `start` the record is held as far as this task knows.
    let mut held_until = timeout;
    loop {
        tokio::time::sleep(every).await;
        let elapsed = start.elapsed();
        let lease_for = timeout.min(max.saturating_sub(elapsed));
        if elapsed + lease_for <= held_until {
            // At the ceiling: renewing would not hold the record any longer.
            return;
        }
        match store.renew_lease(id, lease, lease_for).await {
            Ok(Renewal::Renewed { .. }) => held_until = elapsed + lease_for,
            Err(_) => {}
            Ok(_) => return,
        }
    }
}
