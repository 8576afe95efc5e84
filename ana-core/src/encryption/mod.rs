//! Secrets at rest (feature `encryption`): encrypted results and keyed fingerprints.
//!
//! Stores keep whole results (payment details, personal data) and fingerprints of payloads:
//! anyone who reads the store reads the results, and can test guesses of a low-entropy payload
//! against its fingerprint. Two settings close that:
//!
//! - [`Encrypted`] wraps any [`IdempotencyRepository`](crate::IdempotencyRepository): results
//!   are stored sealed with AES-256-GCM under the current key of a [`Keyring`], a fresh
//!   pseudorandom 96-bit nonce per result (see below), the record's identity `(target, key)`
//!   as associated data, and the key's id in the stored bytes so that earlier keys still open
//!   what they sealed.
//! - [`FingerprintKey`] makes fingerprints HMAC-SHA256 under a secret key
//!   ([`FingerprintKey::hasher`]; `ana-http`'s `IdempotencyConfig::with_fingerprint_key` keys
//!   its payload fingerprints and scope hashes with it).
//!
//! ## Why a store decorator, not a codec
//!
//! The associated data must bind the record's identity, so that a result copied onto another
//! record does not open there; a [`Codec`](crate::Codec) sees only the value. The store sees
//! the identity in `complete` and in every record `claim` and `get` return, and wrapping it
//! also puts the encryption *below* the manager's [`ReplayCache`](crate::ReplayCache): the
//! cache keeps what the manager encoded, plaintext in process memory only, and a cached replay
//! costs no decryption. Every store gets it, and the conformance suite runs through it
//! (`conformance::Encrypting`).
//!
//! ## Stored format
//!
//! ```text
//! [0xA1: format version][key id: u32, big-endian][nonce: 12 bytes][ciphertext][tag: 16 bytes]
//! associated data: 0xA1, key id, target length (u64, little-endian), target, key
//! ```
//!
//! 33 bytes over the plaintext.
//!
//! ## Nonces
//!
//! A system call per result for a random nonce would be most of the cost of sealing, and a
//! generator in user space would repeat its nonces in a forked process. [`Encrypted`] derives
//! each nonce instead, with keys drawn from the OS once:
//! `AES-256(K1, GHASH(K2, target, key, counter, claim number))`, truncated to 96 bits. The
//! counter keeps a process's nonces distinct; a process forked from it seals for other leases
//! (a claim number is given to no other claim of its record), so its inputs differ too. The
//! nonces are as unlikely to collide as random ones, which keep a key safe for about 2³²
//! results (NIST SP 800-38D): rotate well before that. [`Keyring::encrypt`], which has no
//! lease, takes its nonce from the OS.
//!
//! ## Failures
//!
//! A result that does not open (its key is not in the keyring, another key under its id, bytes
//! changed, or moved from another record) is
//! [`RepositoryError::Undecryptable`](crate::RepositoryError::Undecryptable), with a typed
//! [`DecryptError`](crate::DecryptError):
//! over HTTP a 500 problem `internal` with a fixed detail. The record stays Finished: it is
//! never replayed as garbage and never runs again. Nothing opened is written back to the
//! store.
//!
//! ## Rotation
//!
//! Put the new key first and keep the old ones after it until every record they sealed has
//! expired. From the environment (`ANA_ENCRYPTION_KEYS`, what the examples read):
//!
//! ```text
//! ANA_ENCRYPTION_KEYS=1:<new key, base64>,0:<old key, base64>
//! ANA_FINGERPRINT_KEY=<base64 of at least 32 bytes>
//! ```
//!
//! ```
//! use ana_core::encryption::{Encrypted, EncryptionKey, Keyring};
//! use ana_core::{operation, Manager, MemoryRepository, MemorySession};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryRepository::new();
//! let manager = |keyring: Keyring| -> Manager<&str, String, MemorySession> {
//!     Manager::new(Encrypted::new(store.clone(), keyring))
//! };
//! let op = || operation("pay", "k1", "10 EUR", |_ctx: MemorySession| async {
//!     Ok::<_, std::io::Error>("paid".to_owned())
//! });
//!
//! let before = manager(Keyring::new(EncryptionKey::new(0, &[1; 32])));
//! before.call(op()).await?;
//! // Key 1 becomes current; key 0 still opens what it sealed.
//! let after = manager(
//!     Keyring::new(EncryptionKey::new(1, &[2; 32])).with_previous(EncryptionKey::new(0, &[1; 32]))?,
//! );
//! assert!(after.run(op()).await?.is_replayed());
//! # Ok(()) }
//! ```

mod fingerprint;
mod keyring;
mod nonce;
mod repository;

pub use fingerprint::{FINGERPRINT_KEY_VAR, FingerprintKey, FingerprintKeyError};
pub use keyring::{
    ENCRYPTION_KEYS_VAR, EncryptError, EncryptionKey, Keyring, KeyringError, OVERHEAD,
};
pub use repository::Encrypted;
