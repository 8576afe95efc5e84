//! A finish notifies only a record a call waits on: the waiting call marks it `watched`. A
//! forget that deletes such a record, and the clean-up that times it out, wake its waiting
//! calls as a finish does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use ana_core::chrono::TimeDelta;
use ana_core::{
    BoxError, Forgotten, IdempotencyRepository, Maintenance, Manager, Payload, RecordId, Status,
    TrackedOperation, Watch, operation,
};
use ana_pg::sqlx::postgres::PgListener;
use ana_pg::{PgRepository, PgSession};
use common::TestDb;
use tokio::sync::oneshot;

const TARGET: &str = "[POST]/payments";
const LIMIT: Duration = Duration::from_secs(30);

type PgManager = Manager<&'static str, String, PgSession>;

async fn listener(db: &TestDb) -> (PgListener, String) {
    let channel = format!("ana_{}", db.schema);
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen(&channel).await.unwrap();
    (listener, channel)
}

async fn sentinel(db: &TestDb, channel: &str) {
    db.exec(&format!("NOTIFY \"{channel}\", 'sentinel'")).await;
}

async fn next(listener: &mut PgListener) -> String {
    tokio::time::timeout(LIMIT, listener.recv())
        .await
        .expect("a notification")
        .unwrap()
        .payload()
        .to_owned()
}

async fn run(manager: &PgManager, key: &'static str, gate: Option<oneshot::Receiver<()>>) {
    manager
        .call(operation(
            TARGET,
            key,
            "pay",
            move |_: PgSession| async move {
                if let Some(gate) = gate {
                    let _ = gate.await;
                }
                Ok::<_, BoxError>("paid".to_owned())
            },
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_nobody_waits_on_notifies_nothing() {
    let db = TestDb::new().await;
    let (mut listener, channel) = listener(&db).await;
    let manager = PgManager::new(db.repository.clone());
    run(&manager, "alone", None).await;
    sentinel(&db, &channel).await;
    assert_eq!(next(&mut listener).await, "sentinel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_a_call_waits_on_notifies() {
    let db = TestDb::new().await;
    let (mut listener, channel) = listener(&db).await;
    let manager = PgManager::new(db.repository.clone());
    let (release, gate) = oneshot::channel();
    let holder = {
        let manager = manager.clone();
        tokio::spawn(async move { run(&manager, "waited", Some(gate)).await })
    };
    // The holder's record is Running once it exists; a watch then marks it.
    while db.repository.get(TARGET, "waited").await.unwrap().is_none() {
        tokio::task::yield_now().await;
    }
    let _watch = PgRepository::watch(&db.repository, RecordId::new(TARGET, "waited"));
    let marked = db.sql("SELECT 1 FROM {s}.tracked_operations WHERE key = 'waited' AND watched");
    while db.exec(&marked).await == 0 {
        tokio::task::yield_now().await;
    }
    release.send(()).unwrap();
    holder.await.unwrap();
    sentinel(&db, &channel).await;
    assert_ne!(next(&mut listener).await, "sentinel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_of_a_record_finished_already_wakes_at_once() {
    let db = TestDb::new().await;
    let manager = PgManager::new(db.repository.clone());
    run(&manager, "done", None).await;
    // A first watch starts the listening task, whose connecting wakes every watch; the watch
    // below is woken by its mark finding no Running record alone.
    let mut first = PgRepository::watch(&db.repository, RecordId::new(TARGET, "other"));
    tokio::time::timeout(LIMIT, first.changed()).await.unwrap();
    let mut watch = PgRepository::watch(&db.repository, RecordId::new(TARGET, "done"));
    tokio::time::timeout(LIMIT, watch.changed())
        .await
        .expect("the watch is woken");
}

/// Stores a Running record of `key` whose timeout is `timeout` from the database's now.
async fn seed_running(db: &TestDb, key: &str, timeout: TimeDelta) {
    let now = db.now().await;
    let mut record = TrackedOperation::new(TARGET, key, Status::Running, "pay".fingerprint(), now);
    record.started_at = Some(now);
    record.timeout = Some(now + timeout);
    record.attempt = 1;
    db.seed(&record).await;
}

/// A watch of `key`'s Running record, once it marked it `watched`, with the repository
/// listening: nothing but a notification of `key` wakes it from then on.
async fn quiet_watch(db: &TestDb, key: &str) -> Watch {
    // The first watch starts the listening task, whose connecting wakes every watch; marking
    // a Running record wakes nothing, so that wake-up is the one `first` gets.
    seed_running(db, "first", TimeDelta::hours(1)).await;
    let mut first = PgRepository::watch(&db.repository, RecordId::new(TARGET, "first"));
    tokio::time::timeout(LIMIT, first.changed())
        .await
        .expect("the listening task connects");
    let watch = PgRepository::watch(&db.repository, RecordId::new(TARGET, key));
    let marked = db.sql(&format!(
        "SELECT 1 FROM {{s}}.tracked_operations WHERE key = '{key}' AND watched"
    ));
    while db.exec(&marked).await == 0 {
        tokio::task::yield_now().await;
    }
    watch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forget_of_a_record_a_call_waits_on_wakes_it() {
    let db = TestDb::new().await;
    seed_running(&db, "forgotten", TimeDelta::hours(1)).await;
    let mut watch = quiet_watch(&db, "forgotten").await;
    let forgotten = db
        .repository
        .forget(RecordId::new(TARGET, "forgotten"), true)
        .await
        .unwrap();
    assert!(matches!(forgotten, Forgotten::Deleted), "{forgotten:?}");
    tokio::time::timeout(LIMIT, watch.changed())
        .await
        .expect("the forget wakes the watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_clean_up_times_out_wakes_the_calls_waiting_on_it() {
    let db = TestDb::new().await;
    seed_running(&db, "late", TimeDelta::seconds(-1)).await;
    let mut watch = quiet_watch(&db, "late").await;
    assert_eq!(db.repository.fail_timed_out(10).await.unwrap(), 1);
    tokio::time::timeout(LIMIT, watch.changed())
        .await
        .expect("the clean-up wakes the watch");
}
