//! Waiting across processes: two repositories on their own pools stand for two server
//! processes on one database. A finish in one wakes the calls waiting in the other through
//! `NOTIFY`; with the listening connection killed they still finish, by polling; a holder
//! process killed with SIGKILL is taken over by exactly one waiting call after its timeout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use ana_core::{
    BoxError, Error, EventKind, IdempotencyRepository, Manager, Outcome, RecordId, operation,
};
use ana_pg::sqlx::{self, AssertSqlSafe};
use ana_pg::{PgRepository, PgSession};
use common::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};

const TARGET: &str = "[POST]/payments";
const KEY: &str = "order-7";
const LIMIT: Duration = Duration::from_secs(30);
const MARKER: &str = "ANA_PG_WAIT_HOLDER_CLAIMED";
const URL_VAR: &str = "ANA_PG_WAIT_HOLDER_URL";
const SCHEMA_VAR: &str = "ANA_PG_WAIT_HOLDER_SCHEMA";

type PgManager = Manager<&'static str, String, PgSession>;

/// A second "process": its own pool (named `<schema>_<name>` in `pg_stat_activity`) and
/// repository on the same schema.
async fn process(db: &TestDb, name: &str) -> PgRepository {
    let pool = common::pool(&db.url, &format!("{}_{name}", db.schema), 4).await;
    PgRepository::with_schema(pool, &db.schema).unwrap()
}

/// A manager whose calls report when they start waiting.
fn watched(repository: PgRepository) -> (PgManager, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let manager = Manager::new(repository).on_event(move |event| {
        if event.kind == EventKind::Waiting {
            let _ = tx.send(());
        }
    });
    (manager, rx)
}

