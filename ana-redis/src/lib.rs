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
//! One string per record, under the key `<prefix><len(target)>:<target>:<key>`
//! ([`RedisRepository::record_key`]; the default prefix is `ana:`), for example
//! `ana:14:[POST]/charges:order-42`. The target's length makes the layout unambiguous.
//!
//! The string is a fixed-width ASCII header of 172 bytes, then the failure kind's name and
//! the data (readable with `redis-cli GET`):
//!
//! | bytes | holds |
//! |---|---|
//! | 0 | `A`, the layout's marker |
//! | 1 | the status: `0` Ready, `1` Running, `2` Finished, `3` Failed |
//! | 2 | `1` when data follows the header (the result, or the failure's message) |
//! | 3–34 | the payload fingerprint, 32 hex digits |
//! | 35–54, 55–74 | the attempt number ([`Lease::attempt`](ana_core::Lease::attempt)) and the claim number of the current attempt ([`Lease::claim`](ana_core::Lease::claim)), 20 digits each |
//! | 75–159 | reference time, start of the current attempt, its lock deadline, expiration, finish time: microseconds since the Unix epoch, 17 characters each (`_` × 17 when absent) |
//! | 160–169 | failed attempts, 10 digits |
//! | 170–171, then | the length of the failure kind's name ([`FailureKind`](ana_core::FailureKind): `error`, `panic`, `cancelled`, `timed_out`, `expired`, …; `00` unless Failed), the name, then the data |
//!
//! A Finished record whose result could not be encoded holds no data. A Failed record
//! without a kind is read with the kind its message stands for: a kind's
//! [default message](ana_core::FailureKind::message) gives that kind, `Got panic "…"` gives
//! [`Panic`](ana_core::FailureKind::Panic), any other message
//! [`Error`](ana_core::FailureKind::Error).
//!
//! ### Records of the hash layout
//!
//! Earlier versions of this crate stored one hash per record (fields `status`, `fp`, `ref`,
//! `start`, `timeout`, `exp`, `fin`, `res`, `err`, `fail`, `errs`, `att`, `tok`). This
//! version still reads them, so a rolling upgrade loses nothing: they replay, a claim takes
//! them over (and writes the record as a string from then on), `get`, `stats`, `cleanup` and
//! `forget` handle them. The reverse does not hold: **an earlier version cannot read the
//! strings** (its scripts answer `WRONGTYPE`, a [`Backend`](ana_core::RepositoryError::Backend)
//! error), so once a new instance writes a key, instances of an earlier version fail on it.
//! Upgrade every instance at once, or accept those errors for the keys written during the
//! upgrade.
//!
//! ## One round trip per step
//!
//! Each step is one command or one `EVALSHA` of a Lua script (sent whole with `EVAL` when the
//! server answers `NOSCRIPT`, which also caches it again), atomic in Redis:
//!
//! - **claim** is `SET key <new Running record> NX GET PXAT <ttl>`: a new key is created
//!   and claimed by this one command, no script. When a record stands, the same command
//!   answers with it: a Finished record replays from that answer, and a record Running
//!   within its timeout is answered as it stands. Only a record for which
//!   [`TrackedOperation::is_claimable_at`](ana_core::TrackedOperation::is_claimable_at)
//!   holds (same fingerprint, not expired, and Ready, Failed or Running past its timeout), or
//!   a record of the hash layout, goes on to the claim script, which decides again and takes
//!   it over on the server's clock. Never check-then-insert.
//! - **complete** and **fail** are one script: a compare-and-set on the
//!   [`Lease`](ana_core::Lease), the attempt number *and* the claim number (`GET`, compare,
//!   `SET`); a record expired before `complete` becomes Failed with
//!   [`FailureKind::Expired`](ana_core::FailureKind::Expired) and the call gets
//!   [`Completion::Expired`](ana_core::Completion::Expired). Both publish a
//!   [wake-up](#wake-ups) in the same round trip.
//! - **get** is a plain `GET`.
//!
//! ### Clocks
//!
//! The claim of a new key is made without a script, so the times it writes (the start of
//! the attempt and its lock deadline, the claim time plus the timeout) come from the clock
//! of the application server that claims, and its claim number is 64 random bits; the
//! answer to a claim that finds a record (Finished, or Running within its timeout) is judged
//! on that clock too. Every other step reads the Redis server's clock (`TIME` inside the
//! script; Redis replicates a script's effects, not the script, so replicas agree): a
//! takeover, which also numbers its claim with the server's time in microseconds, the expiry
//! check of `complete`, renewals, `cleanup` and `forget`. Keep the application servers'
//! clocks in step with the Redis server's (NTP): a skew moves a new record's lock deadline
//! by as much.
//!
//! Needs Redis 7.0 or later (`SET … NX GET`); tested on Redis 7.0.

