//! [`MemoryRepository`]: the embedded store, for tests, single-process services and queues.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::{Clock, SystemClock};
use crate::maintenance::{Cleaned, Forgotten, Maintenance, Stats};
use crate::record::{FailureKind, Fingerprint, Status, TrackedOperation};
use crate::repository::{
    Claim, ClaimRequest, Completion, Failure, IdempotencyRepository, Lease, RecordId, Renewal,
    RepositoryError,
};
use crate::wake::{Wakeups, Watch, record_digest};

const DEFAULT_CAPACITY: usize = 1_000_000;
const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
const NONE: i64 = i64::MIN;
/// The highest attempt number kept; later takeovers keep it (the lease's claim number still
/// fences each of them).
const MAX_ATTEMPT: u64 = u32::MAX as u64;

/// The session of a [`MemoryRepository`] attempt: its attempt number, for the operation.
///
/// There is no transaction: what the operation writes elsewhere is not undone when the attempt
/// fails. Pass [`attempt`](Self::attempt) to downstream systems as a fencing token if they can
/// reject stale writers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MemorySession {
    attempt: u64,
    /// The record's identity, computed once by the claim for the finish.
    id: Id,
}

impl fmt::Debug for MemorySession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySession")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl MemorySession {
    /// The number of this attempt (1 for the first, +1 for each takeover): a fencing token
    /// for downstream systems.
    pub fn attempt(&self) -> u64 {
        self.attempt
    }
}

/// An in-process [`IdempotencyRepository`]: sharded, bounded, with expired records evicted.
///
/// - Claim, complete and fail each take one shard lock once; nothing awaits under a lock.
/// - Deadlines are compared on the repository's [`Clock`] (the system clock unless
///   [`with_clock`](Self::with_clock) says otherwise).
/// - Expired records are swept from a shard at most once per sweep interval (default one
///   second), on the first claim that reaches it, and by [`evict_expired`](Self::evict_expired).
///   A Running record stays past its expiration until its holder finishes it or its timeout
///   passes: removed under a holder still at work, it would let a new call run beside it.
/// - Every claim gets a number of its own in the store (a counter; the [`Lease`]'s `claim`),
///   which its finish checks besides the attempt: a record created again under an identity
///   (after a sweep, by [`restore`](Self::restore)) counts its attempts from 1 again, and an
///   earlier holder's late finish must not land on it. A restored record has no claim number
///   (0), and no lease finishes it.
/// - A Failed record keeps its [`FailureKind`] beside its message; a Finished record whose
///   result could not be encoded keeps no result.
/// - At capacity, expired records are swept at once; when every record is still live, a new
///   key gets [`RepositoryError::CapacityExceeded`]. Live records are never evicted: that
///   would let a retried request run twice.
/// - Compact: a record is one allocation (a fixed header, then its result or error), and its
///   identity is kept as a 128-bit digest of `(target, key)` rather than the strings: about
///   340 bytes for a record with a 200-byte HTTP response. Two identities sharing a digest
///   would need a SHA-256 collision on 128 bits; even then the payload fingerprint is
///   checked before anything is replayed.
/// - [`Maintenance`]: `forget` decides and deletes under the record's shard lock; `cleanup`
///   marks Running records past their timeout Failed, then evicts expired records as a sweep
///   does, each up to its limit; `stats` counts each shard under its lock in turn.
///
/// Clones share the same records.
#[derive(Clone)]
pub struct MemoryRepository {
    shared: Arc<Shared>,
    capacity: usize,
    clock: Arc<dyn Clock>,
    sweep_interval: Duration,
}

struct Shared {
    shards: Box<[Mutex<Shard>]>,
    len: AtomicUsize,
    /// The last claim number given (see [`Lease::claim`]).
    claims: AtomicU64,
    /// The calls waiting on a record, woken by its finish.
    wakeups: Wakeups,
}

struct Shard {
    /// Keyed by identity inline: a lookup or a rehash reads no record's allocation (on a
    /// store of many keys, each such read is a cache miss).
    records: HashMap<Id, Record, BuildHasherDefault<IdHasher>>,
    next_sweep: i64,
    /// The first instant a record of the shard may be evicted ([`Header::evictable_from`];
    /// `i64::MAX` when none may be): a sweep before it would find nothing to evict, so none is
    /// made.
    earliest_eviction: i64,
}

impl Default for Shard {
    fn default() -> Self {
        Self {
            records: HashMap::default(),
            next_sweep: 0,
            earliest_eviction: i64::MAX,
        }
    }
}

impl Shard {
    fn note_evictable(&mut self, from: i64) {
        self.earliest_eviction = earlier(self.earliest_eviction, from);
    }
}

/// The earlier of two instants, [`NONE`] standing for "never".
fn earlier(earliest: i64, from: i64) -> i64 {
    if from == NONE {
        earliest
    } else {
        earliest.min(from)
    }
}

impl Default for MemoryRepository {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRepository")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .field("clock", &self.clock)
            .field("sweep_interval", &self.sweep_interval)
            .finish()
    }
}

