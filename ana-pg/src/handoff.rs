//! Connections handed from a call that is done with one straight to a claim waiting for one.
//!
//! sqlx tests every connection put back in its pool with a round trip (a `Sync`, answered by
//! `ReadyForQuery`) in a task it spawns, and a task waiting in `Pool::acquire` gets the
//! connection only after that. Under load, that is a third exchange with the database for
//! every call, beside the claim and the finish, and a task. Not configurable, so the
//! repository hands its connections over itself (its own code, for that reason only):
//!
//! - A claim that finds the pool at its size limit, no connection idle, while calls of this
//!   repository hold connections, waits here rather than in the pool.
//! - A call done with its connection in a known state (its last statement answered, no
//!   transaction open) gives it to the claim waiting longest, without the test: the state
//!   the test would check is the one the statement's answer showed. Otherwise, or with no
//!   claim waiting, the connection goes back to the pool, and one waiting claim (every one,
//!   when the calls hold no connection any more) turns to the pool instead.
//! - A connection passes at most [`MAX_PASSES`] times in a row, then goes back to the pool:
//!   tasks waiting in the pool itself (other code on the same pool) get their turn.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::oneshot;

/// How many times in a row a connection goes from one call to the next before it goes back
/// to the pool.
pub(crate) const MAX_PASSES: u32 = 16;

/// The claims waiting for a connection a call of the repository holds.
#[derive(Default)]
pub(crate) struct Handoff {
    queue: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// Oldest first. `None` sent: take a connection from the pool.
    waiting: VecDeque<oneshot::Sender<Option<Lent>>>,
    /// Connections the repository's calls hold.
    held: usize,
}

/// A pooled connection one of the repository's calls holds.
pub(crate) struct Lent {
    // Dropped first: the connection is on its way back to the pool before a waiting claim is
    // sent there.
    pub(crate) connection: PoolConnection<Postgres>,
    pub(crate) held: Held,
}

/// The count of one connection the repository's calls hold. Dropped when the connection
/// goes back to the pool: a waiting claim then turns to the pool.
pub(crate) struct Held {
    handoff: Arc<Handoff>,
    passes: u32,
}

impl Handoff {
    /// A connection for a claim: from the pool, or handed over by a call done with it.
    ///
    /// # Errors
    ///
    /// The pool's: [`sqlx::Error::PoolTimedOut`] when neither a call nor the pool gave a
    /// connection within the pool's acquire timeout (each; the wait for a call first).
    pub(crate) async fn acquire(self: &Arc<Self>, pool: &PgPool) -> Result<Lent, sqlx::Error> {
        let waiting = {
            let mut queue = self.lock();
            (queue.held > 0 && at_capacity(pool)).then(|| {
                let (sender, receiver) = oneshot::channel();
                queue.waiting.push_back(sender);
                receiver
            })
        };
        if let Some(receiver) = waiting {
            match tokio::time::timeout(pool.options().get_acquire_timeout(), receiver).await {
                Ok(Ok(Some(lent))) => return Ok(lent),
                // Sent to the pool.
                Ok(Ok(None) | Err(_)) => {}
                Err(_) => return Err(sqlx::Error::PoolTimedOut),
            }
        }
        let connection = pool.acquire().await?;
        self.lock().held += 1;
        Ok(Lent {
            connection,
            held: Held {
                handoff: Arc::clone(self),
                passes: 0,
            },
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // No code that can panic runs under the lock.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let queue = self.lock();
        (queue.held, queue.waiting.len())
    }
}

impl Lent {
    /// Done with the connection, its last statement answered and no transaction open: to the
    /// claim waiting longest, else back to the pool.
    pub(crate) fn release(mut self, pool: &PgPool) {
        // A closing pool waits for its connections: none is passed on.
        if self.held.passes >= MAX_PASSES || pool.is_closed() {
            return;
        }
        self.held.passes += 1;
        let handoff = Arc::clone(&self.held.handoff);
        let mut queue = handoff.lock();
        while let Some(waiter) = queue.waiting.pop_front() {
            match waiter.send(Some(self)) {
                Ok(()) => return,
                // That claim stopped waiting.
                Err(Some(lent)) => self = lent,
                Err(None) => return,
            }
        }
        // The lock goes before `self` is dropped, which takes it again.
        drop(queue);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut queue = self.handoff.lock();
        queue.held = queue.held.saturating_sub(1);
        // With no connection held, no call can hand one over: every waiting claim turns to
        // the pool. Otherwise the one waiting longest takes the connection just put back.
        let mut wake = if queue.held == 0 {
            queue.waiting.len()
        } else {
            1
        };
        while wake > 0 {
            let Some(waiter) = queue.waiting.pop_front() else {
                break;
            };
            if waiter.send(None).is_ok() {
                wake -= 1;
            }
        }
    }
}

/// Whether the pool can give no connection at once: all open, none idle.
fn at_capacity(pool: &PgPool) -> bool {
    pool.size() >= pool.options().get_max_connections() && pool.num_idle() == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use sqlx::postgres::PgPoolOptions;
    use std::time::Duration;

    /// A pool of `size` connections, and a hand-over queue with no connection held.
    async fn pool(size: u32) -> (PgPool, Arc<Handoff>) {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let pool = PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .unwrap_or_else(|error| {
                panic!("no PostgreSQL at {url} (set DATABASE_URL, or `make services`): {error}")
            });
        (pool, Arc::default())
    }

    /// The backend process id of a connection: which connection it is.
    async fn backend(lent: &mut Lent) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *lent.connection)
            .await
            .unwrap()
    }

