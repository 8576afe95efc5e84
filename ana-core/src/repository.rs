//! The storage contract: [`IdempotencyRepository`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::record::{FailureKind, Fingerprint, Status, TrackedOperation};
use crate::wake::Watch;

/// A boxed error from a store's driver, kept as the source of a [`RepositoryError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a call asks of the store when it claims a record.
#[derive(Clone, Debug)]
pub struct ClaimRequest<'a> {
    /// The record's target.
    pub target: &'a str,
    /// The record's key.
    pub key: &'a str,
    /// Fingerprint of this call's payload.
    pub fingerprint: Fingerprint,
    /// This call's reference time, stored when the record is created.
    pub reference_time: DateTime<Utc>,
    /// How long a new attempt holds the record (`None`: until it finishes). The store adds it
    /// to its own clock's time of the claim.
    pub timeout: Option<Duration>,
    /// Absolute expiration (`reference_time + expiration`), stored when the record is created;
    /// a record taken over keeps the expiration it was created with.
    pub expiration: Option<DateTime<Utc>>,
}

/// The answer to a claim.
#[derive(Debug)]
pub enum Claim<S> {
    /// The record was created, or taken over (Ready, Failed, or Running past its timeout,
    /// same fingerprint, not expired): this call holds `lease` and runs the operation inside
    /// `session`.
    Acquired {
        /// The fencing token of this attempt, which its finish presents.
        lease: Lease,
        /// The context the operation runs in (a transaction for Postgres).
        session: S,
        /// The status of the record this claim took over (`Running` for a holder whose
        /// timeout had passed, `Failed` for a retry), `None` when it created the record.
        previous: Option<Status>,
    },
    /// Nothing was changed: the record as it stands, and the store's clock at the claim.
    Existing {
        /// The stored record.
        record: TrackedOperation,
        /// The store's time when the claim was evaluated, to compare the record's deadlines.
        now: DateTime<Utc>,
    },
}

/// A record's identity: `(target, key)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordId<'a> {
    /// The record's target.
    pub target: &'a str,
    /// The record's key.
    pub key: &'a str,
}

impl<'a> RecordId<'a> {
    /// The identity `(target, key)`.
    pub const fn new(target: &'a str, key: &'a str) -> Self {
        Self { target, key }
    }
}

/// A record's identity owned: target and key in one shared allocation, so that a clone (for a
/// request's extensions, a background task) copies neither.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SharedRecordId {
    /// The target, then the key.
    text: Arc<str>,
    /// Where the key starts in `text`.
    split: usize,
}

impl SharedRecordId {
    /// The identity `(target, key)`, copied once.
    pub fn new(target: &str, key: &str) -> Self {
        // Joined on the stack when it fits (keys are at most a few hundred bytes), so that the
        // `Arc` is the one allocation: `Arc<str>` is made from one `&str`.
        let mut joined = [0; 320];
        let len = target.len() + key.len();
        let text = match joined.get_mut(..len) {
            Some(buffer) => {
                let (head, tail) = buffer.split_at_mut(target.len());
                head.copy_from_slice(target.as_bytes());
                tail.copy_from_slice(key.as_bytes());
                // Two `&str` joined are UTF-8: the check passes.
                std::str::from_utf8(buffer)
                    .map_or_else(|_| Arc::from(format!("{target}{key}")), Arc::from)
            }
            None => Arc::from(format!("{target}{key}")),
        };
        Self {
            text,
            split: target.len(),
        }
    }

    /// The record's target.
    pub fn target(&self) -> &str {
        self.text.get(..self.split).unwrap_or_default()
    }

    /// The record's key.
    pub fn key(&self) -> &str {
        self.text.get(self.split..).unwrap_or_default()
    }

    /// The borrowed identity.
    pub fn id(&self) -> RecordId<'_> {
        RecordId::new(self.target(), self.key())
    }
}

impl fmt::Debug for SharedRecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedRecordId")
            .field("target", &self.target())
            .field("key", &self.key())
            .finish()
    }
}

/// The fencing token of one attempt, given by its claim and presented by its finish.
///
/// Both numbers are checked: `attempt` counts the attempts on the record (1 for the first,
/// +1 for each takeover) and is what users pass downstream; `claim` is a number the store
/// gives to no other claim of the record. The attempt alone is not enough: a record deleted
/// (expired, evicted) and created again, or restored, counts its attempts from 1 again, and an
/// earlier holder's late finish must not land on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The attempt number on the record.
    pub attempt: u64,
    /// The claim's own number in the store (a counter, a transaction id, the server's time).
    pub claim: u64,
}