/// The holder's side of a gate: its operation says it started (so the record is claimed),
/// then waits to be released.
struct Gate {
    started: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// A gate, the receiver of its start and the sender of its release.
fn gate() -> (Gate, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let (started, start) = oneshot::channel();
    let (release, released) = oneshot::channel();
    let gate = Gate {
        started,
        release: released,
    };
    (gate, start, release)
}

/// A payment that writes `note` to the ledger in its transaction, once its gate (if any)
/// opens.
fn payment(
    schema: String,
    note: &'static str,
    gate: Option<Gate>,
) -> impl ana_core::Operation<PgSession, Payload = &'static str, Output = String, Error = BoxError>
{
    operation(
        TARGET,
        KEY,
        "pay 10",
        move |session: PgSession| async move {
            if let Some(Gate { started, release }) = gate {
                let _ = started.send(());
                let _ = release.await;
            }
            let mut tx = session.transaction().await?;
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO \"{schema}\".ledger (key, note) VALUES ($1, $2)"
            )))
            .bind(KEY)
            .bind(note)
            .execute(&mut *tx)
            .await?;
            Ok::<_, BoxError>(note.to_owned())
        },
    )
    .timeout(Duration::from_secs(600))
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {LIMIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_in_one_process_wakes_a_waiter_in_another() {
    let db = TestDb::new().await;
    let (a, b) = (process(&db, "a").await, process(&db, "b").await);
    let mut watch = b.watch(RecordId::new(TARGET, KEY));
    let (manager_a, (manager_b, mut waiting)) = (Manager::new(a), watched(b));
    let (gate, start, release) = gate();
    let holder = tokio::spawn({
        let manager: PgManager = manager_a;
        let op = payment(db.schema.clone(), "paid on a", Some(gate));
        async move { manager.run(op).await }
    });
    within("the holder to claim", start).await.unwrap();
    let waiter = tokio::spawn({
        let op = payment(db.schema.clone(), "paid on b", None);
        async move { manager_b.run_or_wait(op, LIMIT).await }
    });
    within("the waiter to wait", waiting.recv())
        .await
        .expect("the waiter reports waiting");
    let _ = release.send(());
    // The notification itself reaches B.
    within("B's notification", watch.changed()).await;
    let holder = holder.await.unwrap();
    assert!(
        matches!(&holder, Ok(Outcome::Executed(note)) if note == "paid on a"),
        "{holder:?}"
    );
    let waiter = within("the waiter", waiter).await.unwrap();
    assert!(
        matches!(&waiter, Ok(Outcome::Replayed(note)) if note == "paid on a"),
        "{waiter:?}"
    );
    assert_eq!(db.ledger().await, ["paid on a"]);
}

/// Ends the listening connections of the pool named `<schema>_<name>`; how many.
async fn kill_listeners(db: &TestDb, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE application_name = left($1, 63) AND query LIKE 'LISTEN%'",
    )
    .bind(format!("{}_{name}", db.schema))
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_finish_by_polling_when_the_listener_is_killed() {
    let db = TestDb::new().await;
    let (a, b) = (process(&db, "a").await, process(&db, "b").await);
    let (manager_a, (manager_b, mut waiting)): (PgManager, _) = (Manager::new(a), watched(b));
    let (gate, start, release) = gate();
    let holder = tokio::spawn({
        let op = payment(db.schema.clone(), "paid on a", Some(gate));
        async move { manager_a.run(op).await }
    });
    within("the holder to claim", start).await.unwrap();
    let waiter = tokio::spawn({
        let op = payment(db.schema.clone(), "paid on b", None);
        async move { manager_b.run_or_wait(op, LIMIT).await }
    });
    within("the waiter to wait", waiting.recv())
        .await
        .expect("the waiter reports waiting");
    // B's listening connection is up once its LISTEN ran; end it.
    within("B's listener to be killed", async {
        while kill_listeners(&db, "b").await == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let _ = release.send(());
    let holder = holder.await.unwrap();
    assert!(matches!(holder, Ok(Outcome::Executed(_))), "{holder:?}");
    let waiter = within("the waiter", waiter).await.unwrap();
    assert!(
        matches!(&waiter, Ok(Outcome::Replayed(note)) if note == "paid on a"),
        "{waiter:?}"
    );
    assert_eq!(db.ledger().await, ["paid on a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_wait_runs_out_is_told_when_to_retry() {
    let db = TestDb::new().await;
    let manager: PgManager = Manager::new(db.repository.clone());
    let (started, start) = oneshot::channel();
    let (release, released) = oneshot::channel();
    let holder = tokio::spawn({
        let manager = manager.clone();
        let op = operation(TARGET, KEY, "pay 10", move |_: PgSession| async move {
            let _ = started.send(());
            let _ = released.await;
            Ok::<_, BoxError>("first".to_owned())
        });
        async move { manager.run(op.timeout(Duration::from_secs(600))).await }
    });
    start.await.unwrap();
    let op = payment(db.schema.clone(), "second", None);
    let out = manager.run_or_wait(op, Duration::from_millis(100)).await;
    match out {
        Err(Error::StillRunning {
            retry_after: Some(left),
            ..
        }) => {
            assert!(left > Duration::from_secs(590), "{left:?}");
        }
        other => panic!("expected StillRunning, got {other:?}"),
    }
    let _ = release.send(());
    assert!(holder.await.unwrap().is_ok());
    assert!(db.ledger().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_holder_slower_than_its_timeout_keeps_its_lease() {
    let db = TestDb::new().await;
    const TIMEOUT: Duration = Duration::from_millis(500);
    // Below the default floor on timeouts, to keep the test short.
    let manager: PgManager = Manager::new(db.repository.clone())
        .with_max_lease(Duration::from_secs(60))
        .with_min_timeout(None);
    let (started, start) = oneshot::channel();
    let (release, released) = oneshot::channel();
    let holder = tokio::spawn({
        let manager = manager.clone();
        let op = operation(TARGET, KEY, "pay 10", move |_: PgSession| async move {
            let _ = started.send(());
            let _ = released.await;
            Ok::<_, BoxError>("slow".to_owned())
        });
        async move { manager.run(op.timeout(TIMEOUT)).await }
    });
    start.await.unwrap();
    // Three timeouts on the database's clock: renewed all along, never taken over.
    tokio::time::sleep(3 * TIMEOUT).await;
    let duplicate = operation(TARGET, KEY, "pay 10", |_: PgSession| async {
        Ok::<_, BoxError>("duplicate".to_owned())
    });
    let out = manager.run(duplicate.timeout(TIMEOUT)).await;
    assert!(matches!(out, Err(Error::StillRunning { .. })), "{out:?}");
    let _ = release.send(());
    let holder = holder.await.unwrap();
    assert!(
        matches!(&holder, Ok(Outcome::Executed(note)) if note == "slow"),
        "{holder:?}"
    );
}

/// Not a test on its own: the holder process of `a_killed_holder_...`.
#[tokio::test]
#[ignore = "helper process, run by a_killed_holder_is_taken_over_by_exactly_one_waiter"]
async fn waiting_holder_process() {
    let (Ok(url), Ok(schema)) = (std::env::var(URL_VAR), std::env::var(SCHEMA_VAR)) else {
        eprintln!("started by the SIGKILL test; nothing to do on its own");
        return;
    };
    let pool = common::pool(&url, &format!("{schema}_holder"), 2).await;
    let repository = PgRepository::with_schema(pool, &schema).unwrap();
    let manager: PgManager = Manager::new(repository);
    let op = operation(TARGET, KEY, "pay 10", |_: PgSession| async {
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{MARKER}")?;
            out.flush()?;
        }
        std::future::pending::<()>().await;
        Ok::<_, BoxError>("never".to_owned())
    });
    let out = manager.run(op.timeout(Duration::from_secs(600))).await;
    panic!("the holder should have been killed, but the call ended: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_is_taken_over_by_exactly_one_waiter() {
    const WAITERS: usize = 5;
    let db = TestDb::new().await;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "waiting_holder_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(URL_VAR, &db.url)
        .env(SCHEMA_VAR, &db.schema)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match within("the holder to claim", lines.next_line()).await {
            Ok(Some(line)) if line.contains(MARKER) => break,
            Ok(Some(_)) => {}
            other => panic!("the holder process ended before claiming: {other:?}"),
        }
    }
    let (manager, mut waiting) = watched(process(&db, "b").await);
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let (manager, op) = (manager.clone(), payment(db.schema.clone(), "retried", None));
            tokio::spawn(async move { manager.run_or_wait(op, LIMIT).await })
        })
        .collect();
    for _ in 0..WAITERS {
        within("the waiters to wait", waiting.recv())
            .await
            .expect("every waiter reports waiting");
    }
    child.start_kill().unwrap();
    assert_eq!(child.wait().await.unwrap().signal(), Some(9));
    // The holder's timeout passes (stored times shifted back).
    db.shift_back(Duration::from_secs(601)).await;
    let mut executed = 0;
    for waiter in waiters {
        match within("a waiter", waiter).await.unwrap() {
            Ok(Outcome::Executed(note)) if note == "retried" => executed += 1,
            Ok(Outcome::Replayed(note)) if note == "retried" => {}
            other => panic!("expected the retried payment, got {other:?}"),
        }
    }
    assert_eq!(executed, 1);
    assert_eq!(db.ledger().await, ["retried"]);
}