    /// The connection `claim` gets, after `passes` hand-overs (0: from the pool), checked
    /// usable.
    async fn got(claim: impl Future<Output = Result<Lent, sqlx::Error>>, passes: u32) -> Lent {
        let mut lent = claim.await.unwrap();
        assert_eq!(lent.held.passes, passes);
        backend(&mut lent).await;
        lent
    }

    /// Polls `future` until it registered as waiting (it waits at its first poll).
    async fn started<F: Future + Unpin>(future: &mut F, handoff: &Handoff, waiting: usize) {
        tokio::select! {
            biased;
            _ = future => panic!("the claim did not wait"),
            () = std::future::ready(()) => {}
        }
        assert_eq!(handoff.counts().1, waiting);
    }

    #[tokio::test]
    async fn a_released_connection_goes_to_the_claim_waiting_longest() {
        let (pool, handoff) = pool(1).await;
        let mut first = handoff.acquire(&pool).await.unwrap();
        let pid = backend(&mut first).await;
        let mut second = Box::pin(handoff.acquire(&pool));
        started(&mut second, &handoff, 1).await;
        let mut third = Box::pin(handoff.acquire(&pool));
        started(&mut third, &handoff, 2).await;

        first.release(&pool);
        let mut second = second.await.unwrap();
        assert_eq!(
            backend(&mut second).await,
            pid,
            "the same connection, handed over"
        );
        assert_eq!(second.held.passes, 1);
        assert_eq!(handoff.counts(), (1, 1));

        // Dropped, not released (an error, a transaction): back to the pool, and the
        // claim waiting turns there.
        drop(second);
        drop(got(third, 0).await);
        assert_eq!(handoff.counts(), (0, 0));
    }

    #[tokio::test]
    async fn a_connection_goes_back_to_the_pool_after_its_passes() {
        let (pool, handoff) = pool(1).await;
        let mut lent = handoff.acquire(&pool).await.unwrap();
        for pass in 1..=MAX_PASSES {
            let mut next = Box::pin(handoff.acquire(&pool));
            started(&mut next, &handoff, 1).await;
            lent.release(&pool);
            lent = next.await.unwrap();
            assert_eq!(lent.held.passes, pass);
        }
        // At its limit: released to the pool, where a task waiting on the pool gets it.
        let mut next = Box::pin(handoff.acquire(&pool));
        started(&mut next, &handoff, 1).await;
        let outside = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire().await.map(drop) }
        });
        lent.release(&pool);
        drop(got(next, 0).await);
        outside.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_claim_that_stopped_waiting_is_skipped() {
        let (pool, handoff) = pool(1).await;
        let first = handoff.acquire(&pool).await.unwrap();
        let mut gone = Box::pin(handoff.acquire(&pool));
        started(&mut gone, &handoff, 1).await;
        let mut waiting = Box::pin(handoff.acquire(&pool));
        started(&mut waiting, &handoff, 2).await;
        drop(gone);

        // Handed over, past the claim that left.
        first.release(&pool);
        drop(got(waiting, 1).await);
        assert_eq!(handoff.counts(), (0, 0));
    }

    #[tokio::test]
    async fn claims_take_from_the_pool_while_it_has_room() {
        let (pool, handoff) = pool(2).await;
        let mut first = handoff.acquire(&pool).await.unwrap();
        // One connection held, but the pool may open a second: no waiting here.
        let mut second = handoff.acquire(&pool).await.unwrap();
        assert_ne!(backend(&mut first).await, backend(&mut second).await);
        assert_eq!(handoff.counts(), (2, 0));
    }
}