//! ## Retention: Redis never grows without bound
//!
//! Every write sets the record's TTL (`PXAT`):
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
//!   every master of a cluster (found with `CLUSTER SLOTS`), reading each batch's headers
//!   with one pipeline of `GETRANGE`s (and `HMGET`s for records of the hash layout): a full
//!   pass over the keyspace, to run now and then, not on every request.
//! - **cleanup** walks the keys the same way and marks Running records past their timeout
//!   Failed (one script each, which checks again). It deletes nothing: the TTLs below do,
//!   and it says so ([`Cleaned::expires_itself`](ana_core::Cleaned::expires_itself)).
//!
//! ## Wake-ups
//!
//! A call waiting for another holder's record
//! ([`Manager::call_or_wait`](ana_core::Manager::call_or_wait), `Prefer: wait` in HTTP) is
//! woken through Redis pub/sub, on a single server:
//!
//! - Every step that may end a held record (`complete`, `fail`, the clean-up's time-out,
//!   `forget`) sends `PUBLISH <prefix>wake <digest>` in one pipeline with its script: the same
//!   round trip, the scripts untouched. It publishes whatever the script answered: a finish
//!   that lost its lease publishes too, and a call woken for nothing reads its record and
//!   waits on. The digest is the first 32 hex digits of the SHA-1 of the record's Redis key
//!   (`string.sub(redis.sha1hex(key), 1, 32)` in Lua): nothing of the key travels. Claims and
//!   replays publish nothing.
//! - A store from [`RedisRepository::from_url`] (or given a client with
//!   [`with_subscriber`](RedisRepository::with_subscriber)) opens one subscriber connection,
//!   at its first waiting call: RESP3, named `ana-wake:<pid>:<n>` (`CLIENT LIST` shows it),
//!   subscribed to `<prefix>wake`. Waiting calls register their record's digest in the
//!   process; a message wakes those of its record, which claim again at once. Clones of the
//!   store share the subscriber, which stops with the last of them.
//! - The subscriber sends `PING` every second. A connection that drops, or does not answer
//!   within a second, is replaced, after a pause from 50 ms doubling up to 5 s. Each time it
//!   subscribes and each time it drops, every waiting call reads its record again: finishes in
//!   between were not heard.
//! - Waiting calls poll besides (after 250 ms, then doubling up to one second), so while the
//!   subscriber is down, or a message is lost, they answer late but never miss the finish.
//!
//! **ACL.** The subscriber's user needs `SUBSCRIBE` and `PING`, the channel, and `CLIENT
//! SETNAME` to be named (without it the connection subscribes unnamed):
//!
//! ```text
//! ACL SETUSER ana-waiter on >secret resetchannels &ana:wake -@all +subscribe +ping +client|setname
//! ```
//!
//! The store's own user needs `PUBLISH` on the channel. A `PUBLISH` the server refuses never
//! fails the step: the waiting calls of other processes then poll.
//!
//! **Versions.** The subscriber speaks RESP3 (Redis 6 or later); on Redis 5 it never
//! subscribes and waiting calls poll. A store built with [`RedisRepository::new`] on a pool of
//! its own publishes, but its own waiting calls poll unless it is given a client with
//! [`with_subscriber`](RedisRepository::with_subscriber).
//!
//! **Redis Cluster polls.** A cluster store neither publishes nor subscribes: its waiting
//! calls poll. A `PUBLISH` on a cluster travels over the cluster bus to every node, so every
//! finish would cost every node; sharded pub/sub (`SPUBLISH`) would need a subscriber on each
//! master, moved along with the slots.
//!
//! ## Redis Cluster
//!
//! Each command and each script touches exactly one key, the record's, so every step runs on
//! the one node that owns the key's slot, and records spread over all slots. No hash tag is needed (one
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
mod wake;

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
