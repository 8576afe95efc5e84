//! Secrets at rest on Redis: the encryption cases, the whole conformance suite through
//! `Encrypted`, and the record's raw string holding no plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ana_core::conformance::{Encrypting, MARKER};
use ana_core::encryption::{Encrypted, EncryptionKey, Keyring};
use ana_core::{Manager, operation};
use ana_redis::{RedisRepository, RedisSession, redis};

async fn harness() -> common::RedisHarness {
    common::RedisHarness::single().await
}

ana_core::encryption_conformance_tests!(harness());

/// The store conformance suite with every result sealed at rest.
mod suite {
    use super::{Encrypting, common};

    async fn harness() -> Encrypting<common::RedisHarness> {
        Encrypting::new(common::RedisHarness::single().await)
    }

    ana_core::conformance_tests!(harness());
}

/// A `GET` of the record finds ciphertext: no byte of the marker the response carries, and
/// the encryption format's version byte first in the result (after the record's 172-byte
/// header).
#[tokio::test]
async fn the_result_field_holds_no_plaintext() {
    let url = common::redis_url().await;
    let store = RedisRepository::from_url(url.clone())
        .unwrap()
        .with_prefix(common::random_prefix());
    let keyring = Keyring::new(EncryptionKey::new(0, &[0x42; 32]));
    let manager: Manager<&str, String, RedisSession> =
        Manager::new(Encrypted::new(store.clone(), keyring));
    let response = format!("{{\"card\":\"{MARKER}\"}}");
    let op = |response: String| {
        operation(
            "[POST]/pay",
            "k1",
            "100",
            move |_ctx: RedisSession| async move { Ok::<_, std::io::Error>(response) },
        )
    };
    assert_eq!(manager.call(op(response.clone())).await.unwrap(), response);
    let mut connection = common::connect(&url).await;
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(store.record_key("[POST]/pay", "k1"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(&stored[..3], b"A21", "a Finished record with a result");
    assert_eq!(stored[172], 0xA1);
    assert!(
        !stored.windows(4).any(|w| w == b"4242"),
        "plaintext in Redis"
    );
    assert!(!stored.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()));
    assert!(manager.run(op("rerun".into())).await.unwrap().is_replayed());
}