impl MemoryRepository {
    /// An empty store holding at most 1,000,000 records.
    pub fn new() -> Self {
        let shards = (std::thread::available_parallelism().map_or(4, usize::from) * 8)
            .next_power_of_two()
            .max(16);
        Self {
            shared: Arc::new(Shared {
                shards: (0..shards).map(|_| Mutex::default()).collect(),
                len: AtomicUsize::new(0),
                claims: AtomicU64::new(0),
                wakeups: Wakeups::new(),
            }),
            capacity: DEFAULT_CAPACITY,
            clock: Arc::new(SystemClock),
            sweep_interval: DEFAULT_SWEEP_INTERVAL,
        }
    }

    /// Sets the most records the store holds.
    #[must_use]
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Sets the clock deadlines are compared on.
    #[must_use]
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Sets how often a shard is swept for expired records.
    #[must_use]
    pub fn with_sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// How many records the store holds.
    pub fn len(&self) -> usize {
        self.shared.len.load(Ordering::Relaxed)
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every record whose expiration has passed; returns how many.
    pub fn evict_expired(&self) -> usize {
        let now = micros(self.clock.now());
        self.shared
            .shards
            .iter()
            .map(|shard| self.sweep(&mut lock(shard), now))
            .sum()
    }

    /// Stores `record` as it is, replacing any record with its identity: for tests that need
    /// a record in a given state, and for loading records kept elsewhere. Attempt numbers
    /// above `u32::MAX` are kept as `u32::MAX`.
    pub fn restore(&self, record: TrackedOperation) {
        let id = identity(&record.target, &record.key);
        let no_result = record.status == Status::Finished && record.result.is_none();
        let data = match record.status {
            Status::Finished => record.result.unwrap_or_default(),
            _ => record.error.map(String::into_bytes).unwrap_or_default(),
        };
        let header = Header {
            fingerprint: record.fingerprint,
            status: record.status,
            failure: record.failure,
            no_result,
            error_count: record.error_count,
            attempt: record.attempt.min(MAX_ATTEMPT),
            // No claim of this store made it: no session of this store finishes it.
            claim: 0,
            reference_time: micros(record.reference_time),
            started_at: record.started_at.map_or(NONE, micros),
            timeout: record.timeout.map_or(NONE, micros),
            expiration: record.expiration.map_or(NONE, micros),
            finished_at: record.finished_at.map_or(NONE, micros),
        };
        let mut shard = self.shard(&id);
        shard.note_evictable(header.evictable_from());
        if shard
            .records
            .insert(id, Record::new(header, &data))
            .is_none()
        {
            self.shared.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn shard(&self, id: &Id) -> MutexGuard<'_, Shard> {
        // The table hashes the first half of the digest; the shard comes from the second.
        let index = u64::from_le_bytes(half(id, 8)) as usize & (self.shared.shards.len() - 1);
        lock(&self.shared.shards[index])
    }

    fn sweep(&self, shard: &mut Shard, now: i64) -> usize {
        let before = shard.records.len();
        let mut earliest = i64::MAX;
        shard.records.retain(|_, record| {
            let header = record.header();
            let keep = !header.is_evictable_at(now);
            if keep {
                earliest = earlier(earliest, header.evictable_from());
            }
            keep
        });
        shard.earliest_eviction = earliest;
        shard.next_sweep = now.saturating_add(micros_of(self.sweep_interval));
        let removed = before - shard.records.len();
        self.shared.len.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// One claim attempt; `Ok(None)` asks the caller to retry after a capacity sweep.
    fn try_claim(
        &self,
        request: &ClaimRequest<'_>,
        id: &Id,
        now: i64,
        may_sweep_all: bool,
    ) -> Result<Option<Claim<MemorySession>>, RepositoryError> {
        let mut shard = self.shard(id);
        if shard.next_sweep == 0 {
            // First use: the first sweep comes one interval from now.
            shard.next_sweep = now.saturating_add(micros_of(self.sweep_interval));
        } else if now >= shard.next_sweep && now >= shard.earliest_eviction {
            self.sweep(&mut shard, now);
        }
        let timeout = request
            .timeout
            .map_or(NONE, |timeout| now.saturating_add(micros_of(timeout)));
        if let Some(record) = shard.records.get_mut(id) {
            let header = record.header();
            if !header.is_claimable_at(request.fingerprint, now) {
                return Ok(Some(Claim::Existing {
                    record: record.to_record(request.target, request.key),
                    now: time(now).unwrap_or_default(),
                }));
            }
            let attempt = header.attempt.saturating_add(1).min(MAX_ATTEMPT);
            let claim = self.next_claim();
            *record = Record::new(
                Header {
                    status: Status::Running,
                    no_result: false,
                    attempt,
                    claim,
                    started_at: now,
                    timeout,
                    ..header
                },
                record.data(),
            );
            let previous = Some(header.status);
            return Ok(Some(acquired(Lease { attempt, claim }, id, previous)));
        }
        if self.len() >= self.capacity {
            if may_sweep_all {
                drop(shard);
                self.evict_expired();
                return Ok(None);
            }
            return Err(RepositoryError::CapacityExceeded {
                capacity: self.capacity,
            });
        }
        let claim = self.next_claim();
        let header = Header {
            fingerprint: request.fingerprint,
            status: Status::Running,
            failure: None,
            no_result: false,
            error_count: 0,
            attempt: 1,
            claim,
            reference_time: micros(request.reference_time),
            started_at: now,
            timeout,
            expiration: request.expiration.map_or(NONE, micros),
            finished_at: NONE,
        };
        shard.note_evictable(header.evictable_from());
        shard.records.insert(*id, Record::new(header, &[]));
        self.shared.len.fetch_add(1, Ordering::Relaxed);
        Ok(Some(acquired(Lease { attempt: 1, claim }, id, None)))
    }

    /// [`IdempotencyRepository::claim`], which needs no I/O.
    fn claim_in_memory(
        &self,
        request: &ClaimRequest<'_>,
    ) -> Result<Claim<MemorySession>, RepositoryError> {
        let now = micros(self.clock.now());
        let id = identity(request.target, request.key);
        match self.try_claim(request, &id, now, true)? {
            Some(claim) => Ok(claim),
            None => {
                self.try_claim(request, &id, now, false)?
                    .ok_or(RepositoryError::CapacityExceeded {
                        capacity: self.capacity,
                    })
            }
        }
    }

    /// [`IdempotencyRepository::complete`], which needs no I/O.
    fn complete_in_memory(
        &self,
        session: MemorySession,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Completion {
        self.finish(session, lease, Completion::Expired, |header, now| {
            if header.is_expired_at(now) {
                let expired = FailureKind::Expired;
                let failed = Header {
                    status: Status::Failed,
                    failure: Some(expired),
                    error_count: header.error_count.saturating_add(1),
                    ..header
                };
                return (failed, expired.message().as_bytes(), Completion::Expired);
            }
            let finished = Header {
                status: Status::Finished,
                failure: None,
                no_result: result.is_none(),
                finished_at: now,
                ..header
            };
            (finished, result.unwrap_or_default(), Completion::Done)
        })
    }

    fn next_claim(&self) -> u64 {
        self.shared.claims.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Replaces the record with `finish`'s header and data while `lease` still owns it.
    /// `session` comes from the claim of `lease` and carries its record's identity. A
    /// complete (`missing` is [`Completion::Expired`]) that finds the record Finished by its
    /// own lease (tried again after a lost answer) is done.
    fn finish<'d>(
        &self,
        session: MemorySession,
        lease: Lease,
        missing: Completion,
        finish: impl FnOnce(Header, i64) -> (Header, &'d [u8], Completion),
    ) -> Completion {
        let id = session.id;
        let now = micros(self.clock.now());
        let mut shard = self.shard(&id);
        let Some(record) = shard.records.get_mut(&id) else {
            // Removed by a sweep (expired, no holder at work on it) or forgotten by force.
            return missing;
        };
        let header = record.header();
        // Claim 0 is no claim's: a restored record is finished by no lease.
        let held =
            header.attempt == lease.attempt && header.claim == lease.claim && header.claim != 0;
        if held && header.status == Status::Finished && missing == Completion::Expired {
            return Completion::Done;
        }
        if !header.is_held_by(lease) {
            return Completion::Superseded;
        }
        let (header, data, completion) = finish(header, now);
        *record = Record::new(header, data);
        // No longer held: evictable from its expiration.
        shard.note_evictable(header.evictable_from());
        drop(shard);
        self.shared
            .wakeups
            .wake_digest(&Fingerprint::from_bytes(id));
        completion
    }
}

impl IdempotencyRepository for MemoryRepository {
    type Session = MemorySession;

    fn name(&self) -> &'static str {
        "memory"
    }

    async fn claim(
        &self,
        request: &ClaimRequest<'_>,
    ) -> Result<Claim<MemorySession>, RepositoryError> {
        self.claim_in_memory(request)
    }

    /// The claim needs no I/O: the manager takes it without a boxed future.
    fn claim_now(
        &self,
        request: &ClaimRequest<'_>,
    ) -> Option<Result<Claim<MemorySession>, RepositoryError>> {
        Some(self.claim_in_memory(request))
    }

    /// `id` is not read: `session` carries the identity its claim computed.
    async fn complete(
        &self,
        session: MemorySession,
        _id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Result<Completion, RepositoryError> {
        Ok(self.complete_in_memory(session, lease, result))
    }

    /// The finish needs no I/O: the manager takes it without a boxed future.
    fn complete_now(
        &self,
        session: &MemorySession,
        _id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Option<Result<Completion, RepositoryError>> {
        Some(Ok(self.complete_in_memory(*session, lease, result)))
    }

    /// `id` is not read: `session` carries the identity its claim computed.
    async fn fail(
        &self,
        session: MemorySession,
        _id: RecordId<'_>,
        lease: Lease,
        failure: Failure<'_>,
    ) -> Result<Completion, RepositoryError> {
        Ok(
            self.finish(session, lease, Completion::Superseded, |header, _| {
                let failed = Header {
                    status: Status::Failed,
                    failure: Some(failure.kind),
                    error_count: header.error_count.saturating_add(1),
                    ..header
                };
                (failed, failure.message.as_bytes(), Completion::Done)
            }),
        )
    }

    async fn renew(
        &self,
        id: RecordId<'_>,
        lease: Lease,
        lease_for: Duration,
    ) -> Result<Renewal, RepositoryError> {
        let now = micros(self.clock.now());
        let id = identity(id.target, id.key);
        let mut shard = self.shard(&id);
        let Some(record) = shard.records.get_mut(&id) else {
            return Ok(Renewal::Lost);
        };
        let header = record.header();
        if !header.is_held_by(lease) {
            return Ok(Renewal::Lost);
        }
        let timeout = now.saturating_add(micros_of(lease_for));
        *record = Record::new(Header { timeout, ..header }, record.data());
        Ok(time(timeout).map_or(Renewal::Lost, |until| Renewal::Renewed { until }))
    }

    fn watch(&self, id: RecordId<'_>) -> Watch {
        self.shared.wakeups.watch(id)
    }

    async fn get(
        &self,
        target: &str,
        key: &str,
    ) -> Result<Option<TrackedOperation>, RepositoryError> {
        let id = identity(target, key);
        let shard = self.shard(&id);
        Ok(shard
            .records
            .get(&id)
            .map(|record| record.to_record(target, key)))
    }
}

/// Each method takes one shard lock at a time: `forget` one, `stats` and `cleanup` each shard
/// in turn (so their counts are not one snapshot of the whole store).
impl Maintenance for MemoryRepository {
    async fn forget(&self, id: RecordId<'_>, force: bool) -> Result<Forgotten, RepositoryError> {
        let now = micros(self.clock.now());
        let id = identity(id.target, id.key);
        let mut shard = self.shard(&id);
        let Some(record) = shard.records.get(&id) else {
            return Ok(Forgotten::NotFound);
        };
        let header = record.header();
        if !force && header.is_held_at(now) {
            return Ok(Forgotten::Held {
                timeout: time(header.timeout),
            });
        }
        // The shard's earliest eviction stays a lower bound: nothing to update.
        shard.records.remove(&id);
        self.shared.len.fetch_sub(1, Ordering::Relaxed);
        Ok(Forgotten::Deleted)
    }

    async fn stats(&self) -> Result<Stats, RepositoryError> {
        let now = micros(self.clock.now());
        let mut stats = Stats::default();
        for shard in &self.shared.shards {
            for record in lock(shard).records.values() {
                let header = record.header();
                stats.count(header.status, 1);
                stats.timed_out += u64::from(header.is_timed_out_at(now));
                stats.expired += u64::from(header.is_expired_at(now));
            }
        }
        Ok(stats)
    }

    /// Fails first, then deletes: a timed-out record that has expired goes in one call.
    async fn cleanup(&self, limit: u32) -> Result<Cleaned, RepositoryError> {
        let now = micros(self.clock.now());
        let limit = u64::from(limit);
        let mut cleaned = Cleaned::default();
        for shard in &self.shared.shards {
            if cleaned.failed >= limit && cleaned.deleted >= limit {
                break;
            }
            let mut shard = lock(shard);
            let left = usize::try_from(limit - cleaned.failed).unwrap_or(usize::MAX);
            let timed_out: Vec<Id> = shard
                .records
                .iter()
                .filter(|(_, record)| record.header().is_timed_out_at(now))
                .map(|(id, _)| *id)
                .take(left)
                .collect();
            for id in timed_out {
                let Some(record) = shard.records.get_mut(&id) else {
                    continue;
                };
                let header = record.header();
                let timed_out = FailureKind::TimedOut;
                let failed = Header {
                    status: Status::Failed,
                    failure: Some(timed_out),
                    error_count: header.error_count.saturating_add(1),
                    ..header
                };
                *record = Record::new(failed, timed_out.message().as_bytes());
                shard.note_evictable(failed.evictable_from());
                cleaned.failed += 1;
            }
            let mut left = limit - cleaned.deleted;
            let before = shard.records.len();
            shard.records.retain(|_, record| {
                let evict = left > 0 && record.header().is_evictable_at(now);
                left -= u64::from(evict);
                !evict
            });
            let removed = before - shard.records.len();
            self.shared.len.fetch_sub(removed, Ordering::Relaxed);
            cleaned.deleted += removed as u64;
        }
        Ok(cleaned)
    }
}

/// A record's identity: 128 bits of SHA-256 over the length-framed target and key.
type Id = [u8; 16];

/// A record's fixed-size fields, times as microseconds since the epoch ([`NONE`]: unset).
#[derive(Clone, Copy)]
struct Header {
    fingerprint: Fingerprint,
    status: Status,
    /// The last failure's kind (read while Failed).
    failure: Option<FailureKind>,
    /// Finished without a result: it could not be encoded.
    no_result: bool,
    error_count: u32,
    attempt: u64,
    /// The claim that made this attempt (0: restored).
    claim: u64,
    reference_time: i64,
    started_at: i64,
    timeout: i64,
    expiration: i64,
    finished_at: i64,
}

impl Header {
    /// Running under `lease`. Claim 0 is no claim's: a restored record is held by no lease.
    fn is_held_by(&self, lease: Lease) -> bool {
        self.attempt == lease.attempt
            && self.claim == lease.claim
            && self.claim != 0
            && self.status == Status::Running
    }

    fn is_expired_at(&self, now: i64) -> bool {
        self.expiration != NONE && now > self.expiration
    }

    /// The first instant a sweep may evict the record ([`NONE`]: not as it stands): once it
    /// has expired, and for a Running record not before its timeout, when its holder may be
    /// at work no more (never without a timeout, until the holder is done with it: a new
    /// record would let a second call run beside it).
    fn evictable_from(&self) -> i64 {
        match (self.status, self.expiration, self.timeout) {
            (_, NONE, _) | (Status::Running, _, NONE) => NONE,
            (Status::Running, expiration, timeout) => expiration.saturating_add(1).max(timeout),
            (_, expiration, _) => expiration.saturating_add(1),
        }
    }

    /// Running, and its holder may still be at work: no timeout, or one still ahead.
    fn is_held_at(&self, now: i64) -> bool {
        self.status == Status::Running && (self.timeout == NONE || now < self.timeout)
    }

    /// Running past its timeout: the next claim takes it over.
    fn is_timed_out_at(&self, now: i64) -> bool {
        self.status == Status::Running && self.timeout != NONE && now >= self.timeout
    }

    fn is_evictable_at(&self, now: i64) -> bool {
        let from = self.evictable_from();
        from != NONE && now >= from
    }

    /// [`TrackedOperation::is_claimable_at`] on the compact form.
    fn is_claimable_at(&self, fingerprint: Fingerprint, now: i64) -> bool {
        self.fingerprint == fingerprint
            && !self.is_expired_at(now)
            && match self.status {
                Status::Ready | Status::Failed => true,
                Status::Running => self.timeout != NONE && now >= self.timeout,
                Status::Finished => false,
            }
    }
}

// Layout of a record's single allocation.
const FINGERPRINT: usize = 0;
/// One byte: the status in bits 0-1, the failure kind in bits 2-6 ([`failure_code`]), and bit 7
/// set on a Finished record without a result.
const STATUS: usize = FINGERPRINT + Fingerprint::LEN;
const ERROR_COUNT: usize = STATUS + 1;
// The attempt takes four bytes (claims saturate it at `MAX_ATTEMPT`): every stored key pays
// for each byte of the header.
const ATTEMPT: usize = ERROR_COUNT + 4;
const CLAIM: usize = ATTEMPT + 4;
const TIMES: usize = CLAIM + 8;
const DATA: usize = TIMES + 5 * 8;

/// One stored record in one allocation: header, then the result (Finished) or the error
/// message (Failed).
struct Record(Box<[u8]>);

impl Record {
    fn new(header: Header, data: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(DATA + data.len());
        bytes.extend_from_slice(header.fingerprint.as_bytes());
        let status: u8 = match header.status {
            Status::Ready => 0,
            Status::Running => 1,
            Status::Finished => 2,
            Status::Failed => 3,
        };
        let no_result = if header.no_result { NO_RESULT } else { 0 };
        bytes.push(status | (failure_code(header.failure) << 2) | no_result);
        bytes.extend_from_slice(&header.error_count.to_le_bytes());
        let attempt = u32::try_from(header.attempt).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&attempt.to_le_bytes());
        bytes.extend_from_slice(&header.claim.to_le_bytes());
        for time in [
            header.reference_time,
            header.started_at,
            header.timeout,
            header.expiration,
            header.finished_at,
        ] {
            bytes.extend_from_slice(&time.to_le_bytes());
        }
        bytes.extend_from_slice(data);
        Self(bytes.into_boxed_slice())
    }

    fn data(&self) -> &[u8] {
        self.0.get(DATA..).unwrap_or_default()
    }

    fn header(&self) -> Header {
        let bytes = &self.0;
        let time = |index: usize| i64::from_le_bytes(half(bytes, TIMES + 8 * index));
        let flags = bytes.get(STATUS).copied().unwrap_or(3);
        Header {
            fingerprint: Fingerprint::from_bytes(array(bytes, FINGERPRINT)),
            status: match flags & 3 {
                0 => Status::Ready,
                1 => Status::Running,
                2 => Status::Finished,
                _ => Status::Failed,
            },
            failure: failure_of((flags & !NO_RESULT) >> 2),
            no_result: flags & NO_RESULT != 0,
            error_count: u32::from_le_bytes(array(bytes, ERROR_COUNT)),
            attempt: u64::from(u32::from_le_bytes(array(bytes, ATTEMPT))),
            claim: u64::from_le_bytes(half(bytes, CLAIM)),
            reference_time: time(0),
            started_at: time(1),
            timeout: time(2),
            expiration: time(3),
            finished_at: time(4),
        }
    }

    fn to_record(&self, target: &str, key: &str) -> TrackedOperation {
        let header = self.header();
        let data = self.data();
        TrackedOperation {
            target: target.to_owned(),
            key: key.to_owned(),
            status: header.status,
            fingerprint: header.fingerprint,
            reference_time: time(header.reference_time).unwrap_or_default(),
            started_at: time(header.started_at),
            timeout: time(header.timeout),
            expiration: time(header.expiration),
            finished_at: time(header.finished_at),
            result: (header.status == Status::Finished && !header.no_result).then(|| data.to_vec()),
            error: (header.status == Status::Failed && !data.is_empty())
                .then(|| String::from_utf8_lossy(data).into_owned()),
            failure: header.failure.filter(|_| header.status == Status::Failed),
            error_count: header.error_count,
            attempt: header.attempt,
        }
    }
}

/// For keys that are already uniformly distributed digests: an [`Id`] hashes to its first
/// eight bytes, a `u64` (the replay cache's SipHash keys) to itself.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for (index, byte) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*byte) << (8 * index);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write_usize(&mut self, _length_prefix: usize) {}
}

/// `N` bytes of `bytes` from `at` (zeros past the end; records are built with full headers).
fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    if let Some(slice) = bytes.get(at..at + N) {
        out.copy_from_slice(slice);
    }
    out
}

fn half(bytes: &[u8], at: usize) -> [u8; 8] {
    array(bytes, at)
}

fn acquired(lease: Lease, id: &Id, previous: Option<Status>) -> Claim<MemorySession> {
    Claim::Acquired {
        lease,
        previous,
        session: MemorySession {
            attempt: lease.attempt,
            id: *id,
        },
    }
}

/// Bit 7 of the status byte: a Finished record without a result.
const NO_RESULT: u8 = 0x80;

/// A failure kind in the status byte's bits 2-6 (0: none).
fn failure_code(kind: Option<FailureKind>) -> u8 {
    match kind {
        None => 0,
        Some(FailureKind::Error) => 1,
        Some(FailureKind::Panic) => 2,
        Some(FailureKind::Cancelled) => 3,
        Some(FailureKind::TimedOut) => 4,
        Some(FailureKind::Expired) => 5,
        Some(FailureKind::BeginFailed) => 6,
        Some(FailureKind::CommitFailed) => 7,
    }
}

fn failure_of(code: u8) -> Option<FailureKind> {
    FailureKind::ALL
        .iter()
        .copied()
        .find(|kind| failure_code(Some(*kind)) == code)
}

fn identity(target: &str, key: &str) -> Id {
    *record_digest(RecordId::new(target, key)).as_bytes()
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // No code that can panic runs under the lock; a poisoned shard is still consistent.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn micros_of(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn time(micros: i64) -> Option<DateTime<Utc>> {
    (micros != NONE)
        .then(|| DateTime::from_timestamp_micros(micros))
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::record::Payload;

    const MINUTE: Duration = Duration::from_secs(60);

    fn request<'a>(
        key: &'a str,
        now: DateTime<Utc>,
        expiration: Option<Duration>,
    ) -> ClaimRequest<'a> {
        ClaimRequest {
            target: "t",
            key,
            fingerprint: "p".fingerprint(),
            reference_time: now,
            // Shorter than every expiration below: an expired record's holder has timed out.
            timeout: Some(MINUTE / 2),
            expiration: expiration.map(|e| crate::clock::add(now, e)),
        }
    }

    async fn claim(repo: &MemoryRepository, request: &ClaimRequest<'_>) -> Claim<MemorySession> {
        repo.claim(request).await.expect("claim")
    }

    async fn acquired(
        repo: &MemoryRepository,
        request: &ClaimRequest<'_>,
    ) -> (Lease, MemorySession) {
        match claim(repo, request).await {
            Claim::Acquired { lease, session, .. } => (lease, session),
            Claim::Existing { record, .. } => panic!("expected to acquire, found {record:?}"),
        }
    }

    #[tokio::test]
    async fn expired_records_are_evicted_by_claims_on_other_keys() {
        let clock = ManualClock::default();
        let repo = MemoryRepository::new()
            .with_clock(clock.clone())
            .with_sweep_interval(MINUTE);
        // Enough keys that every shard holds expiring records.
        let keys: Vec<String> = (0..256).map(|i| format!("old-{i}")).collect();
        for key in &keys {
            claim(&repo, &request(key, clock.now(), Some(MINUTE))).await;
        }
        assert_eq!(repo.len(), 256);
        clock.advance(3 * MINUTE);
        // Claims on new keys sweep the shards they reach; the old keys never come back.
        for i in 0..2048 {
            let key = format!("new-{i}");
            claim(&repo, &request(&key, clock.now(), None)).await;
        }
        for key in &keys {
            assert_eq!(repo.get("t", key).await.expect("get"), None, "{key}");
        }
        assert_eq!(repo.len(), 2048);
    }

    /// A shard is only swept once its earliest expiration has passed; the sweep finds the
    /// next earliest among the records it keeps, so later expirations are evicted in turn.
    #[tokio::test]
    async fn sweeps_follow_the_earliest_eviction() {
        let clock = ManualClock::default();
        let repo = MemoryRepository::new()
            .with_clock(clock.clone())
            .with_sweep_interval(MINUTE);
        let soon: Vec<String> = (0..256).map(|i| format!("soon-{i}")).collect();
        let later: Vec<String> = (0..256).map(|i| format!("later-{i}")).collect();
        for key in &soon {
            claim(&repo, &request(key, clock.now(), Some(2 * MINUTE))).await;
        }
        for key in &later {
            claim(&repo, &request(key, clock.now(), Some(10 * MINUTE))).await;
        }
        let mut round = 0;
        let mut touch = |repo: &MemoryRepository, now| {
            round += 1;
            let keys: Vec<String> = (0..2048).map(|i| format!("touch-{round}-{i}")).collect();
            let repo = repo.clone();
            async move {
                for key in &keys {
                    claim(&repo, &request(key, now, None)).await;
                }
            }
        };
        clock.advance(3 * MINUTE);
        touch(&repo, clock.now()).await;
        assert_eq!(repo.len(), 256 + 2048, "the first expirations are evicted");
        clock.advance(5 * MINUTE);
        touch(&repo, clock.now()).await;
        assert_eq!(repo.len(), 256 + 2 * 2048, "nothing else has expired yet");
        clock.advance(5 * MINUTE);
        touch(&repo, clock.now()).await;
        assert_eq!(
            repo.len(),
            3 * 2048,
            "the later expirations are evicted in turn"
        );
        for key in soon.iter().chain(&later) {
            assert_eq!(repo.get("t", key).await.expect("get"), None, "{key}");
        }
    }

    #[tokio::test]
    async fn evict_expired_counts_what_it_removes() {
        let clock = ManualClock::default();
        let repo = MemoryRepository::new().with_clock(clock.clone());
        claim(&repo, &request("a", clock.now(), Some(MINUTE))).await;
        claim(&repo, &request("b", clock.now(), Some(10 * MINUTE))).await;
        claim(&repo, &request("c", clock.now(), None)).await;
        clock.advance(2 * MINUTE);
        assert_eq!(repo.evict_expired(), 1);
        assert_eq!(repo.len(), 2);
        assert!(repo.get("t", "a").await.expect("get").is_none());
        assert!(repo.get("t", "b").await.expect("get").is_some());
    }

    /// A Running record outlives its expiration while its holder may still be at work (no
    /// timeout, or one still ahead): removed, it would let a new call run beside the holder.
    /// It goes once the holder has finished it, or once its timeout has passed.
    #[tokio::test]
    async fn a_held_record_outlives_its_expiration() {
        let clock = ManualClock::default();
        let repo = MemoryRepository::new().with_clock(clock.clone());
        let mut untimed = request("untimed", clock.now(), Some(MINUTE));
        untimed.timeout = None;
        let mut timed = request("timed", clock.now(), Some(MINUTE));
        timed.timeout = Some(10 * MINUTE);
        let (lease, session) = acquired(&repo, &untimed).await;
        claim(&repo, &timed).await;
        clock.advance(2 * MINUTE);
        assert_eq!(repo.evict_expired(), 0);
        untimed.reference_time = clock.now();
        assert!(matches!(
            claim(&repo, &untimed).await,
            Claim::Existing { record, .. } if record.status == Status::Running
        ));
        assert_eq!(lease.attempt, 1);
        let done = repo
            .complete(session, RecordId::new("t", "untimed"), lease, Some(b"late"))
            .await
            .expect("complete");
        assert_eq!(done, Completion::Expired);
        assert_eq!(repo.evict_expired(), 1, "finished by its holder, it goes");
        clock.advance(9 * MINUTE);
        assert_eq!(repo.evict_expired(), 1, "its timeout passed, it goes");
        assert!(repo.is_empty());
    }

    /// A held record does not bring its shard's sweeps forward while its holder works; once
    /// the holder is done with it, claims reaching its shard sweep it like any expired record.
    #[tokio::test]
    async fn a_record_its_holder_is_done_with_is_swept_by_later_claims() {
        let clock = ManualClock::default();
        let repo = MemoryRepository::new()
            .with_clock(clock.clone())
            .with_sweep_interval(MINUTE);
        let mut held = request("held", clock.now(), Some(MINUTE));
        held.timeout = None;
        let (lease, session) = acquired(&repo, &held).await;
        let touch = |round: &'static str| {
            let repo = repo.clone();
            let now = clock.now();
            async move {
                for i in 0..2048 {
                    let key = format!("{round}-{i}");
                    claim(&repo, &request(&key, now, None)).await;
                }
            }
        };
        clock.advance(2 * MINUTE);
        touch("a").await;
        assert!(repo.get("t", "held").await.expect("get").is_some());
        let done = repo
            .complete(session, RecordId::new("t", "held"), lease, Some(b"late"))
            .await
            .expect("complete");
        assert_eq!(done, Completion::Expired);
        clock.advance(2 * MINUTE);
        touch("b").await;
        assert_eq!(repo.get("t", "held").await.expect("get"), None);
    }

