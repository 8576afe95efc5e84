//! # ana-core
//!
//! Make any operation idempotent: a retried request, a redelivered message or a double click
//! runs the work once, and every later call gets the first answer back.
//!
//! ```text
//!  Manager::call(op)
//!     │ 1. expired by its own reference time? ──────────────▶ Error::Expired (store untouched)
//!     │ 2. claim: ONE atomic step in the store
//!     │      ├─ record exists, other payload ───────────────▶ Error::PayloadMismatch
//!     │      ├─ Finished ───────────────────────────────────▶ replay the stored result
//!     │      ├─ expired ────────────────────────────────────▶ Error::Expired
//!     │      ├─ Running, timeout ahead (or none) ───────────▶ Error::StillRunning (never waits)
//!     │      └─ new / Ready / Failed / Running past timeout ─▶ this call holds a Lease
//!     │ 3. op.call(session): panics caught
//!     │ 4. finish, compare-and-set on the Lease (attempt N, claim number):
//!     ▼      Finished (result stored) · Failed (kind + message, counted) · Superseded · Expired
//! ```
//!
//! - [`Manager`] drives a call; [`Operation`] is the work (or [`operation`] for a closure).
//! - [`IdempotencyRepository`] is the storage contract: a claim gives a [`Lease`] (attempt
//!   number and claim number), and the finish of a record ([`RecordId`]) presents it:
//!   `complete` with the encoded result (or none, when it could not be encoded), `fail` with a
//!   [`Failure`] (its [`FailureKind`] and message). [`MemoryRepository`] is the in-process
//!   store; `ana-pg` (Postgres, the operation's writes in the same transaction as the record)
//!   and `ana-redis` are the others. Every store passes [`conformance`] (feature `test-utils`).
//! - [`Maintenance`] is the operator's side of a store, beside the contract: forget one
//!   record, count records by status, clean up. The `ana` command (crate `ana-cli`) runs it.
//! - [`TrackedOperation`] is the stored record: [`Status`], payload [`Fingerprint`], deadlines,
//!   result, or failure kind and error message, error count and the `attempt` number.
//! - [`Operation::timeout`] and [`Operation::expiration`] are `Option<Duration>`: `None` means
//!   "never".
//! - [`ReplayCache`] ([`Manager::with_replay_cache`]) answers repeated replays of Finished
//!   records from the process's memory, before step 2, with the same payload check.
//!
//! - Every call reports one [`CallOutcome`] (see [Observability](#observability)).
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use ana_core::{operation, Error, Manager, MemoryRepository, MemorySession};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager: Manager<String, String, MemorySession> = Manager::new(MemoryRepository::new());
//!
//! let send = |key: &str, body: &str| {
//!     operation("send-email", key, body.to_owned(), |_ctx: MemorySession| async {
//!         // ... send the email ...
//!         Ok::<_, std::io::Error>("queued".to_owned())
//!     })
//!     .timeout(Duration::from_secs(30))
//! };
//!
//! assert_eq!(manager.call(send("msg-1", "hello")).await?, "queued");
//! // A redelivery replays the answer without sending again.
//! assert!(manager.run(send("msg-1", "hello")).await?.is_replayed());
//! // The same key with another body is refused.
//! assert!(matches!(
//!     manager.call(send("msg-1", "bye")).await,
//!     Err(Error::PayloadMismatch { .. })
//! ));
//! # Ok(()) }
//! ```
//!
//! ## Observability
//!
//! Every call ends in exactly one [`CallOutcome`], reported three ways: as a `tracing` event
//! inside the call's `ana.call` span (fields `target`, `key`, `store`, `attempt`; feature
//! `tracing`, on by default, free when no subscriber listens), as `metrics` (feature
//! `metrics`), and to the [`Manager::on_event`] hook ([`Event`]). Levels: debug for executed
//! and replayed, info for the refusals, warn for superseded and an unavailable store, error
//! for a panic or a corrupt record. Payloads, results, credentials and scope values are never
//! reported; keys are a short hash unless [`Manager::with_raw_keys`] says otherwise.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `ana_calls_total` | counter | `target` (the call's label: a route, not a key), `outcome` |
//! | `ana_call_duration_seconds` | histogram | `outcome` |
//! | `ana_store_duration_seconds` | histogram | `store`, `op` (`claim`, `finish`) |
//! | `ana_in_flight` | gauge | attempts this process holds |
//! | `ana_replay_cache_hits_total`, `ana_replay_cache_misses_total` | counter | |
//!
//! With the `metrics` feature, `describe_metrics()` gives them their help text in the
//! installed recorder.
//!
//! ## Decisions where the contract is silent
//!
//! - Records keep a 128-bit payload [`Fingerprint`], never the payload.
//! - A failed attempt is recorded even past the expiration; its own error is returned.
//! - A dropped call fails its attempt from a background task ([`Manager::flush`] waits for
//!   those); without a Tokio runtime, the record's timeout frees it.
//! - The memory store never evicts a live record to make room: at capacity a new key is refused
//!   with [`RepositoryError::CapacityExceeded`].
//! - A result the codec cannot encode is recorded Finished all the same, without a result,
//!   and the key answers [`Error::Codec`] from then on: the work is done, and recording it
//!   Failed would let every retry do it again. A Finished record without a result means
//!   exactly that, in every store.

mod cache;
mod cleanup;
mod clock;
mod codec;
#[cfg(feature = "test-utils")]
pub mod conformance;
#[cfg(feature = "encryption")]
pub mod encryption;
mod error;
mod lease;
mod maintenance;
mod manager;
mod memory;
mod observe;
mod operation;
mod record;
mod repository;
mod retry;
mod step;
mod wake;

pub use cache::ReplayCache;
pub use cleanup::{CleanupConfig, CleanupHandle, CleanupReport, CleanupSteps, spawn_cleanup};
pub use clock::{Clock, ManualClock, SystemClock};
pub use codec::{BytesCodec, Codec, JsonCodec};
pub use error::Error;
pub use maintenance::{Cleaned, Forgotten, Maintenance, Stats};
pub use manager::{Attempt, Begun, Call, DEFAULT_MIN_TIMEOUT, Manager, Outcome};
pub use memory::{MemoryRepository, MemorySession};
#[cfg(feature = "metrics")]
pub use observe::describe_metrics;
pub use observe::{CallOutcome, Event, EventKind, ReportedKey};
pub use operation::{FnOperation, Operation, operation};
pub use record::{
    FailureKind, Fingerprint, FingerprintHasher, Json, Payload, Status, TrackedOperation,
    UnknownFailureKind, UnknownStatus,
};
pub use repository::{
    BoxError, Claim, ClaimRequest, Completion, DecryptError, Failure, IdempotencyRepository, Lease,
    RecordId, Renewal, RepositoryError, SharedRecordId,
};
pub use retry::FinishRetry;
pub use step::to_the_end;
pub use wake::{ListeningTask, Wakeups, Watch, record_digest};

/// Re-exported for store crates and users: the time type of every record.
pub use chrono;

// This crate's README runs as doc tests, so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
