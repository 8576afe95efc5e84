//! [`MySqlSession`]: the transaction an operation runs in.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use ana_core::{RepositoryError, to_the_end};
use sqlx::pool::PoolConnection;
use sqlx::{MySql, MySqlConnection, Transaction};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::error::map_sqlx;

type Tx = Transaction<'static, MySql>;

/// Where a session's connection stands.
pub(crate) enum State {
    /// The claim's connection, no transaction opened yet: the operation has not asked for it.
    Idle(PoolConnection<MySql>),
    /// `BEGIN` sent at the operation's first [`MySqlSession::transaction`].
    Open(Tx),
    /// `BEGIN` failed; the connection is gone.
    BeginFailed,
    /// The operation opened no transaction and the statement finishing its record failed:
    /// nothing is held, and a finish tried again runs that statement on another connection.
    Detached,
}

/// The session of a [`MySqlRepository`](crate::MySqlRepository) attempt: the claim's pooled
/// connection, on which the operation's transaction opens, plus the attempt number.
///
/// Run the operation's SQL in it with [`transaction`](Self::transaction): those writes commit
/// together with the record turning Finished, or not at all (error, panic, another attempt
/// took over, expiration passed). The transaction opens (`BEGIN`) at the first
/// `transaction()` call; an operation that never asks for it costs no `BEGIN` and no
/// `COMMIT`, and its record turns Finished in one statement. The repository commits or rolls
/// back when the manager finishes the attempt; after that the session is closed and
/// `transaction()` answers [`RepositoryError::SessionClosed`].
///
/// Clones are cheap and refer to the same transaction. When every clone is dropped before the
/// attempt finished, the transaction rolls back and the connection returns to the pool.
#[derive(Clone)]
pub struct MySqlSession {
    state: Arc<Mutex<Option<State>>>,
    attempt: u64,
}

impl MySqlSession {
    pub(crate) fn new(connection: PoolConnection<MySql>, attempt: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(Some(State::Idle(connection)))),
            attempt,
        }
    }

    /// The number of this attempt (1 for the first, +1 for each attempt that took the
    /// record over). Pass it to systems that can reject a stale writer.
    pub fn attempt(&self) -> u64 {
        self.attempt
    }

    /// Locks the session's transaction for the caller's queries, opening it (`BEGIN`) on the
    /// first call.
    ///
    /// The returned guard dereferences to [`MySqlConnection`], so `&mut *tx` is an
    /// [`Executor`](sqlx::Executor). Drop it before the operation returns: finishing the
    /// attempt waits for it. Nested `begin()` on it opens a savepoint.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::SessionClosed`] once the attempt was finished (committed or rolled
    /// back) or after `BEGIN` failed or was cancelled; the store's error when `BEGIN` fails.
    /// In both cases the attempt is marked Failed at its finish
    /// ([`FailureKind::BeginFailed`](ana_core::FailureKind::BeginFailed)).
    pub async fn transaction(&self) -> Result<MySqlTransaction, RepositoryError> {
        let mut guard = Arc::clone(&self.state).lock_owned().await;
        if matches!(*guard, Some(State::Idle(_))) {
            // Until `BEGIN` answers, the session counts as failed: if this call is cancelled
            // meanwhile, the finish marks the attempt Failed (`FailureKind::BeginFailed`).
            let Some(State::Idle(connection)) = guard.replace(State::BeginFailed) else {
                return Err(RepositoryError::SessionClosed);
            };
            *guard = Some(State::Open(begin(connection).await?));
        }
        OwnedMutexGuard::try_map(guard, |state| match state {
            Some(State::Open(tx)) => Some(tx),
            _ => None,
        })
        .map(|guard| MySqlTransaction { guard })
        .map_err(|_| RepositoryError::SessionClosed)
    }

    /// Whether the session can no longer be used: the attempt was finished (the transaction
    /// committed or rolled back), or `BEGIN` failed or was cancelled.
    pub async fn is_closed(&self) -> bool {
        !matches!(
            *self.state.lock().await,
            Some(State::Idle(_) | State::Open(_))
        )
    }

    /// Takes the connection out, closing the session.
    pub(crate) async fn take(&self) -> Option<State> {
        self.state.lock().await.take()
    }

    /// Marks the session [`State::Detached`], for a finish to be tried again.
    pub(crate) async fn detach(&self) {
        *self.state.lock().await = Some(State::Detached);
    }
}

/// `BEGIN` on `connection`, run to its end even if the caller stops waiting
/// ([`to_the_end`]): sqlx 0.9 counts a transaction only once `BEGIN` has answered, so a
/// `BEGIN` cancelled in flight would put the connection back in the pool inside a transaction
/// nobody rolls back (and the autocommitted writes of its next user would never commit).
async fn begin(connection: PoolConnection<MySql>) -> Result<Tx, RepositoryError> {
    to_the_end(Transaction::begin(connection, None))
        .await?
        .map_err(map_sqlx)
}

/// `COMMIT` of `tx`, run to its end even if the caller stops waiting ([`to_the_end`]): sqlx
/// counts the transaction open until `COMMIT` has answered, so a `COMMIT` cancelled in flight
/// (a client hanging up on a request whose finish is under way) would have sqlx send a
/// `ROLLBACK` after it, into a transaction that is over.
pub(crate) async fn commit(tx: Tx) -> Result<(), RepositoryError> {
    to_the_end(tx.commit()).await?.map_err(map_sqlx)
}

/// `ROLLBACK` of `tx`, run to its end even if the caller stops waiting (as [`commit`]): a
/// failed rollback closes the connection, which rolls back on the server too.
pub(crate) async fn rollback(tx: Tx) {
    let _ = to_the_end(tx.rollback()).await;
}

impl fmt::Debug for MySqlSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlSession")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Exclusive use of a [`MySqlSession`]'s transaction; dereferences to [`MySqlConnection`].
///
/// ```no_run
/// # async fn f(session: ana_mysql::MySqlSession) -> Result<(), ana_core::BoxError> {
/// let mut tx = session.transaction().await?;
/// ana_mysql::sqlx::query("INSERT INTO payments (id) VALUES (?)")
///     .bind(42_i64)
///     .execute(&mut *tx)
///     .await?;
/// # Ok(()) }
/// ```
pub struct MySqlTransaction {
    guard: OwnedMappedMutexGuard<Option<State>, Tx>,
}

impl Deref for MySqlTransaction {
    type Target = MySqlConnection;

    fn deref(&self) -> &MySqlConnection {
        &self.guard
    }
}

impl DerefMut for MySqlTransaction {
    fn deref_mut(&mut self) -> &mut MySqlConnection {
        &mut self.guard
    }
}

impl fmt::Debug for MySqlTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MySqlTransaction")
    }
}
