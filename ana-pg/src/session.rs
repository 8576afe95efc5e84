//! [`PgSession`]: the transaction an operation runs in.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use ana_core::{RepositoryError, to_the_end};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::error::map_sqlx;
use crate::handoff::{Held, Lent};

type Tx = Transaction<'static, Postgres>;

/// Where a session's connection stands.
pub(crate) enum State {
    /// The claim's connection, no transaction opened yet: the operation has not asked for it.
    Idle(Lent),
    /// `BEGIN` sent at the operation's first [`PgSession::transaction`]; the connection
    /// counts as held until the transaction is done.
    Open(Tx, Held),
    /// `BEGIN` failed; the connection is gone.
    BeginFailed,
    /// The operation opened no transaction and the statement finishing its record failed:
    /// nothing is held, and a finish tried again runs that statement on another connection.
    Detached,
}

/// The session of a [`PgRepository`](crate::PgRepository) attempt: the claim's pooled
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
pub struct PgSession {
    state: Arc<Mutex<Option<State>>>,
    attempt: u64,
}

impl PgSession {
    pub(crate) fn new(connection: Lent, attempt: u64) -> Self {
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
    /// The returned guard dereferences to [`PgConnection`], so `&mut *tx` is an
    /// [`Executor`](sqlx::Executor). Drop it before the operation returns: finishing the
    /// attempt waits for it. Nested `begin()` on it opens a savepoint.
    ///
    /// # Errors
    ///
    /// [`RepositoryError::SessionClosed`] once the attempt was finished (committed or rolled
    /// back) or after `BEGIN` failed or was cancelled; the store's error when `BEGIN` fails.
    /// In both cases the attempt is marked Failed at its finish
    /// ([`FailureKind::BeginFailed`](ana_core::FailureKind::BeginFailed)).
    pub async fn transaction(&self) -> Result<PgTransaction, RepositoryError> {
        let mut guard = Arc::clone(&self.state).lock_owned().await;
        if matches!(*guard, Some(State::Idle(_))) {
            // Until `BEGIN` answers, the session counts as failed: if this call is cancelled
            // meanwhile, the finish marks the attempt Failed (`FailureKind::BeginFailed`).
            let Some(State::Idle(lent)) = guard.replace(State::BeginFailed) else {
                return Err(RepositoryError::SessionClosed);
            };
            *guard = Some(State::Open(begin(lent.connection).await?, lent.held));
        }
        OwnedMutexGuard::try_map(guard, |state| match state {
            Some(State::Open(tx, _)) => Some(tx),
            _ => None,
        })
        .map(|guard| PgTransaction { guard })
        .map_err(|_| RepositoryError::SessionClosed)
    }

    /// Whether the session can no longer be used: the attempt was finished (the transaction
    /// committed or rolled back), or `BEGIN` failed or was cancelled.
    pub async fn is_closed(&self) -> bool {
        !matches!(
            *self.state.lock().await,
            Some(State::Idle(_) | State::Open(..))
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
/// nobody rolls back.
pub(crate) async fn begin(connection: PoolConnection<Postgres>) -> Result<Tx, RepositoryError> {
    to_the_end(Transaction::begin(connection, None))
        .await?
        .map_err(map_sqlx)
}

/// `COMMIT` of `tx`, run to its end even if the caller stops waiting ([`to_the_end`]): sqlx
/// counts the transaction open until `COMMIT` has answered, so a `COMMIT` cancelled in flight
/// (a client hanging up on a request whose finish is under way) would have sqlx send a
/// `ROLLBACK` after it, which the server, the commit done, answers with a warning.
pub(crate) async fn commit(tx: Tx) -> Result<(), RepositoryError> {
    to_the_end(tx.commit()).await?.map_err(map_sqlx)
}

/// `ROLLBACK` of `tx`, run to its end even if the caller stops waiting (as [`commit`]): a
/// failed rollback closes the connection, which rolls back on the server too.
pub(crate) async fn rollback(tx: Tx) {
    let _ = to_the_end(tx.rollback()).await;
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
    guard: OwnedMappedMutexGuard<Option<State>, Tx>,
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
