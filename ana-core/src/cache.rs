//! [`ReplayCache`]: Finished results kept in process, so that repeated replays of a key do not
//! reach the store.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock;
use crate::memory::IdHasher;
use crate::record::Fingerprint;

const SHARDS: usize = 16;
/// What an entry costs beyond its target, key and result: the map slot, the order queue's
/// slot, the entry's own header and the allocations' headers.
const ENTRY_OVERHEAD: usize = 128;
const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// A bounded, in-process cache of Finished results, consulted by a [`Manager`](crate::Manager)
/// before its store (see [`Manager::with_replay_cache`](crate::Manager::with_replay_cache)).
///
/// A Finished record never changes again, so a replay can be answered from a copy: the
/// payload fingerprint is checked as the store would (a reused key with another payload is
/// still [`Error::PayloadMismatch`](crate::Error::PayloadMismatch)), and the result is the one
/// recorded. What the cache keeps, and for how long:
///
/// - results this manager recorded for a record it created (attempt 1), and Finished records
///   it read from the store on a replay; nothing else (a Running or Failed record can change);
/// - each until the earlier of its time to live (default five minutes) and the record's own
///   expiration, on the manager's clock: every store keeps a record at least until its
///   expiration, so the cache never replays a record the store would have forgotten;
/// - within a byte budget (target, key and result of each entry, plus a fixed overhead): the
///   oldest entries go first. A result over a sixteenth of a shard's budget is not kept.
///
/// The one thing a cache cannot see is a record deleted or replaced behind its back (by hand,
/// or with a `restore` from another process): such a change reaches this process's replays only
/// when the entry's time to live ends. Give the cache a short time to live if you do that.
///
/// Clones share the entries.
#[derive(Clone)]
pub struct ReplayCache {
    shared: Arc<Shared>,
    ttl: Duration,
}

struct Shared {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    shard_budget: usize,
    hits: AtomicU64,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<u64, Entry, BuildHasherDefault<IdHasher>>,
    /// Insertion order, for eviction: a hash and the sequence number of its entry then.
    order: VecDeque<(u64, u64)>,
    bytes: usize,
    sequence: u64,
}

struct Entry {
    /// The target then the key.
    identity: Box<str>,
    target_len: usize,
    fingerprint: Fingerprint,
    result: Arc<[u8]>,
    until: DateTime<Utc>,
    sequence: u64,
}

impl Entry {
    fn cost(&self) -> usize {
        self.identity.len() + self.result.len() + ENTRY_OVERHEAD
    }

    fn is(&self, target: &str, key: &str) -> bool {
        self.target_len == target.len()
            && self.identity.starts_with(target)
            && &self.identity[target.len()..] == key
    }
}

/// A cached Finished result.
pub(crate) struct Hit {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) result: Arc<[u8]>,
}

