//! Where payments live: [`Store`], one database shared with ana's idempotency records.
//!
//! Every write runs in one transaction: the idempotency attempt's ([`Session`]) when the
//! request carried a key, so the payment and the record of its response commit together, or
//! a transaction of its own otherwise. A replacement or deletion is a conditional statement
//! (`… WHERE id = ? AND version = ?`): of two concurrent writers of one version, exactly one
//! changes the row; the other finds it changed and gets [`StoreError::Stale`].

mod sql;

use std::time::Duration;

use ana_core::{BoxError, RepositoryError};
use ana_mysql::MySqlSession;
use ana_pg::PgSession;
use ana_sqlite::SqliteSession;
use axum::extract::FromRequestParts;
use http::request::Parts;
use sqlx::{MySqlPool, PgPool, SqlitePool};

use crate::model::Payment;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No payment has that id.
    #[error("payment {0} does not exist")]
    NotFound(String),
    /// A payment already has that id.
    #[error("payment {0} already exists")]
    Exists(String),
    /// The payment is not at the version the writer read.
    #[error("payment {id} is not at version {sent}")]
    Stale {
        /// The payment.
        id: String,
        /// The version the writer read.
        sent: i64,
    },
    /// The payment is not at the version `If-Match` names.
    #[error("payment {0} does not match If-Match")]
    PreconditionFailed(String),
    /// The database could not be reached.
    #[error("the database is unavailable")]
    Unavailable(#[source] BoxError),
    /// The database answered with an error.
    #[error("the database failed")]
    Backend(#[source] BoxError),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(Box::new(error)),
            sqlx::Error::Database(ref db) if is_busy(db.code().as_deref()) => {
                Self::Unavailable(Box::new(error))
            }
            other => Self::Backend(Box::new(other)),
        }
    }
}

/// SQLite's busy and locked codes (extended codes included): the write lock not had within
/// the busy timeout.
fn is_busy(code: Option<&str>) -> bool {
    code.and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

impl From<RepositoryError> for StoreError {
    fn from(error: RepositoryError) -> Self {
        match error {
            RepositoryError::Unavailable(source) => Self::Unavailable(source),
            other => Self::Backend(Box::new(other)),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        Self::Backend(Box::new(error))
    }
}

/// The idempotency attempt a request runs as, on any of the three stores: its transaction is
/// where the handler writes. Extracted from what ana's layer put in the request.
#[derive(Clone, Debug)]
pub enum Session {
    /// An `ana-sqlite` attempt.
    Sqlite(SqliteSession),
    /// An `ana-pg` attempt.
    Postgres(PgSession),
    /// An `ana-mysql` attempt.
    MySql(MySqlSession),
}

impl Session {
    fn from_extensions(extensions: &http::Extensions) -> Option<Self> {
        fn session<Ctx: Clone + Send + Sync + 'static>(
            extensions: &http::Extensions,
        ) -> Option<Ctx> {
            extensions
                .get::<ana_http::Attempt<Ctx>>()
                .map(|attempt| attempt.session().clone())
        }
        session(extensions)
            .map(Self::Sqlite)
            .or_else(|| session(extensions).map(Self::Postgres))
            .or_else(|| session(extensions).map(Self::MySql))
    }
}

/// The request's [`Session`], when it carried an idempotency key.
#[derive(Clone, Debug)]
pub struct MaybeSession(pub Option<Session>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeSession {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(Session::from_extensions(&parts.extensions)))
    }
}

/// A replacement: the payment at its new version, the version the client read, and the
/// version `If-Match` names, if any.
#[derive(Debug)]
pub struct Replace<'a> {
    /// The payment as it will be stored (its `version` the new one).
    pub payment: &'a Payment,
    /// The version the client read.
    pub read: i64,
    /// The version `If-Match` names.
    pub if_match: Option<i64>,
}

/// The payments table on one of the three databases.
#[derive(Clone, Debug)]
pub enum Store {
    /// SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Postgres(PgPool),
    /// MySQL or MariaDB.
    MySql(MySqlPool),
}

/// Runs `step` (a transaction's `BEGIN` or `COMMIT`) to its end even if the request is
/// cancelled (its client hung up) with the statement in flight ([`ana_core::to_the_end`]).
/// sqlx counts a transaction open from the answer to `BEGIN` to the answer to `COMMIT`: a
/// `BEGIN` cancelled in flight would put the connection back in the pool inside a transaction
/// nobody ends (the next user's statements would run in it; Postgres warns "there is already a
/// transaction in progress"), and a `COMMIT` cancelled in flight would have sqlx send a
/// `ROLLBACK` after it ("there is no transaction in progress").
pub(crate) async fn to_the_end<T: Send + 'static>(
    step: impl Future<Output = Result<T, sqlx::Error>> + Send + 'static,
) -> Result<T, StoreError> {
    ana_core::to_the_end(step)
        .await
        .map_err(|error| StoreError::Backend(Box::new(error)))?
        .map_err(StoreError::from)
}

