//! A holder process killed with SIGKILL mid-operation: its record stays Running until its
//! timeout, its writes are gone, and a retry after the timeout runs the work once.
//!
//! The holder is this test binary itself, re-run on the ignored `holder_process` helper.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use ana_core::{BoxError, Error, IdempotencyRepository, Manager, Outcome, Status, operation};
use ana_mysql::sqlx;
use ana_mysql::{MySqlRepository, MySqlSession};
use common::TestDb;
use tokio::io::{AsyncBufReadExt, BufReader};

const TARGET: &str = "[POST]/payments";
const KEY: &str = "order-42";
const TIMEOUT: Duration = Duration::from_secs(600);
const MARKER: &str = "ANA_MYSQL_HOLDER_CLAIMED";
const URL_VAR: &str = "ANA_MYSQL_HOLDER_URL";
const DATABASE_VAR: &str = "ANA_MYSQL_HOLDER_DATABASE";

fn payment(
    note: &'static str,
    announce: bool,
) -> impl ana_core::Operation<MySqlSession, Payload = &'static str, Output = String, Error = BoxError>
{
    operation(
        TARGET,
        KEY,
        "pay 10",
        move |session: MySqlSession| async move {
            {
                let mut tx = session.transaction().await?;
                sqlx::query("INSERT INTO ledger (`key`, note) VALUES (?, ?)")
                    .bind(KEY)
                    .bind(note)
                    .execute(&mut *tx)
                    .await?;
            }
            if announce {
                {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{MARKER} attempt={}", session.attempt())?;
                    out.flush()?;
                }
                // Hold the claim (and the open transaction) until killed.
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(note.to_owned())
        },
    )
    .timeout(TIMEOUT)
}

/// Not a test on its own: the holder process of `a_killed_holder_process_...`, which runs
/// it with the server URL and database in its environment.
#[tokio::test]
#[ignore = "helper process, run by a_killed_holder_process_is_taken_over_after_its_timeout"]
async fn holder_process() {
    let (Ok(url), Ok(database)) = (std::env::var(URL_VAR), std::env::var(DATABASE_VAR)) else {
        eprintln!("holder_process is started by the SIGKILL test; nothing to do on its own");
        return;
    };
    let pool = common::pool(&url, &database, 2).await;
    let repository = MySqlRepository::new(pool);
    let manager: Manager<&'static str, String, MySqlSession> = Manager::new(repository);
    let out = manager.run(payment("killed holder", true)).await;
    panic!("the holder should have been killed while running, but the call ended: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_process_is_taken_over_after_its_timeout() {
    let db = TestDb::new().await;
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "holder_process",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(URL_VAR, &db.url)
        .env(DATABASE_VAR, &db.database)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        // The limit turns a holder that never claims into a failure instead of a hang.
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
        match line {
            // libtest may have written "test holder_process ... " on the same line.
            Ok(Ok(Some(line))) if line.contains(MARKER) => {
                assert!(line.ends_with(&format!("{MARKER} attempt=1")), "{line}");
                break;
            }
            Ok(Ok(Some(_))) => {}
            other => panic!("the holder process ended or stalled before claiming: {other:?}"),
        }
    }

    // The holder claimed and wrote in its open transaction: kill it, no chance to clean up.
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");

    let record = db.repository.get(TARGET, KEY).await.unwrap().unwrap();
    assert_eq!((record.status, record.attempt), (Status::Running, 1));
    // Its uncommitted write died with its connection (the server rolled it back when the
    // socket closed).
    assert!(db.ledger().await.is_empty());

    // Before the timeout a retry is told to wait.
    let manager: Manager<&'static str, String, MySqlSession> = Manager::new(db.repository.clone());
    let early = manager.run(payment("too early", false)).await;
    match &early {
        Err(Error::StillRunning {
            retry_after: Some(left),
            ..
        }) => {
            assert!(
                *left > TIMEOUT - Duration::from_secs(60) && *left <= TIMEOUT,
                "{left:?}"
            );
        }
        other => panic!("expected StillRunning, got {other:?}"),
    }
    assert_eq!(
        db.repository
            .get(TARGET, KEY)
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Running
    );

    // The timeout passes (stored times shifted back): the retry runs the work once.
    db.shift_back(TIMEOUT + Duration::from_secs(1)).await;
    let retry = manager.run(payment("retried", false)).await;
    assert!(
        matches!(&retry, Ok(Outcome::Executed(note)) if note == "retried"),
        "{retry:?}"
    );
    let again = manager.run(payment("replayed?", false)).await;
    assert!(
        matches!(&again, Ok(Outcome::Replayed(note)) if note == "retried"),
        "{again:?}"
    );

    assert_eq!(db.ledger().await, ["retried"]);
    let record = db.repository.get(TARGET, KEY).await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempt, record.error_count),
        (Status::Finished, 2, 0)
    );
}
