//! Secrets at rest on the memory store: the encryption cases of the conformance suite, keyed
//! fingerprints, and the replay cache in front of an encrypted store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ana_core::encryption::{Encrypted, EncryptionKey, FingerprintKey, Keyring};
use ana_core::{
    Error, Fingerprint, IdempotencyRepository, Manager, MemoryRepository, MemorySession,
    ReplayCache, operation,
};

async fn harness() -> ana_core::conformance::MemoryHarness {
    ana_core::conformance::MemoryHarness::new()
}

ana_core::encryption_conformance_tests!(harness());

fn keyring() -> Keyring {
    Keyring::new(EncryptionKey::new(0, &[3; 32]))
}

fn counted(
    runs: &Arc<AtomicUsize>,
    key: &'static str,
    payload: Fingerprint,
) -> impl ana_core::Operation<
    MemorySession,
    Payload = Fingerprint,
    Output = String,
    Error = std::io::Error,
> {
    let runs = Arc::clone(runs);
    operation("pay", key, payload, move |_ctx: MemorySession| async move {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>("paid".to_owned())
    })
}

/// A fingerprint key changed under a record: the retry is refused as another payload (the
/// record's identity does not depend on the key), and the operation does not run again.
#[tokio::test]
async fn a_new_fingerprint_key_answers_payload_mismatch() -> Result<(), Box<dyn std::error::Error>>
{
    let manager: Manager<Fingerprint, String, MemorySession> =
        Manager::new(MemoryRepository::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let old = FingerprintKey::new(&[1; 32])?;
    let new = FingerprintKey::new(&[2; 32])?;
    manager
        .call(counted(&runs, "k", old.fingerprint("10 EUR")))
        .await?;
    assert!(
        manager
            .run(counted(&runs, "k", old.fingerprint("10 EUR")))
            .await?
            .is_replayed()
    );
    let retry = manager
        .call(counted(&runs, "k", new.fingerprint("10 EUR")))
        .await;
    assert!(
        matches!(retry, Err(Error::PayloadMismatch { .. })),
        "{retry:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    Ok(())
}

/// With a replay cache in front, replays are answered from plaintext in process memory; the
/// store keeps only the sealed bytes, and a replay from the store writes nothing back.
#[tokio::test]
async fn the_replay_cache_keeps_plaintext_in_memory_only() -> Result<(), Box<dyn std::error::Error>>
{
    let store = MemoryRepository::new();
    let cache = ReplayCache::new(1 << 20);
    let manager: Manager<Fingerprint, String, MemorySession> =
        Manager::new(Encrypted::new(store.clone(), keyring())).with_replay_cache(cache.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let payload = Fingerprint::of("10 EUR");
    manager.call(counted(&runs, "k", payload)).await?;
    let sealed = store.get("pay", "k").await?.and_then(|r| r.result);
    assert!(
        manager
            .run(counted(&runs, "k", payload))
            .await?
            .is_replayed()
    );
    assert_eq!(cache.hits(), 1);
    // Another process (no cache) replays from the store; the store is unchanged.
    let other: Manager<Fingerprint, String, MemorySession> =
        Manager::new(Encrypted::new(store.clone(), keyring()));
    assert!(other.run(counted(&runs, "k", payload)).await?.is_replayed());
    assert_eq!(store.get("pay", "k").await?.and_then(|r| r.result), sealed);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    Ok(())
}