/// Runs `$op(connection, args…)` in the session's transaction when there is one (its commit
/// is ana's), or in a transaction of its own, committed when `$op` succeeds.
macro_rules! in_transaction {
    ($pool:expr, $session:expr, $begin:expr, $op:path, $($arg:expr),*) => {
        match $session {
            Some(session) => {
                let mut tx = session.transaction().await?;
                $op(&mut *tx, $($arg),*).await
            }
            None => {
                let mut tx = $begin($pool).await?;
                let out = $op(&mut *tx, $($arg),*).await;
                if out.is_ok() {
                    to_the_end(tx.commit()).await?;
                }
                out
            }
        }
    };
}

/// Dispatches one write to the store's dialect, in the right transaction.
macro_rules! write {
    ($self:expr, $session:expr, $op:ident, $($arg:expr),*) => {
        match ($self, $session) {
            (Store::Sqlite(pool), Some(Session::Sqlite(s))) => {
                in_transaction!(pool, Some(s), sql::sqlite::begin, sql::sqlite::$op, $($arg),*)
            }
            (Store::Sqlite(pool), None) => {
                in_transaction!(pool, None::<&SqliteSession>, sql::sqlite::begin, sql::sqlite::$op, $($arg),*)
            }
            (Store::Postgres(pool), Some(Session::Postgres(s))) => {
                in_transaction!(pool, Some(s), sql::postgres::begin, sql::postgres::$op, $($arg),*)
            }
            (Store::Postgres(pool), None) => {
                in_transaction!(pool, None::<&PgSession>, sql::postgres::begin, sql::postgres::$op, $($arg),*)
            }
            (Store::MySql(pool), Some(Session::MySql(s))) => {
                in_transaction!(pool, Some(s), sql::mysql::begin, sql::mysql::$op, $($arg),*)
            }
            (Store::MySql(pool), None) => {
                in_transaction!(pool, None::<&MySqlSession>, sql::mysql::begin, sql::mysql::$op, $($arg),*)
            }
            (_, Some(_)) => Err(StoreError::Backend(
                "the idempotency layer runs on another database than the payments".into(),
            )),
        }
    };
}

/// Dispatches one read to the store's dialect, on a pooled connection.
macro_rules! read {
    ($self:expr, $op:ident $(, $arg:expr)*) => {
        match $self {
            Store::Sqlite(pool) => sql::sqlite::$op(&mut *pool.acquire().await?, $($arg),*).await,
            Store::Postgres(pool) => sql::postgres::$op(&mut *pool.acquire().await?, $($arg),*).await,
            Store::MySql(pool) => sql::mysql::$op(&mut *pool.acquire().await?, $($arg),*).await,
        }
    };
}

impl Store {
    /// Creates the payments table if missing.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        read!(self, migrate)
    }

    /// Stores a new payment.
    ///
    /// # Errors
    ///
    /// [`StoreError::Exists`] when the id is taken; the database's.
    pub async fn create(
        &self,
        session: Option<&Session>,
        payment: &Payment,
    ) -> Result<(), StoreError> {
        write!(self, session, create, payment)
    }

    /// The payment with this id.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn get(&self, id: &str) -> Result<Option<Payment>, StoreError> {
        read!(self, get, id)
    }

    /// Replaces a payment if it is at the version read (and the one `If-Match` names).
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::PreconditionFailed`], [`StoreError::Stale`];
    /// the database's.
    pub async fn replace(
        &self,
        session: Option<&Session>,
        replace: &Replace<'_>,
    ) -> Result<(), StoreError> {
        write!(self, session, replace, replace)
    }

    /// Deletes a payment if it is at `version`.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Stale`]; the database's.
    pub async fn delete(
        &self,
        session: Option<&Session>,
        id: &str,
        version: i64,
    ) -> Result<(), StoreError> {
        write!(self, session, delete, id, version)
    }

    /// Up to `size` payments, oldest first, skipping the first `from`.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn list(&self, from: u64, size: u32) -> Result<Vec<Payment>, StoreError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        read!(self, list, from, i64::from(size))
    }

    /// How many payments there are.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn count(&self) -> Result<u64, StoreError> {
        read!(self, count)
    }

    /// Deletes every payment.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn clear(&self) -> Result<(), StoreError> {
        read!(self, clear)
    }

    /// Whether the database answers within `within`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] when it does not.
    pub async fn ping(&self, within: Duration) -> Result<(), StoreError> {
        let ping = async { read!(self, ping) };
        match tokio::time::timeout(within, ping).await {
            Ok(answer) => answer,
            Err(elapsed) => Err(StoreError::Unavailable(Box::new(elapsed))),
        }
    }
}
