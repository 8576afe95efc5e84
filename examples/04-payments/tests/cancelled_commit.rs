//! A write without a key cancelled while its `COMMIT` is in flight (the client hung up) sends
//! nothing after that `COMMIT`: no `ROLLBACK` follows it into a transaction that is over, which
//! Postgres answers with the warning "there is no transaction in progress". On Postgres
//! (`DATABASE_URL`), in a database of its own, dropped after it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use example_04_payments::model::{Attributes, Payment};
use example_04_payments::store::Store;
use sqlx::{Connection, PgConnection};

/// What the subscriber writes: the JSON lines of sqlx's events.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn admin(statement: String) {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut conn = PgConnection::connect(&url)
        .await
        .expect("Postgres at DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_flight_runs_to_its_end_when_the_request_is_cancelled() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter("sqlx::postgres::notice=warn")
        .with_writer(move || writer.clone())
        .init();

    let name = format!("ana_pay_cancel_{}", std::process::id());
    admin(format!("CREATE DATABASE {name}")).await;
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut url = reqwest::Url::parse(&base).unwrap();
    url.set_path(&format!("/{name}"));
    let outcome = tokio::spawn(cancelled_create(url.to_string())).await;
    admin(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic.into_panic());
    }
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(!log.contains("no transaction in progress"), "{log}");
}

/// Creates a payment without a key, its `COMMIT` held by a lock; cancels the request then;
/// lets the `COMMIT` through.
async fn cancelled_create(url: String) {
    // One connection: the request's, then whatever the pool hands out next.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let store = Store::Postgres(pool.clone());
    store.migrate().await.unwrap();
    // Rows of `payments` make the COMMIT wait for an advisory lock the test holds (a deferred
    // trigger runs at COMMIT).
    for statement in [
        "CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_xact_lock(40405); RETURN NULL; END $$",
        "CREATE CONSTRAINT TRIGGER gate AFTER INSERT ON payments
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gate()",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let mut holder = PgConnection::connect(&url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(40405)")
        .execute(&mut holder)
        .await
        .unwrap();

    let payment = Payment {
        id: "p1".to_owned(),
        version: 0,
        kind: "Payment".to_owned(),
        organisation_id: "o".to_owned(),
        attributes: Attributes {
            amount: "1".to_owned(),
            other: serde_json::Map::new(),
        },
    };
    let request = tokio::spawn({
        let (store, payment) = (store.clone(), payment.clone());
        async move { store.create(None, &payment).await }
    });
    // Until the COMMIT waits for the lock (bounded).
    let mut waiting = false;
    for _ in 0..500 {
        waiting = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()
             AND query = 'COMMIT' AND wait_event_type = 'Lock')",
        )
        .fetch_one(&mut holder)
        .await
        .unwrap();
        if waiting {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(waiting, "the COMMIT never waited for the lock");

    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    sqlx::query("SELECT pg_advisory_unlock(40405)")
        .execute(&mut holder)
        .await
        .unwrap();
    // The one connection back from the pool: whatever was sent on it has been answered.
    assert_eq!(store.get("p1").await.unwrap(), Some(payment));
    holder.close().await.unwrap();
    pool.close().await;
}
