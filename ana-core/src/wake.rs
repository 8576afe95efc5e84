//! Wake-ups for calls waiting on a record another call holds: [`Wakeups`] and [`Watch`].
//!
//! A store that can tell when a record is finished hands out a [`Watch`] per waiting call
//! ([`IdempotencyRepository::watch`](crate::IdempotencyRepository::watch)). The memory store
//! wakes its watchers itself; a store on a server forwards the server's notifications (a
//! Postgres `NOTIFY`, a Redis message) to a [`Wakeups`] it keeps per repository. A waiting
//! call polls the store besides, with a backoff, so a lost notification only delays it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

use crate::record::{Fingerprint, FingerprintHasher};
use crate::repository::RecordId;

/// The 128-bit digest of a record's identity, length-framed: what notifications carry instead
/// of the target and the key (bounded in size, nothing of the key in clear).
pub fn record_digest(id: RecordId<'_>) -> Fingerprint {
    let mut hasher = FingerprintHasher::default();
    hasher.field(id.target.as_bytes());
    hasher.field(id.key.as_bytes());
    hasher.finish()
}

/// The watchers of one process (or one repository), by record: [`watch`](Self::watch) hands
/// out a [`Watch`], [`wake`](Self::wake) wakes every watch of a record.
///
/// Clones share the watchers. A record nobody watches costs nothing: waking it finds no entry.
///
/// ```
/// use ana_core::{RecordId, Wakeups};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let wakeups = Wakeups::new();
/// let id = RecordId::new("[POST]/payments", "key-1");
/// let mut watch = wakeups.watch(id);
/// wakeups.wake(id);
/// watch.changed().await; // returns at once: the record changed since the watch began
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Wakeups {
    inner: Arc<Mutex<HashMap<Fingerprint, Slot>>>,
}

/// The channel of one watched record, and how many watches use it.
struct Slot {
    sender: watch::Sender<()>,
    watchers: usize,
}

impl fmt::Debug for Wakeups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wakeups")
            .field("watched", &self.lock().len())
            .finish()
    }
}

impl Wakeups {
    /// No watchers yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Fingerprint, Slot>> {
        // Nothing that can panic runs under the lock.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A watch of `id`: its [`changed`](Watch::changed) returns once `id` is woken after this
    /// call.
    pub fn watch(&self, id: RecordId<'_>) -> Watch {
        self.watch_digest(record_digest(id))
    }

    /// A watch of the record a store names by `digest` (its own digest of the identity, the
    /// one its notifications carry), woken by [`wake_digest`](Self::wake_digest).
    pub fn watch_digest(&self, digest: Fingerprint) -> Watch {
        let mut slots = self.lock();
        let slot = slots.entry(digest).or_insert_with(|| Slot {
            sender: watch::Sender::new(()),
            watchers: 0,
        });
        slot.watchers += 1;
        let receiver = slot.sender.subscribe();
        Watch {
            receiver: Some(receiver),
            _registration: Some(Registration {
                wakeups: self.clone(),
                digest,
            }),
        }
    }

    /// Wakes every watch of `id`.
    pub fn wake(&self, id: RecordId<'_>) {
        self.wake_digest(&record_digest(id));
    }

    /// Wakes every watch of the record whose digest is `digest` (a notification carries the
    /// digest): watches from [`watch_digest`](Self::watch_digest) with it, or from
    /// [`watch`](Self::watch) when it is the [`record_digest`].
    pub fn wake_digest(&self, digest: &Fingerprint) {
        if let Some(slot) = self.lock().get(digest) {
            slot.sender.send_replace(());
        }
    }

    /// Wakes every watch: after a notification channel was down, when any record may have
    /// changed unseen.
    pub fn wake_all(&self) {
        for slot in self.lock().values() {
            slot.sender.send_replace(());
        }
    }

    /// How many records are watched.
    pub fn watched(&self) -> usize {
        self.lock().len()
    }

    fn release(&self, digest: &Fingerprint) {
        let mut slots = self.lock();
        if let Some(slot) = slots.get_mut(digest) {
            slot.watchers -= 1;
            if slot.watchers == 0 {
                slots.remove(digest);
            }
        }
    }
}