    #[tokio::test]
    async fn a_full_store_refuses_new_keys_but_never_evicts_live_ones() {
        let clock = ManualClock::default();
        let repo = MemoryRepository::new()
            .with_clock(clock.clone())
            .with_capacity(2);
        claim(&repo, &request("a", clock.now(), Some(MINUTE))).await;
        claim(&repo, &request("b", clock.now(), None)).await;
        let full = repo.claim(&request("c", clock.now(), None)).await;
        assert!(
            matches!(full, Err(RepositoryError::CapacityExceeded { capacity: 2 })),
            "{full:?}"
        );
        // Existing keys still answer at capacity.
        assert!(matches!(
            claim(&repo, &request("b", clock.now(), None)).await,
            Claim::Existing { .. }
        ));
        // Once "a" expires, the full store sweeps it and takes "c".
        clock.advance(2 * MINUTE);
        assert!(matches!(
            claim(&repo, &request("c", clock.now(), None)).await,
            Claim::Acquired {
                lease: Lease { attempt: 1, .. },
                ..
            }
        ));
        assert_eq!(repo.len(), 2);
        assert!(repo.get("t", "b").await.expect("get").is_some());
    }

    /// The attempt number stops at its highest; each takeover still gets a claim of its own,
    /// so the holder finishes and an earlier one cannot.
    #[tokio::test]
    async fn attempts_stop_at_their_highest_number_and_still_fence() {
        let clock = ManualClock::default();
        let repo = MemoryRepository::new().with_clock(clock.clone());
        let mut record =
            TrackedOperation::new("t", "k", Status::Failed, "p".fingerprint(), clock.now());
        record.attempt = u64::MAX;
        repo.restore(record);
        let (first_lease, first) = acquired(&repo, &request("k", clock.now(), None)).await;
        assert_eq!(first_lease.attempt, MAX_ATTEMPT);
        clock.advance(MINUTE);
        let (lease, second) = acquired(&repo, &request("k", clock.now(), None)).await;
        assert_eq!(lease.attempt, MAX_ATTEMPT);
        let id = RecordId::new("t", "k");
        assert_eq!(
            repo.complete(first, id, first_lease, Some(b"stale"))
                .await
                .expect("complete"),
            Completion::Superseded
        );
        assert_eq!(
            repo.complete(second, id, lease, Some(b"ok"))
                .await
                .expect("complete"),
            Completion::Done
        );
    }

