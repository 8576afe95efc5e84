//! # ana-pg
//!
//! The PostgreSQL store of [`ana_core`], on [sqlx](https://docs.rs/sqlx) 0.9: an idempotent
//! operation runs inside an open transaction, and **its own writes commit in the same
//! transaction as its record turning Finished**. Either both are there, or neither is: on an
//! error, a panic, a takeover by another attempt or an expiration found at the finish, the
//! operation's writes are rolled back and the failure is recorded.
//!
//! ```text
//!  claim (autocommit, one statement)      session: the claim's connection; BEGIN at the
//!  read; if it may run again:             operation's first transaction() … its SQL …
//!  INSERT … ON CONFLICT … DO UPDATE       ──▶ complete: UPDATE record → Finished; COMMIT
//!    WHERE <may run again> RETURNING      │   (no transaction opened: the UPDATE alone)
//!                                         └─▶ fail:     ROLLBACK; UPDATE record → Failed
//! ```
//!
//! ## Guide
//!
//! 1. Build a [`PgRepository`] on a [`PgPool`](sqlx::PgPool) and run
//!    [`migrate`](PgRepository::migrate) at start-up (safe to run every time, from every
//!    instance at once). Records go to schema `ana`, or another one with
//!    [`PgRepository::with_schema`].
//! 2. Build a [`Manager`](ana_core::Manager) with [`PgSession`] as its context type.
//! 3. In the operation, write through the session:
//!    `let mut tx = session.transaction().await?;` then `.execute(&mut *tx)`. Do not commit it:
//!    the manager does, together with the record.
//! 4. To send messages exactly when the operation's work commits, append them to the
//!    [`outbox::Outbox`] through the session (migration 4 creates `<schema>.outbox`); a relay
//!    such as `ana_nats::OutboxRelay` publishes them.
//! 5. Optionally run [`PgRepository::spawn_cleanup`] to mark Running records past their
//!    timeout Failed and delete expired records.
//!
//! sqlx is re-exported as [`ana_pg::sqlx`](sqlx), so the version always matches. This crate
//! enables sqlx's `runtime-tokio`, `postgres` and `chrono` features and no TLS; to reach a
//! server over TLS, depend on `sqlx` 0.9 yourself with `tls-rustls` (or `tls-native-tls`):
//! Cargo unifies the features.
//!
//! ## Example
//!
//! ```no_run
//! use std::time::Duration;
//! use ana_core::{operation, BoxError, Manager};
//! use ana_pg::{PgRepository, PgSession, sqlx};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::postgres::PgPoolOptions::new()
//!     .max_connections(16)
//!     .acquire_timeout(Duration::from_secs(3))
//!     .connect("postgres://postgres@127.0.0.1:5432/test")
//!     .await?;
//! let repository = PgRepository::new(pool);
//! repository.migrate().await?;
//! let cleanup = repository.spawn_cleanup(ana_pg::CleanupConfig::every(Duration::from_secs(60)));
//!
//! let manager: Manager<String, i64, PgSession> = Manager::new(repository);
//!
//! let charge = |key: &str, cents: i64| {
//!     operation("charge", key, format!("{cents} EUR"), move |session: PgSession| async move {
//!         let mut tx = session.transaction().await?;
//!         let id: i64 = sqlx::query_scalar(
//!             "INSERT INTO payments (cents, attempt) VALUES ($1, $2) RETURNING id",
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
//! # cleanup.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Schema
//!
//! `<schema>.tracked_operations`, primary key `(target, key)`:
//!
//! | column | type | |
//! |---|---|---|
//! | `status` | `<schema>.operation_status` | `ready`, `running`, `finished`, `failed` |
//! | `fingerprint` | `bytea` | 16-byte digest of the payload |
//! | `reference_time`, `started_at`, `timeout`, `expiration`, `finished_at` | `timestamptz` | deadlines are absolute |
//! | `result` | `bytea` | the encoded result, once Finished; `NULL` on a Finished row whose result could not be encoded |
//! | `error` | `text` | the last failure's message |
//! | `failure` | `text` | the last failure's [`FailureKind`](ana_core::FailureKind) name (`error`, `panic`, `cancelled`, `timed_out`, `expired`, `begin_failed`, `commit_failed`; migration 3) |
//! | `error_count` | `integer` | failed attempts |
//! | `attempt` | `bigint` | the attempt number, [`Lease::attempt`](ana_core::Lease::attempt) |
//! | `claim` | `bigint` | the id of the transaction that made the attempt, [`Lease::claim`](ana_core::Lease::claim) (migration 2) |
//!
//! Indexes: `(timeout) WHERE status = 'running'` for [`PgRepository::fail_timed_out`],
//! `(expiration)` for [`PgRepository::delete_expired`]. Applied migrations are listed in
//! `<schema>.schema_migrations`. The migrations run in one transaction under
//! `pg_advisory_xact_lock` on the schema's name: concurrent runs wait for each other, repeated
//! runs do nothing. Migration 3 gives the rows it finds their `failure` kind from their
//! `error` message (the texts ana-pg stored for cancellation, time-outs, expirations and
//! `BEGIN`/`COMMIT` failures; `Got panic "…"` for a panic; `error` otherwise), and clears the
//! result of a Finished row holding the marker bytes an unencodable result was stored as.
//!
//! ## Behaviour, and decisions where the contract is silent
//!
//! - **One clock.** Every deadline is computed and compared on the database's clock
//!   (`statement_timestamp()` in the claim, `clock_timestamp()` at finish and in the clean-up),
//!   never the application's. A claim answering "held" returns the database's time for the
//!   manager's `Retry-After`.
//! - **Claim in one statement, never waiting on a holder.** The claim is
//!   `WITH existing AS (SELECT … WHERE (target, key)), claimed AS (INSERT … SELECT … WHERE NOT
//!   EXISTS (<existing, not claimable>) ON CONFLICT (target, key) DO UPDATE … WHERE <claimable>
//!   RETURNING …) SELECT … FROM claimed UNION ALL SELECT … FROM existing WHERE NOT EXISTS
//!   (SELECT 1 FROM claimed)`, autocommitted, so the Running row is visible at once. The
//!   `<claimable>` condition is exactly [`TrackedOperation::is_claimable_at`](ana_core::TrackedOperation::is_claimable_at).
//!   A record that may not run again (Finished, held, expired, another payload) is answered
//!   from the read alone: a replay or a duplicate writes nothing, locks nothing and costs no
//!   WAL flush, so replays run at the speed of a primary-key `SELECT`. Only a new or claimable
//!   record goes through the insert, whose conflict arm re-checks the condition on the latest
//!   row version. The holder's transaction locks its record only for its final `UPDATE` and
//!   `COMMIT`. If the statement answers no row (a concurrent first claim committed after its
//!   snapshot), or answers a record it could have taken but did not (a concurrent claim took
//!   it over after its snapshot: the read is stale), it is run again, three times at most.
//! - **The session's transaction** opens with `BEGIN` at the operation's first
//!   [`PgSession::transaction`], on the connection the claim used, so a call holds one
//!   connection at a time (a full pool cannot deadlock) and goes through the pool once. An
//!   operation that never asks for it (its work is elsewhere: another service, a queue) pays
//!   no `BEGIN` and no `COMMIT`: its record turns Finished in one autocommitted `UPDATE`.
//!   sqlx tests a connection with a round trip each time it goes back to the pool, and,
//!   unless [`test_before_acquire(false)`](sqlx::pool::PoolOptions::test_before_acquire), each
//!   time it is taken: turn that off for the shortest path (a broken connection then fails one
//!   call with [`RepositoryError::Unavailable`](ana_core::RepositoryError::Unavailable)). If
//!   `BEGIN` fails, `transaction()` returns the error and the session is closed; an operation
//!   that returns a result all the same has its attempt marked Failed
//!   ([`FailureKind::BeginFailed`](ana_core::FailureKind::BeginFailed)).
//!   `BEGIN` runs as a task of its own, so a `transaction()` call cancelled while it is in
//!   flight never puts the connection back in the pool inside a transaction (sqlx 0.9 would).
//! - **Connections handed over under load.** When the pool is full and the repository's
//!   calls hold its connections, a claim waits for one of those calls rather than in the
//!   pool. A call done with its connection in a known state (a replay's read, or a finish
//!   without a transaction, answered) hands it straight to the claim waiting longest, so
//!   the release test above is skipped: two exchanges with the database for a new key
//!   instead of three. Any other way a call ends (a transaction, an error) puts the
//!   connection back in the pool and sends a waiting claim there. A connection passes at
//!   most 16 times in a row, then goes back to the pool, where other code on the same pool
//!   waits its turn. A claim waits for a call at most the pool's acquire timeout, then for
//!   the pool as usual.
//! - **Finish.** `complete` updates the record in the session's transaction, conditional on
//!   the attempt token, the claim number, Running status and expiration, then commits. When
//!   the operation opened no transaction the `UPDATE` runs alone, and once more on another
//!   pooled connection if the claim's connection failed meanwhile (it held no transaction,
//!   and the statement is a compare-and-set). When no row matched it rolls back and tells
//!   this claim's own earlier finish (the `UPDATE` applied on the claim's connection, its
//!   answer lost: [`Completion::Done`](ana_core::Completion::Done)) and an expired record
//!   (marked Failed with [`FailureKind::Expired`](ana_core::FailureKind::Expired), answered
//!   [`Completion::Expired`](ana_core::Completion::Expired)) from a record another attempt
//!   owns ([`Completion::Superseded`](ana_core::Completion::Superseded)). When the transaction
//!   itself fails (a statement of the operation aborted it, a deferred constraint, the
//!   connection dropped) the record is marked Failed
//!   ([`FailureKind::CommitFailed`](ana_core::FailureKind::CommitFailed)) and the error
//!   returned. `fail` rolls back, then records the failure (kind and message) on another
//!   pooled connection.
//! - **Always released.** The transaction is committed or rolled back by the finish; if every
//!   handle of a session is dropped first (the call's future dropped), sqlx rolls it back and
//!   the connection returns to the pool, and the manager marks the attempt Failed.
//! - **Storage faults** are typed: pool timeout, closed pool, I/O, TLS and the server's
//!   "cannot serve now" SQLSTATE classes (08, 53, 57) are
//!   [`RepositoryError::Unavailable`](ana_core::RepositoryError::Unavailable); a row that does
//!   not decode is `Corrupt`; anything else is `Backend`. Sources are kept.
//! - **Stored errors** lose NUL bytes (Postgres `text` refuses them) and are cut to 8 KiB.
//! - **Timeouts** are capped at 100 years.
//! - **Clean-up.** [`fail_timed_out`](PgRepository::fail_timed_out) and
//!   [`delete_expired`](PgRepository::delete_expired) each change at most `limit` rows per
//!   call, picked with `FOR UPDATE SKIP LOCKED`, and return counts. Expired records are deleted
//!   after an optional [retention](PgRepository::with_retention), except a Running record
//!   whose holder may still be at work (no timeout, or its timeout ahead): deleted, it would
//!   let a new call run beside the holder. A Finished record replays until deleted. A record
//!   without a timeout whose holder crashed is never deleted (and its key answers Expired once
//!   it expired): give operations a timeout.
//! - **Operators.** [`PgRepository`] implements [`Maintenance`](ana_core::Maintenance) (the
//!   `ana` command of crate `ana-cli` runs it): `forget` is one `DELETE` whose condition
//!   (forced, or no holder at work) Postgres re-checks on the latest row version, so a record
//!   claimed meanwhile is never deleted unforced, and which wakes the calls waiting on the
//!   record it deletes, as a finish does; `stats` is a `count(*) … GROUP BY status`
//!   (a scan of the table); `cleanup` is `fail_timed_out` then `delete_expired`.
//! - **Fencing.** [`PgSession::attempt`] is the attempt number, increasing with every
//!   takeover; pass it to systems outside the transaction that can reject a stale writer.
//!   Every claim also gets a number of its own, its transaction's id (the `claim` column,
//!   [`Lease::claim`](ana_core::Lease::claim)), which the finish checks besides the attempt: a
//!   record deleted after it expired and created again counts its attempts from 1 again, and
//!   an earlier holder's late finish must not land on it. Transaction ids are positive; a
//!   lease whose claim number is beyond `bigint` is bound as `NULL` and matches no row.

mod cleanup;
mod error;
mod handoff;
mod notify;
pub mod outbox;
mod repository;
mod schema;
mod session;

pub use ana_core::{CleanupConfig, CleanupHandle, CleanupReport};
pub use repository::PgRepository;
pub use schema::{DEFAULT_SCHEMA, InvalidSchemaName, claim_and_complete_sql};
pub use session::{PgSession, PgTransaction};

/// The sqlx crate this store is built on, so applications use the same version.
pub use sqlx;

// This crate's README runs as doc tests, so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
