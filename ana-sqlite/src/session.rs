//! [`SqliteSession`]: the transaction an operation runs in.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use ana_core::{RepositoryError, to_the_end};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::error::map_sqlx;

type Tx = Transaction<'static, Sqlite>;

/// Where a session stands.
pub(crate) enum State {
    /// No transaction opened yet: the operation has not asked for it.
    Idle,
    /// `BEGIN IMMEDIATE` done at the operation's first [`SqliteSession::transaction`].
    Open(Tx),
    /// `BEGIN IMMEDIATE` failed or was cancelled.
    BeginFailed,
    /// The operation opened no transaction and the statement finishing its record failed:
    /// a finish tried again runs that statement again.
    Detached,
}

/// The session of a [`SqliteRepository`](crate::SqliteRepository) attempt: the transaction the
/// operation's SQL runs in, plus the attempt number.
///
/// Run the operation's SQL in it with [`transaction`](Self::transaction): those writes commit
/// together with the record turning Finished, or not at all (error, panic, another attempt
/// took over, expiration passed). The transaction opens with `BEGIN IMMEDIATE` on a pooled
/// connection at the first `transaction()` call, taking SQLite's write lock at once: a
/// transaction that read first and wrote later could find another writer committed meanwhile
/// and fail (`SQLITE_BUSY_SNAPSHOT`) where waiting would have done. An operation that never
/// asks for it holds no connection and no lock, and its record turns Finished in one
/// statement. The repository commits or rolls back when the manager finishes the attempt;
/// after that the session is closed and `transaction()` answers
/// [`RepositoryError::SessionClosed`].
///
/// While the transaction is open it holds SQLite's single write lock: other calls' claims of
/// new keys and their finishes wait for it (see the crate docs). Keep it short, and never
/// wait inside it for another idempotent call to the same database.
///
/// Clones are cheap and refer to the same transaction. When every clone is dropped before the
/// attempt finished, the transaction rolls back and the connection returns to the pool.
#[derive(Clone)]
pub struct SqliteSession {
    state: Arc<Mutex<Option<State>>>,
    pool: SqlitePool,
    attempt: u64,
}

impl SqliteSession {
    pub(crate) fn new(pool: SqlitePool, attempt: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(Some(State::Idle))),
            pool,
            attempt,
        }
    }

    /// The number of this attempt (1 for the first, +1 for each attempt that took the
    /// record over). Pass it to systems that can reject a stale writer.
    pub fn attempt(&self) -> u64 {
        self.attempt
    }

    /// Locks the session's transaction for the caller's queries, opening it
    /// (`BEGIN IMMEDIATE`, which waits for the write lock up to the busy timeout) on the first
    /// call.
    ///
    /// The returned guard dereferences to [`SqliteConnection`], so `&mut *tx` is an
    /// [`Executor`](sqlx::Executor). Drop it before the operation returns: finishing the
    /// attempt waits for it. Nested `begin()` on it opens a savepoint.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::SessionClosed`] once the attempt was finished (committed or rolled
    /// back) or after `BEGIN` failed or was cancelled; the store's error when `BEGIN` fails
    /// ([`RepositoryError::Unavailable`] when the write lock stayed taken for the whole busy
    /// timeout). In both cases the attempt is marked Failed at its finish
    /// ([`FailureKind::BeginFailed`](ana_core::FailureKind::BeginFailed)).
    pub async fn transaction(&self) -> Result<SqliteTransaction, RepositoryError> {
        let mut guard = Arc::clone(&self.state).lock_owned().await;
        if matches!(*guard, Some(State::Idle)) {
            // Until `BEGIN` answers, the session counts as failed: if this call is cancelled
            // meanwhile, the finish marks the attempt Failed (`FailureKind::BeginFailed`).
            *guard = Some(State::BeginFailed);
            *guard = Some(State::Open(begin(self.pool.clone()).await?));
        }
        OwnedMutexGuard::try_map(guard, |state| match state {
            Some(State::Open(tx)) => Some(tx),
            _ => None,
        })
        .map(|guard| SqliteTransaction { guard })
        .map_err(|_| RepositoryError::SessionClosed)
    }

    /// Whether the session can no longer be used: the attempt was finished (the transaction
    /// committed or rolled back), or `BEGIN` failed or was cancelled.
    pub async fn is_closed(&self) -> bool {
        !matches!(*self.state.lock().await, Some(State::Idle | State::Open(_)))
    }

    /// Takes the transaction out, closing the session.
    pub(crate) async fn take(&self) -> Option<State> {
        self.state.lock().await.take()
    }

    /// Marks the session [`State::Detached`], for a finish to be tried again.
    pub(crate) async fn detach(&self) {
        *self.state.lock().await = Some(State::Detached);
    }
}

/// `BEGIN IMMEDIATE` on a pooled connection, run to its end even if the caller stops waiting
/// ([`to_the_end`]): a transaction nobody waits for any more is dropped by the task, which
/// rolls it back before the connection is pooled again.
///
/// sqlx's SQLite driver runs each statement on the connection's own thread, and that thread
/// runs a `BEGIN`, `COMMIT` or `ROLLBACK` it received to its end and settles a dropped one
/// itself (a `BEGIN` nobody acknowledged is rolled back; the rollback queued by a `COMMIT`
/// dropped in flight is skipped). So a step cancelled in flight leaves neither the connection,
/// the pool nor the record wrong on SQLite, and no test can tell this crate's steps from the
/// driver's; they run to their end here as on every store, not relying on that driver detail.
pub(crate) async fn begin(pool: SqlitePool) -> Result<Tx, RepositoryError> {
    to_the_end(async move { pool.begin_with("BEGIN IMMEDIATE").await })
        .await?
        .map_err(map_sqlx)
}

/// `COMMIT` of `tx`, run to its end even if the caller stops waiting (as [`begin`]).
pub(crate) async fn commit(tx: Tx) -> Result<(), RepositoryError> {
    to_the_end(tx.commit()).await?.map_err(map_sqlx)
}

/// `ROLLBACK` of `tx`, run to its end even if the caller stops waiting (as [`begin`]): a
/// failed rollback closes the connection, which rolls back too.
pub(crate) async fn rollback(tx: Tx) {
    let _ = to_the_end(tx.rollback()).await;
}

impl fmt::Debug for SqliteSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteSession")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Exclusive use of a [`SqliteSession`]'s transaction; dereferences to [`SqliteConnection`].
///
/// ```no_run
/// # async fn f(session: ana_sqlite::SqliteSession) -> Result<(), ana_core::BoxError> {
/// let mut tx = session.transaction().await?;
/// ana_sqlite::sqlx::query("INSERT INTO payments (id) VALUES (?1)")
///     .bind(42_i64)
///     .execute(&mut *tx)
///     .await?;
/// # Ok(()) }
/// ```
pub struct SqliteTransaction {
    guard: OwnedMappedMutexGuard<Option<State>, Tx>,
}

impl Deref for SqliteTransaction {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.guard
    }
}

impl DerefMut for SqliteTransaction {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.guard
    }
}

impl fmt::Debug for SqliteTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SqliteTransaction")
    }
}
