//! Nonces for sealing results without a system call per record.
//!
//! AES-GCM breaks when one key seals two messages under one nonce, so every sealed result
//! needs a nonce no other result of the key had. Twelve bytes from the OS per result are
//! unique with overwhelming probability, but the system call is most of the cost of sealing
//! a result; and a generator in user space alone repeats its output in a process forked from
//! another (a pre-fork server), under the same key.
//!
//! Written here rather than taken from a crate because neither `getrandom` nor `rand` offers
//! a fork-safe generator without a system call per value, and unsafe code (which
//! `MADV_WIPEONFORK` would need) is forbidden in this workspace. The construction keeps
//! nonces unique across `fork` by deriving them from what the store already makes unique:
//!
//! ```text
//! nonce = AES-256(K1, GHASH(K2, lengths ‖ target ‖ key ‖ counter ‖ claim))[..12]
//! ```
//!
//! `K1` and `K2` are drawn from the OS once, and `counter` counts this source's nonces.
//! GHASH under a secret key followed by a block cipher is a pseudorandom function (the
//! Wegman–Carter construction), so distinct inputs give nonces that collide with the
//! probability of random 96-bit ones. Inputs are distinct:
//! - in one process, by the counter;
//! - in a parent and a child forked from it (the same keys, the same counter), because they
//!   seal for different leases: a lease's claim number is given to no other claim of its
//!   record, and only the holder of a lease completes it (a retried finish seals the same
//!   plaintext again, which repeats the ciphertext and reveals nothing);
//! - in unrelated processes, by their independent keys.

use std::sync::atomic::{AtomicU64, Ordering};

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Generate, KeyInit};
use aes_gcm::aes::Aes256;
use aes_gcm::aes::cipher::BlockCipherEncrypt;
use aes_gcm::{Nonce, aes};
use ghash::GHash;
use ghash::universal_hash::UniversalHash;

use crate::repository::{BoxError, Lease, RecordId};

/// The keys drawn from the OS and the counter; see the module's documentation.
pub(crate) struct NonceSource {
    cipher: Aes256,
    hash: GHash,
    counter: AtomicU64,
}

impl NonceSource {
    /// A source with fresh keys from the OS.
    pub(crate) fn new() -> Result<Self, BoxError> {
        let cipher_key = aes::cipher::Key::<Aes256>::try_generate().map_err(Box::new)?;
        let hash_key = ghash::Key::try_generate().map_err(Box::new)?;
        Ok(Self {
            cipher: Aes256::new(&cipher_key),
            hash: GHash::new(&hash_key),
            counter: AtomicU64::new(0),
        })
    }

    /// A nonce for sealing the result that the holder of `lease` gives the record `id`.
    pub(crate) fn nonce(&self, id: RecordId<'_>, lease: Lease) -> Nonce<U12> {
        let mut hash = self.hash.clone();
        // Both lengths first, then each string padded to whole blocks: an injective encoding.
        let mut lengths = [0; 16];
        lengths[..8].copy_from_slice(&(id.target.len() as u64).to_le_bytes());
        lengths[8..].copy_from_slice(&(id.key.len() as u64).to_le_bytes());
        hash.update_padded(&lengths);
        hash.update_padded(id.target.as_bytes());
        hash.update_padded(id.key.as_bytes());
        let mut last = [0; 16];
        let count = self.counter.fetch_add(1, Ordering::Relaxed);
        last[..8].copy_from_slice(&count.to_le_bytes());
        last[8..].copy_from_slice(&lease.claim.to_le_bytes());
        hash.update_padded(&last);
        let mut block = hash.finalize();
        self.cipher.encrypt_block(&mut block);
        let mut nonce = Nonce::default();
        nonce.copy_from_slice(&block[..12]);
        nonce
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashSet;

    use super::*;

    const ID: RecordId<'static> = RecordId::new("POST /payments", "k1");

    fn lease(claim: u64) -> Lease {
        Lease { attempt: 1, claim }
    }

    /// A copy of `source` as `fork` would leave it in the child: the same keys and counter.
    fn forked(source: &NonceSource) -> NonceSource {
        NonceSource {
            cipher: source.cipher.clone(),
            hash: source.hash.clone(),
            counter: AtomicU64::new(source.counter.load(Ordering::Relaxed)),
        }
    }

    #[test]
    fn one_source_never_repeats_even_for_one_lease() {
        let source = NonceSource::new().unwrap();
        let nonces: HashSet<_> = (0..10_000).map(|_| source.nonce(ID, lease(1))).collect();
        assert_eq!(nonces.len(), 10_000);
    }

    #[test]
    fn a_forked_copy_gives_other_nonces_for_other_leases_and_records() {
        let parent = NonceSource::new().unwrap();
        let child = forked(&parent);
        // What makes the two differ is only what they seal for.
        assert_eq!(
            forked(&parent).nonce(ID, lease(1)),
            child.nonce(ID, lease(1))
        );
        let child = forked(&parent);
        assert_ne!(parent.nonce(ID, lease(1)), child.nonce(ID, lease(2)));
        let child = forked(&parent);
        assert_ne!(
            parent.nonce(ID, lease(1)),
            child.nonce(RecordId::new("POST /payments", "k2"), lease(1))
        );
        // The identity's encoding is injective: moving a byte from target to key changes it.
        let child = forked(&parent);
        assert_ne!(
            parent.nonce(RecordId::new("ab", "c"), lease(1)),
            child.nonce(RecordId::new("a", "bc"), lease(1))
        );
    }

    #[test]
    fn independent_sources_differ() {
        let (a, b) = (NonceSource::new().unwrap(), NonceSource::new().unwrap());
        assert_ne!(a.nonce(ID, lease(1)), b.nonce(ID, lease(1)));
    }
}
