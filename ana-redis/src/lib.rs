//! # ana-redis
//!
//! A Redis store for [ana](ana_core): [`RedisRepository`] implements
//! [`IdempotencyRepository`](ana_core::IdempotencyRepository) on a
//! [deadpool-redis](deadpool_redis) pool, for a single server or a Redis Cluster.
//!
//! ```no_run
//! use std::time::Duration;
//! use ana_core::{operation, Manager};
//! use ana_redis::{RedisRepository, RedisSession};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisRepository::from_url("redis://127.0.0.1:6379")?.with_prefix("payments:");
//! // Or a cluster: RedisRepository::from_cluster_urls(["redis://10.0.0.1:6379", ...])?
//! // Or your own pool: RedisRepository::new(deadpool_redis::Config::from_url(..).create_pool(..)?)
//! let manager: Manager<String, String, RedisSession> = Manager::new(store);
//!
//! let charge = operation("charge", "order-42", "100 EUR".to_owned(), |session: RedisSession| async move {
//!     // Pass session.attempt() to the payment provider as a fencing token if it takes one.
//!     Ok::<_, std::io::Error>(format!("charged (attempt {})", session.attempt()))
//! })
//! .timeout(Duration::from_secs(30))        // the lock: another call may take over after it
//! .expiration(Duration::from_secs(86_400)); // the key is valid for a day
//!
//! let receipt = manager.call(charge).await?;
//! # let _ = receipt;
//! # Ok(()) }
//! ```
//!
//! ## What is stored
//!
//! One hash per record, under the key `<prefix><len(target)>:<target>:<key>`
//! ([`RedisRepository::record_key`]; the default prefix is `ana:`), for example
//! `ana:14:[POST]/charges:order-42`. The target's length makes the layout unambiguous.
//!
//! | field | holds |
//! |---|---|
//! | `status` | `ready`, `running`, `finished` or `failed` |
//! | `fp` | the payload fingerprint, 16 raw bytes |
//! | `ref`, `start`, `timeout`, `exp`, `fin` | reference time, start of the current attempt, its lock deadline, expiration, finish time: integer microseconds since the Unix epoch |
//! | `res` | the encoded result, once Finished; absent on a Finished record whose result could not be encoded |
//! | `err` | the last error message, while Failed |
//! | `fail` | the last failure's [`FailureKind`](ana_core::FailureKind) name (`error`, `panic`, `cancelled`, `timed_out`, `expired`, …), while Failed |
//! | `errs`, `att` | failed attempts, and the current attempt number ([`Lease::attempt`](ana_core::Lease::attempt)) |
//! | `tok` | the claim number of the current attempt ([`Lease::claim`](ana_core::Lease::claim)): the server's time of the claim in microseconds, decimal |
//!
//! A Failed record without a `fail` field (one written without it) is read with the kind its
//! message stands for: a kind's [default message](ana_core::FailureKind::message) gives that
//! kind, `Got panic "…"` gives [`Panic`](ana_core::FailureKind::Panic), any other message
//! [`Error`](ana_core::FailureKind::Error). A `fail` field naming no known kind makes the
//! record corrupt. A `res` holding the bytes `\xffana: the result could not be encoded\xff`
//! is read as no result too: it is the marker of an unencodable result from a writer that sets
//! `res` on every Finished record.
//!
//! ## One round trip per step, on the server's clock
//!
//! `claim`, `complete` and `fail` are each one `EVALSHA` of a Lua script (sent whole with
//! `EVAL` when the server answers `NOSCRIPT`, which also caches it again), so each step is atomic in Redis and costs one round trip:
//!
//! - **claim** creates the record, or takes over a record for which
//!   [`TrackedOperation::is_claimable_at`](ana_core::TrackedOperation::is_claimable_at) holds
//!   (same fingerprint, not expired, and Ready, Failed or Running past its timeout), or
//!   returns the record as it stands with the server's time. Never check-then-insert.
//! - **complete** and **fail** are a compare-and-set on the [`Lease`](ana_core::Lease): the
//!   attempt number *and* the claim number; a record expired before `complete` becomes Failed
//!   with [`FailureKind::Expired`](ana_core::FailureKind::Expired) and the call gets
//!   [`Completion::Expired`](ana_core::Completion::Expired). `fail` stores the failure's kind
//!   in `fail` and its message in `err`.
//!
//! Every deadline is computed and compared on the Redis server's clock (`TIME` inside the
//! script; Redis replicates a script's effects, not the script, so replicas agree), never on
//! the application servers' clocks. `get` is a plain `HGETALL`.
//!
//! Tested on Redis 7.0; needs Redis 5 or later (scripts replicated by their effects).
//!
//! ## Retention: Redis never grows without bound
//!
//! Every write sets the record's TTL (`PEXPIREAT`):
//!
//! - a record with an expiration lives until its expiration plus
//!   [`with_retention_after_expiration`](RedisRepository::with_retention_after_expiration)
//!   (default one hour), so a Finished record still replays to late retries for a while;
//! - a record without one lives
//!   [`with_retention_without_expiration`](RedisRepository::with_retention_without_expiration)
//!   (default seven days) after its last write;
//! - a Running record is also kept until its timeout (or for the retention without
//!   expiration when it has none), so it never vanishes under the attempt holding it.
//!
//! Once a record is gone its key is free: a new call with the same key runs again. An
//! attempt that finishes after its record is gone writes nothing: `complete` answers
//! Expired, `fail` answers Superseded.
//!
//! ## Operators: forget, stats, clean-up
//!
//! [`RedisRepository`] implements [`Maintenance`](ana_core::Maintenance) (the `ana` command of
//! crate `ana-cli` runs it):
//!
//! - **forget** is one Lua script on the record's key: it reads the status and timeout on the
//!   server's clock and deletes, or refuses a record whose holder may still be at work, in
//!   the same step, so no claim can come between.
//! - **stats** walks the prefix's keys with `SCAN … MATCH <prefix>*` on the server, or on
//!   every master of a cluster (found with `CLUSTER SLOTS`), reading each batch's `status`,
//!   `timeout` and `exp` with one pipeline of `HMGET`s: a full pass over the keyspace, to run
//!   now and then, not on every request.
//! - **cleanup** walks the keys the same way and marks Running records past their timeout
//!   Failed (one script each, which checks again). It deletes nothing: the TTLs below do,
//!   and it says so ([`Cleaned::expires_itself`](ana_core::Cleaned::expires_itself)).
//!
//! ## Redis Cluster
//!
//! Each script touches exactly one key, the record's hash, so every step runs on the one node
//! that owns the key's slot, and records spread over all slots. No hash tag is needed (one
//! key is always one slot) and none is added, so keys do not pile onto one node; do not put
//! `{…}` in the prefix unless you want them to. Build the store with
//! [`RedisRepository::cluster`] or [`RedisRepository::from_cluster_urls`] (feature
//! `cluster`, on by default). The test suite runs the whole conformance suite on a
//! 3-master cluster (`make test-redis-cluster`).
//!
//! ## What Redis can and cannot promise
//!
//! - The operation never runs without a successful claim; if Redis is unreachable the call
//!   fails with [`RepositoryError::Unavailable`](ana_core::RepositoryError::Unavailable) and
//!   nothing runs.
//! - One attempt at a time holds a record until its timeout; a late attempt never overwrites
//!   a newer one (fencing on the attempt number and the claim number, which also fences an
//!   attempt whose record vanished and was created anew with attempt 1).
//! - **There is no shared transaction** with the operation: unlike the Postgres store, what
//!   the operation writes is not rolled back when the attempt fails, is superseded or
//!   expires. [`RedisSession::attempt`] is a fencing token to pass downstream.
//! - A claim whose reply is lost (a timeout after Redis ran the script) leaves the record
//!   Running until its timeout: always give operations a timeout on this store.
//! - Durability is Redis's: with replication or persistence off, a failover or restart can
//!   lose records, and a retried request may then run again.
//!
//! ## Errors
//!
//! Pool and connection failures (refused, dropped, timed out, cluster down or resharding, a
//! loading or read-only node) are
//! [`RepositoryError::Unavailable`](ana_core::RepositoryError::Unavailable); an error
//! answered by a working server (a script error, another type of value under the key) is
//! [`RepositoryError::Backend`](ana_core::RepositoryError::Backend), with the driver's error
//! as the source; a record that cannot be read back is
//! [`RepositoryError::Corrupt`](ana_core::RepositoryError::Corrupt), never "no record", and a
//! claim never overwrites it.
//!
//! ## The driver
//!
//! [`deadpool_redis`] (0.23) and its [`redis`] (1.x) are re-exported: build pools with them
//! to be sure the versions match. The pool makes the connections (URL, TLS, timeouts); the
//! repository takes one multiplexed connection from it and shares it between all its calls,
//! which the driver pipelines: a step costs one round trip, where a checkout per call would
//! add deadpool-redis's `PING` each time. After a connection error that connection is
//! dropped (the failing call answers `Unavailable`) and the next call takes a fresh one.

mod layout;
mod maintenance;
mod record;
mod repository;
mod script;

pub use repository::{
    DEFAULT_PREFIX, DEFAULT_RETENTION_AFTER_EXPIRATION, DEFAULT_RETENTION_WITHOUT_EXPIRATION,
    RedisRepository, RedisSession,
};

/// The pool this crate is built on (deadpool-redis 0.23), re-exported so that users build
/// pools with the same version.
pub use deadpool_redis;
/// The Redis client (redis 1.x) under deadpool-redis.
pub use deadpool_redis::redis;

// This crate's README runs as doc tests, so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
