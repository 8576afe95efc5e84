//! Secrets at rest on Postgres: the encryption cases, the whole conformance suite through
//! `Encrypted`, and the raw `result` column holding no plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ana_core::conformance::{Encrypting, MARKER};
use ana_core::encryption::{Encrypted, EncryptionKey, Keyring};
use ana_core::{Manager, operation};
use ana_pg::{PgSession, sqlx};

async fn harness() -> common::PgHarness {
    common::PgHarness::new().await
}

ana_core::encryption_conformance_tests!(harness());

/// The store conformance suite with every result sealed at rest.
mod suite {
    use super::{Encrypting, common};

    async fn harness() -> Encrypting<common::PgHarness> {
        Encrypting::new(common::PgHarness::new().await)
    }

    ana_core::conformance_tests!(harness());
}

/// A `SELECT` of the stored `result` finds ciphertext: no byte of the marker the response
/// carries, and the format's version byte first.
#[tokio::test]
async fn the_result_column_holds_no_plaintext() {
    let db = common::TestDb::new().await;
    let keyring = Keyring::new(EncryptionKey::new(0, &[0x42; 32]));
    let manager: Manager<&str, String, PgSession> =
        Manager::new(Encrypted::new(db.repository.clone(), keyring));
    let response = format!("{{\"card\":\"{MARKER}\"}}");
    let op = |response: String| {
        operation(
            "[POST]/pay",
            "k1",
            "100",
            move |_ctx: PgSession| async move { Ok::<_, std::io::Error>(response) },
        )
    };
    assert_eq!(manager.call(op(response.clone())).await.unwrap(), response);
    let stored: Vec<u8> = sqlx::query_scalar(sqlx::AssertSqlSafe(db.sql(
        "SELECT result FROM {s}.tracked_operations WHERE target = '[POST]/pay' AND key = 'k1'",
    )))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored[0], 0xA1);
    assert!(
        !stored.windows(4).any(|w| w == b"4242"),
        "plaintext in Postgres"
    );
    assert!(!stored.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()));
    assert!(manager.run(op("rerun".into())).await.unwrap().is_replayed());
}