/// A store's listening task (the connection that hears the finishes of other processes and
/// wakes its [`Wakeups`]): started once, by the first waiting call, and stopped when this is
/// dropped, with the repository's last clone.
///
/// ```
/// use ana_core::ListeningTask;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let listening = ListeningTask::new();
/// let runtime = tokio::runtime::Handle::current();
/// listening.start(&runtime, || async { /* listen, forward, reconnect */ });
/// listening.start(&runtime, || async { unreachable!("started once") });
/// assert!(listening.is_started());
/// # }
/// ```
#[derive(Debug, Default)]
pub struct ListeningTask {
    /// Dropped with this, which ends the task.
    stop: OnceLock<oneshot::Sender<()>>,
}

impl ListeningTask {
    /// A task not started yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the task was started.
    pub fn is_started(&self) -> bool {
        self.stop.get().is_some()
    }

    /// Spawns the future `task` makes on `runtime`, unless the task was started already (of
    /// two racing first calls, one starts it). The future runs until it ends or this is
    /// dropped.
    pub fn start<F>(&self, runtime: &Handle, task: impl FnOnce() -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.is_started() {
            return;
        }
        let (stop, stopped) = oneshot::channel();
        if self.stop.set(stop).is_ok() {
            let task = task();
            runtime.spawn(async move {
                tokio::select! {
                    () = task => {}
                    _ = stopped => {}
                }
            });
        }
    }
}

/// A waiting call's subscription to the changes of one record: from a [`Wakeups`], or
/// [`polling`](Self::polling) for a store that cannot push.
#[derive(Debug)]
pub struct Watch {
    receiver: Option<watch::Receiver<()>>,
    /// Held for its `Drop`, which removes the watch from its `Wakeups`.
    _registration: Option<Registration>,
}

impl Watch {
    /// A watch that is never woken: the waiting call polls the store alone.
    pub fn polling() -> Self {
        Self {
            receiver: None,
            _registration: None,
        }
    }

    /// Whether the store pushes changes to this watch.
    pub fn is_pushed(&self) -> bool {
        self.receiver.is_some()
    }

    /// Returns once the record was woken since the watch began or since the last return;
    /// never, for a [`polling`](Self::polling) watch.
    pub async fn changed(&mut self) {
        match &mut self.receiver {
            Some(receiver) => {
                if receiver.changed().await.is_err() {
                    // The sender is gone with its slot: nothing will wake this watch.
                    self.receiver = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

/// Removes a watch from its [`Wakeups`] when it is dropped.
struct Registration {
    wakeups: Wakeups,
    digest: Fingerprint,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration").finish_non_exhaustive()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.wakeups.release(&self.digest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_reaches_watches_of_its_record_only() {
        let wakeups = Wakeups::new();
        let (a, b) = (RecordId::new("t", "a"), RecordId::new("t", "b"));
        let mut first = wakeups.watch(a);
        let mut second = wakeups.watch(a);
        let mut other = wakeups.watch(b);
        assert_eq!(wakeups.watched(), 2);
        wakeups.wake(a);
        first.changed().await;
        second.changed().await;
        let woken = tokio::time::timeout(std::time::Duration::ZERO, other.changed()).await;
        assert!(woken.is_err(), "a watch of another record was woken");
        drop((first, second, other));
        assert_eq!(wakeups.watched(), 0);
    }

    #[tokio::test]
    async fn wake_all_reaches_every_watch() {
        let wakeups = Wakeups::new();
        let mut watches: Vec<_> = ["a", "b", "c"]
            .into_iter()
            .map(|key| wakeups.watch(RecordId::new("t", key)))
            .collect();
        wakeups.wake_all();
        for watch in &mut watches {
            watch.changed().await;
        }
    }

    #[test]
    fn digests_frame_their_fields() {
        let split = |target, key| record_digest(RecordId::new(target, key));
        assert_ne!(split("ab", "c"), split("a", "bc"));
        assert_eq!(split("a", "b"), split("a", "b"));
    }
}