/// Why an attempt failed, as [`IdempotencyRepository::fail`] records it: the kind, which
/// code matches on, and the message, which people read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure<'a> {
    /// What went wrong.
    pub kind: FailureKind,
    /// The text stored on the record: the operation's error, the panic's message, or the
    /// kind's [default message](FailureKind::message).
    pub message: &'a str,
}

impl<'a> Failure<'a> {
    /// A failure of `kind` with `message`.
    pub const fn new(kind: FailureKind, message: &'a str) -> Self {
        Self { kind, message }
    }
}

impl From<FailureKind> for Failure<'static> {
    /// A failure of `kind` with its default message.
    fn from(kind: FailureKind) -> Self {
        Self::new(kind, kind.message())
    }
}

/// How finishing an attempt went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// The record took the new state (and, for a transactional store, the session committed).
    Done,
    /// Another attempt took the record over: nothing was written and the session rolled back.
    Superseded,
    /// The record's expiration passed before the attempt finished: the session rolled back and
    /// the record was marked Failed ([`FailureKind::Expired`]).
    Expired,
}

/// How renewing a lease went ([`IdempotencyRepository::renew`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Renewal {
    /// The record is still Running under the lease; its timeout is now `until` (the store's
    /// clock).
    Renewed {
        /// The new timeout.
        until: DateTime<Utc>,
    },
    /// The lease no longer holds the record (finished, failed, taken over, deleted): nothing
    /// was changed.
    Lost,
    /// The store does not renew leases: the attempt keeps the timeout of its claim.
    Unsupported,
}

/// A store failure. The operation is never run when the claim failed, and storage faults are
/// never read as "no record".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepositoryError {
    /// The store could not be reached (connection refused, pool exhausted, timed out).
    #[error("the idempotency store is unavailable")]
    Unavailable(#[source] BoxError),
    /// The store answered with an error.
    #[error("the idempotency store failed")]
    Backend(#[source] BoxError),
    /// A stored record could not be read back.
    #[error("an idempotency record is corrupt: {detail}")]
    Corrupt {
        /// What was wrong with it.
        detail: String,
    },
    /// A bounded store is full of live records.
    #[error("the idempotency store is full ({capacity} records)")]
    CapacityExceeded {
        /// The store's capacity.
        capacity: usize,
    },
    /// The session was used after the attempt finished, or is otherwise unusable.
    #[error("the operation's session is closed")]
    SessionClosed,
    /// A stored result did not decrypt or authenticate (see `ana_core::encryption`, feature
    /// `encryption`): a wrong or missing key, or bytes changed or moved from another record.
    /// The record is left as it is (Finished): it is never replayed, and never run again.
    #[error("the stored result of {target}/{key} could not be decrypted")]
    Undecryptable {
        /// The record's target.
        target: String,
        /// The record's key.
        key: String,
        /// Why.
        #[source]
        source: DecryptError,
    },
}

/// Why a stored result could not be decrypted, the source of
/// [`RepositoryError::Undecryptable`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// The bytes do not start with the encrypted format's version byte: a result stored
    /// before encryption was turned on, or not by ana.
    #[error("the stored result is not in an encrypted format this version reads")]
    NotEncrypted,
    /// Shorter than the format's header and tag.
    #[error("the stored result is truncated ({len} bytes)")]
    Truncated {
        /// Its length.
        len: usize,
    },
    /// Sealed under a key id the keyring does not hold (a key removed too early).
    #[error("the stored result was encrypted under key {id}, which the keyring does not hold")]
    UnknownKey {
        /// The key id written in the stored bytes.
        id: u32,
    },
    /// The authentication tag does not verify: another key under the same id, bytes changed,
    /// or a result moved from another record (its identity is the associated data).
    #[error("the stored result does not authenticate under key {id}")]
    Unauthentic {
        /// The key id written in the stored bytes.
        id: u32,
    },
}

impl RepositoryError {
    /// Whether retrying later may succeed (the store is down or full), as opposed to a
    /// corrupt or undecryptable record or a misuse.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Backend(_) | Self::CapacityExceeded { .. }
        )
    }
}

