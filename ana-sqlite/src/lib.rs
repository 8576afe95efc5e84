//! # ana-sqlite
//!
//! The SQLite store of [`ana_core`], on [sqlx](https://docs.rs/sqlx) 0.9: embedded, durable,
//! nothing to run. An idempotent operation runs inside a transaction of the database that
//! holds its record, and **its own writes commit in the same transaction as its record
//! turning Finished**. Either both are there, or neither is: on an error, a panic, a takeover
//! by another attempt or an expiration found at the finish, the operation's writes are rolled
//! back and the failure is recorded.
//!
//! ```text
//!  claim: read the record; if it may run     session: BEGIN IMMEDIATE at the operation's
//!  again, one statement on SQLite's clock:   first transaction() … its SQL …
//!  INSERT … ON CONFLICT DO UPDATE            ──▶ complete: UPDATE record → Finished; COMMIT
//!    WHERE <may run again> RETURNING         │   (no transaction opened: the UPDATE alone)
//!                                            └─▶ fail:     ROLLBACK; UPDATE record → Failed
//! ```
//!
//! ## Guide
//!
//! 1. Open the database with [`SqliteRepository::connect`] (`sqlite://ana.db` or
//!    `sqlite::memory:`), or build a [`SqliteRepository`] on a [`SqlitePool`](sqlx::SqlitePool)
//!    of your own, and run [`migrate`](SqliteRepository::migrate) at start-up (safe to run
//!    every time, from several processes at once).
//! 2. Build a [`Manager`](ana_core::Manager) with [`SqliteSession`] as its context type.
//! 3. In the operation, write through the session:
//!    `let mut tx = session.transaction().await?;` then `.execute(&mut *tx)`. Do not commit it:
//!    the manager does, together with the record.
//! 4. Optionally run [`SqliteRepository::spawn_cleanup`] to mark Running records past their
//!    timeout Failed and delete expired records.
//!
//! sqlx is re-exported as [`ana_sqlite::sqlx`](sqlx), so the version always matches. This
//! crate enables sqlx's `runtime-tokio` and `sqlite` features (SQLite bundled, built from
//! source by `libsqlite3-sys`).
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use ana_core::{operation, BoxError, Manager};
//! use ana_sqlite::{SqliteRepository, SqliteSession, sqlx};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let repository = SqliteRepository::connect("sqlite::memory:").await?;
//! repository.migrate().await?;
//! sqlx::query("CREATE TABLE payments (id INTEGER PRIMARY KEY, cents INTEGER, attempt INTEGER)")
//!     .execute(repository.pool())
//!     .await?;
//! let cleanup = repository.spawn_cleanup(ana_sqlite::CleanupConfig::every(Duration::from_secs(60)));
//!
//! let manager: Manager<String, i64, SqliteSession> = Manager::new(repository.clone());
//!
//! let charge = |key: &str, cents: i64| {
//!     operation("charge", key, format!("{cents} EUR"), move |session: SqliteSession| async move {
//!         let mut tx = session.transaction().await?;
//!         let id: i64 = sqlx::query_scalar(
//!             "INSERT INTO payments (cents, attempt) VALUES (?1, ?2) RETURNING id",
//!         )
//!         .bind(cents)
//!         .bind(session.attempt() as i64)
//!         .fetch_one(&mut *tx)
//!         .await?;
//!         Ok::<_, BoxError>(id)
//!     })
//!     .timeout(Duration::from_secs(30))
//!     .expiration(Duration::from_secs(24 * 3600))
//! };
//!
//! let first = manager.call(charge("order-42", 1_000)).await?;
//! // A retry replays the payment id; no second row is inserted.
//! assert_eq!(manager.call(charge("order-42", 1_000)).await?, first);
//! let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM payments")
//!     .fetch_one(repository.pool())
//!     .await?;
//! assert_eq!(rows, 1);
//! # cleanup.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Schema
//!
//! `ana_tracked_operations`, primary key `(target, key)`; times are `INTEGER` microseconds
//! since the Unix epoch (UTC):
//!
//! | column | type | |
//! |---|---|---|
//! | `status` | `TEXT` | `ready`, `running`, `finished`, `failed` (checked) |
//! | `fingerprint` | `BLOB` | 16-byte digest of the payload |
//! | `reference_time`, `started_at`, `timeout`, `expiration`, `finished_at` | `INTEGER` | deadlines are absolute |
//! | `result` | `BLOB` | the encoded result, once Finished; `NULL` on a Finished row whose result could not be encoded |
//! | `error`, `failure` | `TEXT` | the last failure's message and [`FailureKind`](ana_core::FailureKind) name |
//! | `error_count`, `attempt` | `INTEGER` | failed attempts; [`Lease::attempt`](ana_core::Lease::attempt) |
//! | `claim` | `INTEGER` | [`Lease::claim`](ana_core::Lease::claim), from the counter `ana_claims` |
//!
//! Indexes: `(timeout) WHERE status = 'running'` for
//! [`fail_timed_out`](SqliteRepository::fail_timed_out), `(expiration)` for
//! [`delete_expired`](SqliteRepository::delete_expired). Applied migrations are listed in
//! `ana_schema_migrations`; they run in one `BEGIN IMMEDIATE` transaction.
//!
//! ## Behaviour, and decisions where the contract is silent
//!
//! - **One clock: SQLite's.** Every deadline is set and compared on SQLite's `'now'` (one
//!   value per statement, millisecond resolution), never the application's. Every process
//!   sharing the file shares the machine's clock.
//! - **Claim.** A read first: a record that may not run again (Finished, held, expired,
//!   another payload) is answered from it, so a replay or a duplicate writes nothing and never
//!   waits for the writer (in WAL mode readers do not wait). Otherwise one statement,
//!   `INSERT … ON CONFLICT (target, key) DO UPDATE … WHERE <claimable> RETURNING …`, creates
//!   the record or takes it over; SQLite runs it under its write lock, so the condition
//!   (exactly [`TrackedOperation::is_claimable_at`](ana_core::TrackedOperation::is_claimable_at))
//!   is checked on the row as it stands. `RETURNING` needs SQLite 3.35 (the bundled one is
//!   newer).
//! - **The single writer, and why nothing deadlocks.** SQLite lets one connection write at a
//!   time. The operation's transaction opens with `BEGIN IMMEDIATE`, taking the write lock
//!   before its first statement: a deferred transaction that read first could not upgrade
//!   once another writer committed (`SQLITE_BUSY_SNAPSHOT`), and would fail where waiting
//!   would have done. The claim is autocommitted before the transaction opens and holds no
//!   lock while the operation runs; finishing writes the record on the transaction's own
//!   connection, which already holds the lock. A claim's write waits for the lock in slices
//!   of 20 ms and reads the record again between them, so a duplicate of a key whose first
//!   claim just committed is answered "still running" at once, never after the holder's
//!   transaction.
//! - **What the single writer costs.** While one operation's transaction is open, every
//!   other write waits for it: claims of new keys, retries, and finishes (up to the busy
//!   timeout, 5 s with [`connect`](SqliteRepository::connect); past it the call fails with
//!   [`RepositoryError::Unavailable`](ana_core::RepositoryError::Unavailable), HTTP 503, and
//!   never runs). New keys are therefore served one at a time, each for as long as its
//!   transaction stays open, and an operation that waits inside its transaction for another
//!   idempotent call on the same database waits for itself until the busy timeout. Replays,
//!   duplicates in flight and reads are not held up (WAL). Keep transactions short; an
//!   operation that needs no transaction takes the lock only for its record's two
//!   one-statement writes. A holder past its timeout whose transaction is still open cannot
//!   be taken over either (the takeover needs the lock the holder has): it is taken over
//!   once its transaction ends, or at once if its process died, which releases the lock.
//!   For many concurrent writers, use Postgres (`ana-pg`).
//! - **`sqlite::memory:`** is one connection held for the pool's life (an in-memory
//!   database lives as long as a connection to it, and SQLite's shared cache would make its
//!   connections wait on each other with no timeout): calls take turns on it, and a call
//!   waiting for it past the pool's acquire timeout fails with `Unavailable`. For tests and
//!   demos.
//! - **Durability.** [`connect`](SqliteRepository::connect) sets WAL and
//!   `synchronous = FULL`: a record is on disk once its call returns, and survives a crash of
//!   the process or the machine.
//! - **Finish.** `complete` updates the record in the session's transaction, conditional on
//!   the attempt, the claim number, Running status and expiration, then commits. When no row
//!   matched it rolls back and tells an expired record (marked Failed with
//!   [`FailureKind::Expired`](ana_core::FailureKind::Expired), answered
//!   [`Completion::Expired`](ana_core::Completion::Expired)) from a record another attempt
//!   owns ([`Completion::Superseded`](ana_core::Completion::Superseded)). When the commit
//!   fails the record is marked Failed
//!   ([`FailureKind::CommitFailed`](ana_core::FailureKind::CommitFailed)) and the error
//!   returned. `fail` rolls back first (releasing the lock), then records the failure.
//! - **Always released.** If every handle of a session is dropped first (the call's future
//!   dropped), sqlx rolls the transaction back and the connection returns to the pool; the
//!   manager marks the attempt Failed.
//! - **Storage faults** are typed: pool timeout, closed pool, I/O, and the SQLite codes
//!   `BUSY`, `LOCKED`, `NOMEM`, `IOERR`, `FULL` and `CANTOPEN` are
//!   [`RepositoryError::Unavailable`](ana_core::RepositoryError::Unavailable); a row that does
//!   not decode is `Corrupt`; anything else is `Backend`. Sources are kept.
//! - **Stored errors** are cut to 8 KiB. **Timeouts** are capped at 100 years.
//! - **Clean-up.** [`fail_timed_out`](SqliteRepository::fail_timed_out) and
//!   [`delete_expired`](SqliteRepository::delete_expired) each change at most `limit` rows per
//!   call. A Running record whose holder may still be at work is never deleted.
//! - **Fencing.** [`SqliteSession::attempt`] increases with every takeover. Every claim also
//!   gets a number of its own from the counter `ana_claims` (moved forward by triggers, so a
//!   record deleted and created again never reuses a number), which the finish checks
//!   besides the attempt.

mod cleanup;
mod error;
mod repository;
mod schema;
mod session;

pub use ana_core::{CleanupConfig, CleanupHandle, CleanupReport};
pub use repository::{DEFAULT_BUSY_TIMEOUT, SqliteRepository};
pub use schema::protocol_sql;
pub use session::{SqliteSession, SqliteTransaction};

/// The sqlx crate this store is built on, so applications use the same version.
pub use sqlx;

// This crate's README runs as doc tests, so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
