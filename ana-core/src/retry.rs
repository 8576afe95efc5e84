//! [`FinishRetry`]: how an attempt's finish is tried again after a transient store error.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::repository::{Completion, RepositoryError};

/// How [`Attempt::complete`](crate::Attempt::complete) and
/// [`Attempt::fail`](crate::Attempt::fail) try again when the store answers a
/// [transient](RepositoryError::is_transient) error (a dropped connection, a restarting
/// server): up to `tries` tries in all, waiting `first_backoff` before the second and twice as
/// long before each next one (at most `max_backoff`), all within `budget` of the first try and
/// before the attempt's own timeout runs out (past it another call may take the record over).
///
/// A try again is safe: a finish is a compare-and-set on the attempt's [`Lease`](crate::Lease),
/// and every store answers [`Completion::Done`] to a complete it already applied (an earlier
/// try whose answer was lost). A store whose session cannot be finished again (a transaction
/// whose `COMMIT` was lost) answers so, and the call then ends in the first error.
///
/// The default: 6 tries, 50 ms doubling to at most 800 ms (1.55 s of waits in all: enough to
/// ride out a server restart or a failover), within 2 s.
///
/// ```
/// use std::time::Duration;
/// use ana_core::{FinishRetry, Manager, MemoryRepository, MemorySession};
///
/// let manager: Manager<&str, u8, MemorySession> = Manager::new(MemoryRepository::new())
///     .with_finish_retry(FinishRetry::default().tries(6).budget(Duration::from_secs(5)));
/// # let _ = manager;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinishRetry {
    tries: u32,
    first_backoff: Duration,
    max_backoff: Duration,
    budget: Duration,
}

impl Default for FinishRetry {
    fn default() -> Self {
        Self {
            tries: 6,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(800),
            budget: Duration::from_secs(2),
        }
    }
}

impl FinishRetry {
    /// No second try: a transient error ends the call at once.
    pub const NEVER: Self = Self {
        tries: 1,
        first_backoff: Duration::ZERO,
        max_backoff: Duration::ZERO,
        budget: Duration::ZERO,
    };

    /// How many tries in all, the first included (at least 1).
    #[must_use]
    pub fn tries(mut self, tries: u32) -> Self {
        self.tries = tries.max(1);
        self
    }

    /// The wait before the second try; it doubles before each next one.
    #[must_use]
    pub fn first_backoff(mut self, backoff: Duration) -> Self {
        self.first_backoff = backoff;
        self
    }

    /// The longest wait between two tries.
    #[must_use]
    pub fn max_backoff(mut self, backoff: Duration) -> Self {
        self.max_backoff = backoff;
        self
    }

    /// How long after the first try the last one may start.
    #[must_use]
    pub fn budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// Runs `step` (one finish) until it answers, or answers an error that is not transient,
    /// or the tries, the budget or `deadline` (the attempt's timeout) run out. Answers the
    /// result and how many times `step` was tried again.
    ///
    /// Once a transient error was seen, a later [`RepositoryError::SessionClosed`] (the store
    /// could not finish that session again, and found that no earlier try had finished it)
    /// ends in that first error: it is what went wrong.
    pub(crate) async fn run<F, Fut>(
        &self,
        deadline: Option<Instant>,
        mut step: F,
    ) -> (Result<Completion, RepositoryError>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Completion, RepositoryError>>,
    {
        let started = Instant::now();
        let stop = deadline.map_or(started + self.budget, |d| d.min(started + self.budget));
        let mut backoff = self.first_backoff;
        let mut first: Option<RepositoryError> = None;
        let mut retries = 0;
        loop {
            let error = match step().await {
                Ok(done) => return (Ok(done), retries),
                Err(RepositoryError::SessionClosed) if first.is_some() => break,
                Err(error) if !error.is_transient() => return (Err(error), retries),
                Err(error) => error,
            };
            first.get_or_insert(error);
            if retries + 1 >= self.tries || Instant::now() + backoff > stop {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.max_backoff);
            retries += 1;
        }
        let error = first.unwrap_or(RepositoryError::SessionClosed);
        (Err(error), retries)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

    use std::cell::Cell;

    use super::*;

    fn down() -> RepositoryError {
        RepositoryError::Unavailable("down".into())
    }

    /// Answers `errors` in turn, then `Done`; counts the tries.
    async fn run(
        retry: FinishRetry,
        deadline: Option<Instant>,
        errors: Vec<RepositoryError>,
    ) -> (Result<Completion, RepositoryError>, u32, u32) {
        let tries = Cell::new(0);
        let errors = std::cell::RefCell::new(errors.into_iter());
        let (done, retries) = retry
            .run(deadline, || {
                tries.set(tries.get() + 1);
                let next = errors.borrow_mut().next();
                async move { next.map_or(Ok(Completion::Done), Err) }
            })
            .await;
        (done, retries, tries.get())
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_tried_again() {
        let (done, retries, tries) = run(FinishRetry::default(), None, vec![down(), down()]).await;
        assert_eq!(done.unwrap(), Completion::Done);
        assert_eq!((retries, tries), (2, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_tries_are_bounded() {
        let errors = (0..10).map(|_| down()).collect();
        let started = Instant::now();
        let (done, retries, tries) = run(FinishRetry::default(), None, errors).await;
        assert!(matches!(done, Err(RepositoryError::Unavailable(_))));
        assert_eq!((retries, tries), (5, 6));
        // 50 + 100 + 200 + 400 + 800 ms of backoff.
        assert_eq!(started.elapsed(), Duration::from_millis(1550));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_the_tries() {
        let errors = (0..10).map(|_| down()).collect();
        let deadline = Instant::now() + Duration::from_millis(160);
        let (done, retries, _) = run(FinishRetry::default(), Some(deadline), errors).await;
        assert!(done.is_err());
        // 50 ms, then 100 ms: a third wait of 200 ms would end past the deadline.
        assert_eq!(retries, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_that_are_not_transient_end_at_once() {
        let corrupt = RepositoryError::Corrupt { detail: "x".into() };
        let (done, retries, tries) = run(FinishRetry::default(), None, vec![corrupt]).await;
        assert!(matches!(done, Err(RepositoryError::Corrupt { .. })));
        assert_eq!((retries, tries), (0, 1));
        let never = run(FinishRetry::NEVER, None, vec![down()]).await;
        assert_eq!((never.1, never.2), (0, 1));
    }

    /// A session the store cannot finish again ends in the error that made the first try fail.
    #[tokio::test(start_paused = true)]
    async fn a_closed_session_after_a_transient_error_answers_that_error() {
        let errors = vec![down(), RepositoryError::SessionClosed];
        let (done, retries, tries) = run(FinishRetry::default(), None, errors).await;
        assert!(matches!(done, Err(RepositoryError::Unavailable(_))));
        assert_eq!((retries, tries), (1, 2));
        let closed = run(
            FinishRetry::default(),
            None,
            vec![RepositoryError::SessionClosed],
        )
        .await;
        assert!(matches!(closed.0, Err(RepositoryError::SessionClosed)));
    }
}
