//! [`PgSession`]: the open transaction an operation runs in.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use ana_core::RepositoryError;
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

type Tx = Transaction<'static, Postgres>;

/// The session of a [`PgRepository`](crate::PgRepository) attempt: an open transaction on a
/// pooled connection, plus the attempt's fencing token.
///
/// Run the operation's SQL in it with [`transaction`](Self::transaction): those writes commit
/// together with the record turning Finished, or not at all (error, panic, another attempt
/// took over, expiration passed). The repository commits or rolls back when the manager
/// finishes the attempt; after that the session is closed and `transaction()` answers
/// [`RepositoryError::SessionClosed`].
///
/// Clones are cheap and refer to the same transaction. When every clone is dropped before the
/// attempt finished, the transaction rolls back and the connection returns to the pool.
#[derive(Clone)]
pub struct PgSession {
    tx: Arc<Mutex<Option<Tx>>>,
    attempt: u64,
}

impl PgSession {
    pub(crate) fn new(tx: Tx, attempt: u64) -> Self {
        Self {
            tx: Arc::new(Mutex::new(Some(tx))),
            attempt,
        }
    }

    /// The fencing token of this attempt (1 for the first, +1 for each attempt that took the
    /// record over). Pass it to systems that can reject a stale writer.
    pub fn attempt(&self) -> u64 {
        self.attempt
    }

    /// Locks the session's transaction for the caller's queries.
    ///
    /// The returned guard dereferences to [`PgConnection`], so `&mut *tx` is an
    /// [`Executor`](sqlx::Executor). Drop it before the operation returns: finishing the
    /// attempt waits for it. Nested `begin()` on it opens a savepoint.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::SessionClosed`] once the attempt was finished (committed or rolled
    /// back).
    pub async fn transaction(&self) -> Result<PgTransaction, RepositoryError> {
        let guard = Arc::clone(&self.tx).lock_owned().await;
        OwnedMutexGuard::try_map(guard, Option::as_mut)
            .map(|guard| PgTransaction { guard })
            .map_err(|_| RepositoryError::SessionClosed)
    }

    /// Whether the attempt was finished (the transaction committed or rolled back).
    pub async fn is_closed(&self) -> bool {
        self.tx.lock().await.is_none()
    }

    /// Takes the transaction out, closing the session.
    pub(crate) async fn take(&self) -> Option<Tx> {
        self.tx.lock().await.take()
    }
}

impl fmt::Debug for PgSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgSession")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Exclusive use of a [`PgSession`]'s transaction; dereferences to [`PgConnection`].
///
/// ```no_run
/// # async fn f(session: ana_pg::PgSession) -> Result<(), ana_core::BoxError> {
/// let mut tx = session.transaction().await?;
/// ana_pg::sqlx::query("INSERT INTO payments (id) VALUES ($1)")
///     .bind(42_i64)
///     .execute(&mut *tx)
///     .await?;
/// # Ok(()) }
/// ```
pub struct PgTransaction {
    guard: OwnedMappedMutexGuard<Option<Tx>, Tx>,
}

impl Deref for PgTransaction {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.guard
    }
}

impl DerefMut for PgTransaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.guard
    }
}

impl fmt::Debug for PgTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PgTransaction")
    }
}