/// A store of [`TrackedOperation`]s.
///
/// Every method is one atomic step in storage:
/// - [`claim`](Self::claim) creates the record, or takes over a record that may run again
///   (exactly when [`TrackedOperation::is_claimable_at`] holds on the store's clock), or returns
///   it untouched. Never check-then-insert, never wait on another holder. A record it creates
///   or takes over gets a fresh [`Lease`].
/// - [`complete`](Self::complete) and [`fail`](Self::fail) are compare-and-set on the lease:
///   they change the record only while it is Running with that lease's attempt *and* claim
///   number. The claim number tells a record created again under its identity (which counts
///   its attempts from 1 again) from the one the lease was given for; the conformance suite's
///   `recreated_record_rejects_the_earlier_holder` checks exactly that. A record that no claim
///   of the store made (restored, seeded) is finished by no lease.
/// - A failure is stored as its [`FailureKind`] beside its message
///   ([`TrackedOperation::failure`], [`TrackedOperation::error`]); a run whose result could not
///   be encoded is stored Finished without a result ([`TrackedOperation::result`] `None`).
///
/// - [`renew`](Self::renew) is a compare-and-set on the lease too: it moves the timeout of a
///   record Running under that lease to the store's time plus the given lease, and changes
///   nothing otherwise.
///
/// The session given to `complete` and `fail` is the one the claim of that lease returned, for
/// the record `id` it claimed.
///
/// Run the conformance suite (`ana_core::conformance`, feature `test-utils`) against any new
/// store.
pub trait IdempotencyRepository: Send + Sync + 'static {
    /// The context an operation runs in: a transaction for a transactional store, a plain
    /// handle otherwise. Clones refer to the same session.
    type Session: Clone + Send + Sync + 'static;

    /// Creates, takes over or returns the record for `request`, atomically.
    fn claim(
        &self,
        request: &ClaimRequest<'_>,
    ) -> impl Future<Output = Result<Claim<Self::Session>, RepositoryError>> + Send;

    /// Marks the attempt Finished (and commits the session with it), unless the lease lost the
    /// record or the record expired. `result` is the encoded result, or `None` when the run is
    /// done but its result could not be encoded: the record turns Finished all the same,
    /// without a result, so that the work is never done again.
    fn complete(
        &self,
        session: Self::Session,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> impl Future<Output = Result<Completion, RepositoryError>> + Send;

    /// [`claim`](Self::claim) answered at once, by a store that needs no I/O for it (the
    /// memory store): the manager tries it first, and awaits `claim` only on `None` (the
    /// default). An answer here must be the one `claim` would give.
    fn claim_now(
        &self,
        request: &ClaimRequest<'_>,
    ) -> Option<Result<Claim<Self::Session>, RepositoryError>> {
        let _ = request;
        None
    }

    /// [`complete`](Self::complete) answered at once, as [`claim_now`](Self::claim_now): the
    /// manager tries it first, and awaits `complete` (tried again after transient errors) only
    /// on `None` (the default). An answer here is final: it is not tried again.
    fn complete_now(
        &self,
        session: &Self::Session,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Option<Result<Completion, RepositoryError>> {
        let _ = (session, id, lease, result);
        None
    }

    /// Rolls the session back and marks the attempt Failed with `failure` (its kind and its
    /// message), counting it, unless the lease lost the record ([`Completion::Superseded`]).
    /// Never answers [`Completion::Expired`]: a failure is recorded even past the expiration.
    fn fail(
        &self,
        session: Self::Session,
        id: RecordId<'_>,
        lease: Lease,
        failure: Failure<'_>,
    ) -> impl Future<Output = Result<Completion, RepositoryError>> + Send;

    /// Extends the attempt `lease` holds on `id`: while the record is Running under that
    /// lease (its attempt and claim number), its timeout becomes the store's current time
    /// plus `lease_for`; otherwise nothing changes ([`Renewal::Lost`]). A holder renews while
    /// its operation runs, so a live slow operation is not taken over, and a crashed holder's
    /// record frees one `lease_for` after its last renewal.
    ///
    /// The default answers [`Renewal::Unsupported`]: the attempt keeps its claim's timeout.
    /// Every store of this workspace renews, and the conformance suite checks it.
    fn renew(
        &self,
        id: RecordId<'_>,
        lease: Lease,
        lease_for: Duration,
    ) -> impl Future<Output = Result<Renewal, RepositoryError>> + Send {
        let _ = (id, lease, lease_for);
        std::future::ready(Ok(Renewal::Unsupported))
    }

    /// A [`Watch`] of `id`, woken when the record may have changed (finished, failed): what a
    /// call waiting on another holder listens to between its polls. Start watching *before*
    /// reading the record, so a change in between is not missed.
    ///
    /// The default is [`Watch::polling`]: the waiting call polls the store alone, with a
    /// backoff. A store that can push (in process, `LISTEN`/`NOTIFY`, pub/sub) returns a
    /// watch of its [`Wakeups`](crate::Wakeups).
    fn watch(&self, id: RecordId<'_>) -> Watch {
        let _ = id;
        Watch::polling()
    }

    /// The store's name in spans, events and metric labels (`memory`, `postgres`, `redis`).
    fn name(&self) -> &'static str {
        "custom"
    }

    /// Reads a record, for inspection and tests.
    fn get(
        &self,
        target: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<TrackedOperation>, RepositoryError>> + Send;
}
