//! A call cancelled while the `COMMIT` of its session is in flight (a client that hangs up on
//! an HTTP request, say) sends nothing after that `COMMIT`: the commit runs to its end, and no
//! `ROLLBACK` follows it into a transaction that is over (which the server answers with the
//! warning "there is no transaction in progress"). The same holds for a relay cancelled while
//! the `COMMIT` of its outbox batch is in flight.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ana_core::{BoxError, IdempotencyRepository, Manager, Status, operation};
use ana_pg::PgSession;
use ana_pg::outbox::Outbox;
use ana_pg::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use common::TestDb;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

const TARGET: &str = "[POST]/payments";

/// The messages of the notices sqlx's connections receive (it logs them as events of the
/// target `sqlx::postgres::notice`).
#[derive(Clone, Default)]
struct Notices(Arc<Mutex<Vec<String>>>);

impl Subscriber for Notices {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "sqlx::postgres::notice"
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        struct Message(String);
        impl Visit for Message {
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "message" {
                    value.clone_into(&mut self.0);
                }
            }
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        self.0.lock().unwrap().push(message.0);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// The notices received since the test began, from the subscriber installed once per process.
fn notices() -> Notices {
    static NOTICES: OnceLock<Notices> = OnceLock::new();
    let notices = NOTICES.get_or_init(|| {
        let notices = Notices::default();
        tracing::subscriber::set_global_default(notices.clone()).unwrap();
        notices
    });
    notices.clone()
}

/// Makes the `COMMIT` of a transaction that ran `event` on `table` (in `db`'s schema) wait
/// for an advisory lock that the returned connection holds (a deferred trigger runs at
/// `COMMIT`); returns that connection and the SQL of the lock's key.
async fn gate_commits(db: &TestDb, table: &str, event: &str) -> (PgConnection, String) {
    let lock = format!("hashtext('{}')", db.schema);
    db.exec(&format!(
        "CREATE FUNCTION {{s}}.gate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_advisory_xact_lock({lock}); RETURN NULL; END $$"
    ))
    .await;
    db.exec(&format!(
        "CREATE CONSTRAINT TRIGGER gate AFTER {event} ON {{s}}.{table}
         DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {{s}}.gate()"
    ))
    .await;
    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("SELECT pg_advisory_lock({lock})")))
        .execute(&mut holder)
        .await
        .unwrap();
    (holder, lock)
}

/// Until a `COMMIT` of `db`'s pool waits for the gate's lock (bounded).
async fn commit_waits(db: &TestDb, holder: &mut PgConnection) {
    for _ in 0..500 {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = $1
             AND query = 'COMMIT' AND wait_event_type = 'Lock')",
        )
        .bind(&db.schema)
        .fetch_one(&mut *holder)
        .await
        .unwrap();
        if waiting {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the COMMIT never waited for the lock");
}

/// Asserts that no `ROLLBACK` was sent into a transaction that was over.
fn assert_no_stray_rollback(notices: &Notices) {
    let notices = notices.0.lock().unwrap().clone();
    assert!(
        !notices
            .iter()
            .any(|notice| notice.contains("no transaction in progress")),
        "{notices:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_flight_runs_to_its_end_when_the_call_is_cancelled() {
    let notices = notices();
    // One connection: the session's, then whatever the pool hands out next.
    let db = TestDb::with_pool_size(1).await;
    // Rows of `gated` make the COMMIT wait for an advisory lock the test holds.
    db.exec("CREATE TABLE {s}.gated (key text NOT NULL)").await;
    let (mut holder, lock) = gate_commits(&db, "gated", "INSERT").await;

    let manager: Manager<&'static str, String, PgSession> = Manager::new(db.repository.clone());
    let insert = db.sql("INSERT INTO {s}.gated (key) VALUES ('k')");
    let op = operation(TARGET, "k", "gated", move |session: PgSession| async move {
        let mut tx = session.transaction().await?;
        sqlx::query(AssertSqlSafe(insert)).execute(&mut *tx).await?;
        Ok::<_, BoxError>("done".to_owned())
    });
    let call = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(op).await }
    });
    commit_waits(&db, &mut holder).await;

    // The caller goes away with the COMMIT in flight; then the COMMIT goes through.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    sqlx::query(AssertSqlSafe(format!("SELECT pg_advisory_unlock({lock})")))
        .execute(&mut holder)
        .await
        .unwrap();
    manager.flush().await;
    // The one connection back from the pool: whatever was sent on it has been answered.
    sqlx::query("SELECT 1").execute(&db.pool).await.unwrap();

    let record = db.repository.get(TARGET, "k").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Finished);
    assert_eq!(db.exec("SELECT 1 FROM {s}.gated").await, 1);
    assert_no_stray_rollback(&notices);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_commit_in_flight_runs_to_its_end_when_the_relay_is_cancelled() {
    let notices = notices();
    // One connection: the batch's, then whatever the pool hands out next.
    let db = TestDb::with_pool_size(1).await;
    let outbox = Outbox::new(&db.repository);
    let mut conn = db.pool.acquire().await.unwrap();
    outbox
        .append_on(&mut conn, "orders.created", b"order 7")
        .await
        .unwrap();
    drop(conn);
    // Marking the message sent makes the batch's COMMIT wait for the lock.
    let (mut holder, lock) = gate_commits(&db, "outbox", "UPDATE").await;

    let batch = outbox
        .next_batch(10)
        .await
        .unwrap()
        .expect("a pending message");
    assert_eq!(batch.messages().len(), 1);
    let relay = tokio::spawn(batch.mark_sent());
    commit_waits(&db, &mut holder).await;

    // The relay goes away with the COMMIT in flight; then the COMMIT goes through.
    relay.abort();
    assert!(relay.await.unwrap_err().is_cancelled());
    sqlx::query(AssertSqlSafe(format!("SELECT pg_advisory_unlock({lock})")))
        .execute(&mut holder)
        .await
        .unwrap();
    // The one connection back from the pool: whatever was sent on it has been answered.
    assert_eq!(outbox.pending().await.unwrap(), 0);
    assert_no_stray_rollback(&notices);
}
