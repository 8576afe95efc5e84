//! A claim cancelled while it waits for the write lock (a client hanging up, say) does not
//! put its connection back in the pool with the short busy timeout it waits in slices of: a
//! pooled connection keeping it would make every later writer on it give up after a few
//! milliseconds ("database is locked").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ana_core::{BoxError, Manager, operation};
use ana_sqlite::sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use ana_sqlite::sqlx::{self, Connection, SqliteConnection};
use ana_sqlite::{SqliteRepository, SqliteSession};
use common::TestDb;
use tokio::sync::Notify;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Wakes `lowered` when sqlx has run the statement that shortens the busy timeout (sqlx logs
/// each statement it ran as an event of the target `sqlx::query`).
struct Statements {
    lowered: Arc<Notify>,
}

impl Subscriber for Statements {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "sqlx::query"
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        struct Summary(bool);
        impl Visit for Summary {
            fn record_str(&mut self, field: &Field, value: &str) {
                self.0 |= field.name() == "summary" && value == "PRAGMA busy_timeout = 20";
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                self.record_str(field, &format!("{value:?}").replace('"', ""));
            }
        }
        let mut summary = Summary(false);
        event.record(&mut summary);
        if summary.0 {
            self.lowered.notify_one();
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_claim_leaves_no_short_busy_timeout_in_the_pool() {
    let lowered = Arc::new(Notify::new());
    tracing::subscriber::set_global_default(Statements {
        lowered: Arc::clone(&lowered),
    })
    .unwrap();
    let db = TestDb::new().await;
    // One connection: the claim's, then whatever the pool hands out next.
    let options = SqliteConnectOptions::from_str(&db.url)
        .unwrap()
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let repository = SqliteRepository::new(pool.clone());
    // Another connection holds the write lock: the claim waits for it, in short slices.
    let mut holder = SqliteConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();

    let manager: Manager<&'static str, String, SqliteSession> = Manager::new(repository);
    let op = operation("[POST]/payments", "k", "pay", |_: SqliteSession| async {
        Ok::<_, BoxError>("done".to_owned())
    });
    let call = tokio::spawn(async move { manager.run(op).await });
    lowered.notified().await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    let busy_ms: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(busy_ms, 5000);
}
