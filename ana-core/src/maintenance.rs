//! What an operator does to a store: [`Maintenance`] (forget one record, count records, clean
//! up).

use std::future::Future;

use chrono::{DateTime, Utc};

use crate::record::Status;
use crate::repository::{IdempotencyRepository, RecordId, RepositoryError};

/// The operator's side of a store: forget one record, count the records by status, and clean
/// up. Inspecting one record is [`IdempotencyRepository::get`].
///
/// A capability of its own beside the contract: a store that does not implement it still runs
/// under a [`Manager`](crate::Manager) and still passes the conformance suite's
/// `conformance_tests!`; one that does also runs `maintenance_tests!` (feature `test-utils`).
///
/// Every method is atomic in the store for each record it touches:
/// [`forget`](Self::forget) decides and deletes in one step (one statement, one script, one
/// lock), so it never deletes a record that a new holder claimed between a check and the
/// delete.
///
/// A [`ReplayCache`](crate::ReplayCache) in a running process does not learn that a record was
/// forgotten: that process may replay it from the cache until the entry's time to live ends.
///
/// ```
/// use ana_core::{Forgotten, Maintenance, Manager, MemoryRepository, MemorySession, RecordId};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = MemoryRepository::new();
/// let manager: Manager<String, String, MemorySession> = Manager::new(store.clone());
/// let op = |body: &str| {
///     ana_core::operation("send-email", "msg-1", body.to_owned(), |_ctx: MemorySession| async {
///         Ok::<_, std::io::Error>("queued".to_owned())
///     })
/// };
/// manager.call(op("hello")).await?;
///
/// let stats = store.stats().await?;
/// assert_eq!((stats.finished, stats.total()), (1, 1));
///
/// // The key was sent with the wrong body: forget it, and the next call runs again.
/// let id = RecordId::new("send-email", "msg-1");
/// assert_eq!(store.forget(id, false).await?, Forgotten::Deleted);
/// assert_eq!(store.forget(id, false).await?, Forgotten::NotFound);
/// assert!(!manager.run(op("hello, world")).await?.is_replayed());
/// # Ok(()) }
/// ```
pub trait Maintenance: IdempotencyRepository {
    /// Deletes the record `id`, in one atomic step.
    ///
    /// A Running record whose holder may still be at work (no timeout, or a timeout ahead on
    /// the store's clock) is left alone and answered [`Forgotten::Held`], unless `force`:
    /// deleted, it lets the next call run beside the holder, whose own finish then finds no
    /// record. A Running record past its timeout is deleted without `force`, like any other.
    fn forget(
        &self,
        id: RecordId<'_>,
        force: bool,
    ) -> impl Future<Output = Result<Forgotten, RepositoryError>> + Send;

    /// Counts the records by status. Not a snapshot: on a busy store the counts are taken
    /// while records change.
    fn stats(&self) -> impl Future<Output = Result<Stats, RepositoryError>> + Send;

    /// Marks Failed ([`FailureKind::TimedOut`](crate::FailureKind::TimedOut)) up to `limit`
    /// Running records past their timeout, and deletes up to `limit` expired records that no
    /// holder may still be at work on (a store that deletes expired records by itself says so
    /// in [`Cleaned::expires_itself`]). Call it again while a count reaches `limit`.
    ///
    /// Not needed for correctness: a claim takes over a timed-out record by itself, and
    /// a store's own retention or clean-up deletes expired ones. It keeps the store small and
    /// its [`stats`](Self::stats) honest.
    fn cleanup(&self, limit: u32) -> impl Future<Output = Result<Cleaned, RepositoryError>> + Send;
}

/// What [`Maintenance::forget`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Forgotten {
    /// The record was deleted: the next call with its key runs as a first call.
    Deleted,
    /// Nothing was deleted: the record is Running and its holder may still be at work.
    Held {
        /// The holder's timeout, past which it may be forgotten without force (`None`: it has
        /// none, and holds the record until it finishes).
        timeout: Option<DateTime<Utc>>,
    },
    /// There is no such record.
    NotFound,
}

/// Records by status, as [`Maintenance::stats`] counts them.
///
/// Build one with [`Stats::default`] and [`Stats::count`] (its fields may grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Stored, never started.
    pub ready: u64,
    /// Held by an attempt, or left Running by one past its timeout.
    pub running: u64,
    /// Succeeded; replayed.
    pub finished: u64,
    /// Failed; the next call runs again.
    pub failed: u64,
    /// Of the Running records, those past their timeout: a crashed or slow holder, taken over
    /// by the next call.
    pub timed_out: u64,
    /// Of all records, those past their expiration and still stored: what a clean-up or the
    /// store's retention deletes (a Running one once its holder is no longer at work).
    pub expired: u64,
}

impl Stats {
    /// Counts `n` more records of `status`.
    pub fn count(&mut self, status: Status, n: u64) {
        let slot = match status {
            Status::Ready => &mut self.ready,
            Status::Running => &mut self.running,
            Status::Finished => &mut self.finished,
            Status::Failed => &mut self.failed,
        };
        *slot = slot.saturating_add(n);
    }

    /// How many records there are of `status`.
    pub fn of(&self, status: Status) -> u64 {
        match status {
            Status::Ready => self.ready,
            Status::Running => self.running,
            Status::Finished => self.finished,
            Status::Failed => self.failed,
        }
    }

    /// How many records there are.
    pub fn total(&self) -> u64 {
        [self.ready, self.running, self.finished, self.failed]
            .into_iter()
            .fold(0, u64::saturating_add)
    }
}

/// What [`Maintenance::cleanup`] did.
///
/// Build one with [`Cleaned::default`] and set its fields (they may grow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cleaned {
    /// Running records past their timeout, marked Failed
    /// ([`FailureKind::TimedOut`](crate::FailureKind::TimedOut)).
    pub failed: u64,
    /// Expired records deleted.
    pub deleted: u64,
    /// The store deletes expired records by itself (Redis, through each record's TTL): the
    /// clean-up deleted none, and `deleted` is 0.
    pub expires_itself: bool,
}