impl ReplayCache {
    /// A cache of at most about `max_bytes` (targets, keys and results, plus a fixed overhead
    /// per entry), whose entries live five minutes at most.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                hasher: RandomState::new(),
                shard_budget: max_bytes / SHARDS,
                hits: AtomicU64::new(0),
            }),
            ttl: DEFAULT_TTL,
        }
    }

    /// Sets how long an entry lives at most (it never outlives its record's expiration).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many entries the cache holds (expired ones included until they are looked up or
    /// pushed out).
    pub fn len(&self) -> usize {
        self.shared
            .shards
            .iter()
            .map(|s| lock(s).entries.len())
            .sum()
    }

    /// Whether the cache holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many replays the cache has answered.
    pub fn hits(&self) -> u64 {
        self.shared.hits.load(Ordering::Relaxed)
    }

    /// Forgets every entry.
    pub fn clear(&self) {
        for shard in &*self.shared.shards {
            *lock(shard) = Shard::default();
        }
    }

    fn hash(&self, target: &str, key: &str) -> u64 {
        let mut hasher = self.shared.hasher.build_hasher();
        hasher.write_usize(target.len());
        hasher.write(target.as_bytes());
        hasher.write(key.as_bytes());
        hasher.finish()
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        lock(&self.shared.shards[(hash >> 60) as usize % SHARDS])
    }

    /// The live entry of `(target, key)` at `now`.
    pub(crate) fn get(&self, target: &str, key: &str, now: DateTime<Utc>) -> Option<Hit> {
        let hash = self.hash(target, key);
        let mut shard = self.shard(hash);
        let entry = shard.entries.get(&hash)?;
        if !entry.is(target, key) {
            return None;
        }
        if now >= entry.until {
            if let Some(entry) = shard.entries.remove(&hash) {
                shard.bytes -= entry.cost();
            }
            return None;
        }
        let hit = Hit {
            fingerprint: entry.fingerprint,
            result: Arc::clone(&entry.result),
        };
        drop(shard);
        self.shared.hits.fetch_add(1, Ordering::Relaxed);
        Some(hit)
    }

    /// Keeps the Finished result of `(target, key)`, recorded with `fingerprint`, until the
    /// earlier of `now` + the time to live and `expiration`.
    pub(crate) fn insert(
        &self,
        target: &str,
        key: &str,
        fingerprint: Fingerprint,
        result: &[u8],
        now: DateTime<Utc>,
        expiration: Option<DateTime<Utc>>,
    ) {
        let until = clock::add(now, self.ttl);
        let until = expiration.map_or(until, |expiration| until.min(expiration));
        let budget = self.shared.shard_budget;
        let cost = target.len() + key.len() + result.len() + ENTRY_OVERHEAD;
        if until <= now || cost > budget / 16 {
            return;
        }
        let hash = self.hash(target, key);
        let mut identity = String::with_capacity(target.len() + key.len());
        identity.push_str(target);
        identity.push_str(key);
        let mut shard = self.shard(hash);
        let shard = &mut *shard;
        shard.sequence += 1;
        let entry = Entry {
            identity: identity.into_boxed_str(),
            target_len: target.len(),
            fingerprint,
            result: Arc::from(result),
            until,
            sequence: shard.sequence,
        };
        shard.bytes += entry.cost();
        shard.order.push_back((hash, entry.sequence));
        if let Some(old) = shard.entries.insert(hash, entry) {
            shard.bytes -= old.cost();
        }
        while shard.bytes > budget {
            let Some((hash, sequence)) = shard.order.pop_front() else {
                break;
            };
            if shard
                .entries
                .get(&hash)
                .is_some_and(|e| e.sequence == sequence)
                && let Some(entry) = shard.entries.remove(&hash)
            {
                shard.bytes -= entry.cost();
            }
        }
        // Replaced and removed entries leave stale slots in the order queue: drop them once
        // they are most of it.
        if shard.order.len() > 2 * shard.entries.len() + 64 {
            let entries = &shard.entries;
            shard.order.retain(|(hash, sequence)| {
                entries.get(hash).is_some_and(|e| e.sequence == *sequence)
            });
        }
    }
}

impl fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayCache")
            .field("max_bytes", &(self.shared.shard_budget * SHARDS))
            .field("ttl", &self.ttl)
            .field("len", &self.len())
            .field("hits", &self.hits())
            .finish()
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap_or_default()
    }

    const FP: Fingerprint = Fingerprint::from_bytes([7; 16]);

    #[test]
    fn entries_live_until_their_ttl_or_expiration() {
        let cache = ReplayCache::new(1 << 20).with_ttl(Duration::from_secs(60));
        cache.insert("t", "a", FP, b"A", at(0), None);
        cache.insert("t", "b", FP, b"B", at(0), Some(at(10)));
        assert_eq!(
            &*cache
                .get("t", "a", at(59))
                .map(|h| h.result)
                .unwrap_or_default(),
            b"A"
        );
        assert!(cache.get("t", "a", at(60)).is_none());
        assert!(cache.get("t", "b", at(9)).is_some());
        assert!(cache.get("t", "b", at(10)).is_none());
        // Already expired: not kept.
        cache.insert("t", "c", FP, b"C", at(20), Some(at(20)));
        assert!(cache.get("t", "c", at(20)).is_none());
        assert_eq!(cache.hits(), 2);
    }

    #[test]
    fn identities_do_not_collide() {
        let cache = ReplayCache::new(1 << 20);
        cache.insert("ab", "c", FP, b"1", at(0), None);
        assert!(cache.get("a", "bc", at(1)).is_none());
        assert!(cache.get("ab", "c", at(1)).is_some());
    }

    #[test]
    fn the_budget_pushes_out_the_oldest() {
        // 16 shards of 4 KiB: entries of about 234 bytes, a shard holds 17.
        let cache = ReplayCache::new(SHARDS * 4096);
        let result = [b'x'; 100];
        for n in 0..2000 {
            cache.insert("t", &format!("k{n}"), FP, &result, at(0), None);
        }
        let len = cache.len();
        assert!(len > 100 && len <= SHARDS * (4096 / 234), "{len} entries");
        assert!(cache.get("t", "k1999", at(1)).is_some());
        assert!(cache.get("t", "k0", at(1)).is_none());
        for shard in &*cache.shared.shards {
            let shard = lock(shard);
            assert!(shard.bytes <= 4096);
            assert!(shard.order.len() <= 2 * shard.entries.len() + 64);
        }
        // Too large for a shard's share: not kept.
        cache.insert("t", "big", FP, &[0; 4096], at(0), None);
        assert!(cache.get("t", "big", at(1)).is_none());
        cache.clear();
        assert!(cache.is_empty());
    }
}