    #[tokio::test]
    async fn restore_replaces_and_counts_once() {
        let repo = MemoryRepository::new();
        let now = Utc::now();
        let mut record = TrackedOperation::new("t", "k", Status::Failed, "p".fingerprint(), now);
        record.error = Some("boom".into());
        repo.restore(record.clone());
        record.status = Status::Finished;
        record.error = None;
        record.result = Some(b"ok".to_vec());
        repo.restore(record.clone());
        assert_eq!(repo.len(), 1);
        let stored = repo.get("t", "k").await.expect("get").expect("record");
        assert_eq!(stored.result.as_deref(), Some(&b"ok"[..]));
        assert_eq!(stored.status, Status::Finished);
    }

    /// The failure kind and a missing result come back as restored, and as written.
    #[tokio::test]
    async fn failure_kinds_and_missing_results_are_kept() {
        let clock = ManualClock::default();
        let repo = MemoryRepository::new().with_clock(clock.clone());
        for &kind in FailureKind::ALL {
            let mut record =
                TrackedOperation::new("t", "k", Status::Failed, "p".fingerprint(), clock.now());
            record.error = Some("boom".into());
            record.failure = Some(kind);
            repo.restore(record.clone());
            assert_eq!(repo.get("t", "k").await.expect("get"), Some(record));
        }
        let mut record =
            TrackedOperation::new("t", "f", Status::Finished, "p".fingerprint(), clock.now());
        repo.restore(record.clone());
        assert_eq!(repo.get("t", "f").await.expect("get"), Some(record.clone()));
        record.result = Some(Vec::new());
        repo.restore(record.clone());
        assert_eq!(repo.get("t", "f").await.expect("get"), Some(record));

        let (lease, session) = acquired(&repo, &request("u", clock.now(), None)).await;
        let id = RecordId::new("t", "u");
        let done = repo
            .complete(session, id, lease, None)
            .await
            .expect("complete");
        assert_eq!(done, Completion::Done);
        let stored = repo.get("t", "u").await.expect("get").expect("record");
        assert_eq!((stored.status, stored.result), (Status::Finished, None));

        let (lease, session) = acquired(&repo, &request("c", clock.now(), None)).await;
        let id = RecordId::new("t", "c");
        let failure = Failure::new(FailureKind::Cancelled, "gone");
        let done = repo.fail(session, id, lease, failure).await.expect("fail");
        assert_eq!(done, Completion::Done);
        let stored = repo.get("t", "c").await.expect("get").expect("record");
        assert_eq!(stored.failure, Some(FailureKind::Cancelled));
        assert_eq!(stored.error.as_deref(), Some("gone"));
    }

    /// A restored Running record was made by no claim of the store: no lease finishes it,
    /// not even one naming claim 0.
    #[tokio::test]
    async fn a_restored_running_record_is_finished_by_no_lease() {
        let clock = ManualClock::default();
        let repo = MemoryRepository::new().with_clock(clock.clone());
        let (_, session) = acquired(&repo, &request("k", clock.now(), None)).await;
        let mut record =
            TrackedOperation::new("t", "k", Status::Running, "p".fingerprint(), clock.now());
        record.attempt = 1;
        repo.restore(record);
        let lease = Lease {
            attempt: 1,
            claim: 0,
        };
        let done = repo
            .complete(session, RecordId::new("t", "k"), lease, Some(b"x"))
            .await
            .expect("complete");
        assert_eq!(done, Completion::Superseded);
    }

    #[test]
    fn identities_of_different_splits_differ() {
        assert_ne!(identity("ab", "c"), identity("a", "bc"));
    }
}
