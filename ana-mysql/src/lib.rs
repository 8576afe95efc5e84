//! # ana-mysql
//!
//! The MySQL and MariaDB store of [`ana_core`], on [sqlx](https://docs.rs/sqlx) 0.9, for
//! MariaDB ≥ 10.6 and MySQL ≥ 8.0: an idempotent operation runs inside an open InnoDB
//! transaction, and **its own writes commit in the same transaction as its record turning
//! Finished**. Either both are there, or neither is: on an error, a panic, a takeover by
//! another attempt or an expiration found at the finish, the operation's writes are rolled
//! back and the failure is recorded.
//!
//! ```text
//!  claim (autocommit): read the record;    session: the claim's connection; BEGIN at the
//!  if it may run again, one statement:     operation's first transaction() … its SQL …
//!  INSERT … ON DUPLICATE KEY UPDATE        ──▶ complete: UPDATE record → Finished; COMMIT
//!    col = IF(<claimed>, new, col), …      │   (no transaction opened: the UPDATE alone)
//!                                          └─▶ fail:     ROLLBACK; UPDATE record → Failed
//! ```
//!
//! ## Guide
//!
//! 1. Build a [`MySqlRepository`] on a [`MySqlPool`](sqlx::MySqlPool) and run
//!    [`migrate`](MySqlRepository::migrate) at start-up (safe to run every time, from every
//!    instance at once). Records go to `ana_tracked_operations` in the pool's database.
//! 2. Build a [`Manager`](ana_core::Manager) with [`MySqlSession`] as its context type.
//! 3. In the operation, write through the session:
//!    `let mut tx = session.transaction().await?;` then `.execute(&mut *tx)`. Do not commit it:
//!    the manager does, together with the record.
//! 4. Optionally run [`MySqlRepository::spawn_cleanup`] to mark Running records past their
//!    timeout Failed and delete expired records.
//!
//! sqlx is re-exported as [`ana_mysql::sqlx`](sqlx), so the version always matches. This crate
//! enables sqlx's `runtime-tokio`, `mysql` and `chrono` features and no TLS; to reach a server
//! over TLS, depend on `sqlx` 0.9 yourself with `tls-rustls` (or `tls-native-tls`).
//!
//! ## Example
//!
//! ```no_run
//! use std::time::Duration;
//! use ana_core::{operation, BoxError, Manager};
//! use ana_mysql::{MySqlRepository, MySqlSession, sqlx};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::mysql::MySqlPoolOptions::new()
//!     .max_connections(16)
//!     .acquire_timeout(Duration::from_secs(3))
//!     .connect("mysql://root@127.0.0.1:3306/test")
//!     .await?;
//! let repository = MySqlRepository::new(pool);
//! repository.migrate().await?;
//! let cleanup = repository.spawn_cleanup(ana_mysql::CleanupConfig::every(Duration::from_secs(60)));
//!
//! let manager: Manager<String, u64, MySqlSession> = Manager::new(repository);
//!
//! let charge = |key: &str, cents: i64| {
//!     operation("charge", key, format!("{cents} EUR"), move |session: MySqlSession| async move {
//!         let mut tx = session.transaction().await?;
//!         let done = sqlx::query("INSERT INTO payments (cents, attempt) VALUES (?, ?)")
//!             .bind(cents)
//!             .bind(session.attempt())
//!             .execute(&mut *tx)
//!             .await?;
//!         Ok::<_, BoxError>(done.last_insert_id())
//!     })
//!     .timeout(Duration::from_secs(30))
//!     .expiration(Duration::from_secs(24 * 3600))
//! };
//!
//! let first = manager.call(charge("order-42", 1_000)).await?;
//! // A retry replays the payment id; no second row is inserted.
//! assert_eq!(manager.call(charge("order-42", 1_000)).await?, first);
//! # cleanup.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Schema
//!
//! `ana_tracked_operations` (InnoDB, `utf8mb4_bin`: keys compare byte for byte), primary key
//! `(target, key)`; `target` holds up to [`MAX_TARGET_LEN`] characters and `key` up to
//! [`MAX_KEY_LEN`] (a longer one is refused with
//! [`RepositoryError::Backend`](ana_core::RepositoryError::Backend) before any write).
//!
//! | column | type | |
//! |---|---|---|
//! | `status` | `VARCHAR(16)` | `ready`, `running`, `finished`, `failed` (checked) |
//! | `fingerprint` | `BINARY(16)` | digest of the payload |
//! | `reference_time`, `started_at`, `timeout`, `expiration`, `finished_at` | `DATETIME(6)` | UTC, absolute |
//! | `result` | `LONGBLOB` | the encoded result, once Finished; `NULL` on a Finished row whose result could not be encoded |
//! | `error`, `failure` | `TEXT`, `VARCHAR(32)` | the last failure's message and [`FailureKind`](ana_core::FailureKind) name |
//! | `error_count`, `attempt` | `INT UNSIGNED`, `BIGINT UNSIGNED` | failed attempts; [`Lease::attempt`](ana_core::Lease::attempt) |
//! | `claim` | `BIGINT UNSIGNED` | [`Lease::claim`](ana_core::Lease::claim), from `UUID_SHORT()` |
//!
//! Indexes: `(status, timeout)` for [`fail_timed_out`](MySqlRepository::fail_timed_out),
//! `(expiration)` for [`delete_expired`](MySqlRepository::delete_expired). Applied
//! migrations are listed in `ana_schema_migrations`; they run under `GET_LOCK`.
//!
//! ## Behaviour, and decisions where the contract is silent
//!
//! - **One clock.** Every deadline is set and compared on the server's `UTC_TIMESTAMP(6)`
//!   (one value per statement, whatever the session's `time_zone`), never the application's.
//! - **Claim: a read, then one statement.** The read is a consistent (non-locking) read: a
//!   record that may not run again (Finished, held, expired, another payload) is answered
//!   from it, so a replay or a duplicate writes nothing and waits for no lock. It also draws
//!   the claim number, `UUID_SHORT()`. Otherwise one autocommitted
//!   `INSERT … ON DUPLICATE KEY UPDATE` creates the record or takes it over under its row
//!   lock. MySQL assigns left to right, so the first assignment,
//!   `claim = IF(<claimable>, <this claim>, claim)`, decides on the old row (the condition is
//!   exactly [`TrackedOperation::is_claimable_at`](ana_core::TrackedOperation::is_claimable_at)),
//!   and every later one changes its column only `IF(claim <=> <this claim>, …)`. The
//!   statement reports its outcome through `LAST_INSERT_ID(x)` in its answer (1 created,
//!   n ≥ 2 taken over as attempt n, 0 untouched): no second round trip. Untouched (a
//!   concurrent claim won), or rolled back by InnoDB as a deadlock victim (concurrent upserts
//!   of one key can deadlock), the claim reads again, five times at most.
//! - **Dialects.** Both servers run the same SQL. What they differ in, and what the store
//!   therefore avoids: `INSERT … RETURNING` (MariaDB ≥ 10.5 only), `VALUES()` in
//!   `ON DUPLICATE KEY UPDATE` (deprecated in MySQL 8.0.20, replaced by a row alias that
//!   MariaDB lacks: the store binds the values again instead), `CREATE INDEX IF NOT EXISTS`
//!   (MariaDB only: indexes are declared in `CREATE TABLE IF NOT EXISTS`), partial indexes
//!   and `ON CONFLICT … WHERE` (neither has them), `SKIP LOCKED` in a subquery of the same
//!   table (refused by MySQL: the clean-up uses `UPDATE`/`DELETE … ORDER BY … LIMIT`), and
//!   the isolation variable (`transaction_isolation` in MySQL 8, `tx_isolation` in MariaDB
//!   10.6; the store needs InnoDB's default, `REPEATABLE READ`, or `READ COMMITTED`, and sets
//!   neither). `CHECK` constraints are enforced by both (MySQL since 8.0.16). `UUID_SHORT()`
//!   is unique per server while `server_id` (0–255) is unique among the servers sharing the
//!   table.
//! - **The session's transaction** opens with `BEGIN` at the operation's first
//!   [`MySqlSession::transaction`], on the connection the claim used, so a call holds one
//!   connection at a time. An operation that never asks for it pays no `BEGIN` and no
//!   `COMMIT`. The holder locks its record only for its final `UPDATE` and `COMMIT`; its own
//!   statements follow InnoDB's rules (a deadlock among them is the operation's error, and
//!   rolls its attempt back).
//! - **Finish.** `complete` updates the record in the session's transaction, conditional on
//!   the attempt, the claim number, Running status and expiration, then commits. When no row
//!   matched it rolls back and tells an expired record (marked Failed with
//!   [`FailureKind::Expired`](ana_core::FailureKind::Expired), answered
//!   [`Completion::Expired`](ana_core::Completion::Expired)) from one another attempt owns
//!   ([`Completion::Superseded`](ana_core::Completion::Superseded)). When the transaction
//!   fails the record is marked Failed
//!   ([`FailureKind::CommitFailed`](ana_core::FailureKind::CommitFailed)) and the error
//!   returned. `fail` rolls back, then records the failure on a pooled connection.
//! - **Always released.** If every handle of a session is dropped first (the call's future
//!   dropped), sqlx rolls the transaction back and the connection returns to the pool, and
//!   the manager marks the attempt Failed.
//! - **Storage faults** are typed: pool timeout, closed pool, I/O, TLS and the server errors
//!   1040, 1053, 1203, 1205, 1317, 1927 and 4031 (too many connections, shutdown, lock wait
//!   timeout, killed, idle disconnect) are
//!   [`RepositoryError::Unavailable`](ana_core::RepositoryError::Unavailable); a row that does
//!   not decode is `Corrupt`; anything else is `Backend`. Sources are kept.
//! - **Stored errors** are cut to 8 KiB. **Timeouts** are capped at 100 years.
//! - **Clean-up.** [`fail_timed_out`](MySqlRepository::fail_timed_out) and
//!   [`delete_expired`](MySqlRepository::delete_expired) each change at most `limit` rows per
//!   call, oldest first. A Running record whose holder may still be at work is never deleted.
//! - **Fencing.** [`MySqlSession::attempt`] increases with every takeover. Every claim also
//!   gets a number of its own, which the finish checks besides the attempt: a record deleted
//!   and created again counts its attempts from 1 again, and an earlier holder's late finish
//!   must not land on it.

mod cleanup;
mod error;
mod repository;
mod schema;
mod session;

pub use ana_core::{CleanupConfig, CleanupHandle, CleanupReport};
pub use repository::{MAX_KEY_LEN, MAX_TARGET_LEN, MySqlRepository};
pub use schema::protocol_sql;
pub use session::{MySqlSession, MySqlTransaction};

/// The sqlx crate this store is built on, so applications use the same version.
pub use sqlx;

// This crate's README runs as doc tests, so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
