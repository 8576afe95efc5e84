//! Processes SIGKILLed at the worst moment:
//! - a consumer after its commit and before its ack: the redelivery replays, one effect;
//! - a relay after publishing and before marking sent: the republish is dropped by
//!   JetStream's duplicate window, one message.
//!
//! The processes are this test binary itself, re-run on an ignored helper test which blocks
//! at the moment in question (a hook of the consumer or relay) and says so on stdout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use ana_core::{BoxError, IdempotencyRepository, Manager, Status, operation};
use ana_nats::async_nats::jetstream;
use ana_nats::{ConsumerEvent, IdempotentConsumer, OutboxRelay, RelayEvent, Settlement};
use ana_pg::PgSession;
use ana_pg::outbox::Outbox;
use common::{Db, Stream, within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

const MARKER: &str = "ANA_NATS_CHILD_AT_THE_POINT";
const SCHEMA_VAR: &str = "ANA_NATS_CHILD_SCHEMA";
const STREAM_VAR: &str = "ANA_NATS_CHILD_STREAM";
const DURABLE: &str = "payments";

/// Says it reached the point, then blocks its thread until killed.
fn announce_and_hang() -> ! {
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{MARKER}");
        let _ = out.flush();
    }
    loop {
        std::thread::park();
    }
}

fn child_env() -> Option<(String, String)> {
    Some((
        std::env::var(SCHEMA_VAR).ok()?,
        std::env::var(STREAM_VAR).ok()?,
    ))
}

/// Runs this binary's ignored test `name` with the schema and stream in its environment,
/// and waits until it reached its point.
async fn run_child(name: &str, db: &Db, stream: &Stream) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SCHEMA_VAR, &db.schema)
        .env(STREAM_VAR, &stream.name)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match within("the child's marker", lines.next_line()).await {
            // libtest may have written "test <name> ... " on the same line.
            Ok(Some(line)) if line.contains(MARKER) => return child,
            Ok(Some(_)) => {}
            other => panic!("the child ended before its point: {other:?}"),
        }
    }
}

async fn kill(mut child: tokio::process::Child) {
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "{status:?}");
}

/// The handler of the consumer tests: one effect per message, keyed by its id.
async fn pay(schema: &str, session: PgSession) -> Result<String, BoxError> {
    common::write_effect(schema, &session, "m-1", "paid").await?;
    Ok("paid".to_owned())
}

/// Not a test on its own: the consumer process of
/// `a_consumer_killed_after_its_commit_and_before_its_ack_...`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process, run by a_consumer_killed_after_its_commit_..."]
async fn consumer_process() {
    let Some((schema, stream)) = child_env() else {
        eprintln!("consumer_process is started by the SIGKILL test; nothing to do on its own");
        return;
    };
    let db = Db::with_schema(schema.clone()).await;
    let js = jetstream::new(common::connect(&common::nats_url()).await);
    let pull = js
        .get_stream(&stream)
        .await
        .unwrap()
        .get_consumer(DURABLE)
        .await
        .unwrap();
    let handle = IdempotentConsumer::new(db.manager(), pull)
        .on_event(|event| {
            if let ConsumerEvent::Finished { .. } = event {
                // Committed, not yet acked.
                announce_and_hang();
            }
        })
        .spawn(move |_message, session| {
            let schema = schema.clone();
            async move { pay(&schema, session).await }
        });
    // The hook hangs at the point; the test kills this process there.
    std::future::pending::<()>().await;
    drop(handle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_after_its_commit_and_before_its_ack_is_replayed_on_redelivery() {
    let db = Db::new().await;
    let stream = Stream::new(&common::nats_url()).await;
    // A short ack wait: the redelivery comes a second after the kill.
    let pull = stream.consumer(DURABLE, "", Duration::from_secs(1)).await;
    stream
        .publish("payments", &[("Nats-Msg-Id", "m-1")], "10 EUR")
        .await;

    let child = run_child("consumer_process", &db, &stream).await;
    kill(child).await;
    // Committed: the effect and the Finished record; the message is still unacked.
    assert_eq!(db.effects().await, ["m-1"]);
    let record = db.repository.get(DURABLE, "m-1").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Finished);

    let (tx, mut settled) = mpsc::unbounded_channel();
    let schema = db.schema.clone();
    let handle = IdempotentConsumer::new(db.manager(), pull)
        .on_event(move |event| {
            if let ConsumerEvent::Settled { settlement, .. } = event {
                let _ = tx.send(*settlement);
            }
        })
        .spawn(move |_message, session| {
            let schema = schema.clone();
            async move { pay(&schema, session).await }
        });
    let settlement = within("the redelivery", settled.recv()).await.unwrap();
    handle.shutdown().await.unwrap();
    assert_eq!(settlement, Settlement::Replayed);
    assert_eq!(db.effects().await, ["m-1"]);
    let mut pull = stream.consumer(DURABLE, "", Duration::from_secs(1)).await;
    let info = pull.info().await.unwrap();
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
}

/// Not a test on its own: the relay process of `a_relay_killed_after_publishing_...`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process, run by a_relay_killed_after_publishing_..."]
async fn relay_process() {
    let Some((schema, _stream)) = child_env() else {
        eprintln!("relay_process is started by the SIGKILL test; nothing to do on its own");
        return;
    };
    let db = Db::with_schema(schema).await;
    let js = jetstream::new(common::connect(&common::nats_url()).await);
    let relay = OutboxRelay::new(Outbox::new(&db.repository), js).on_event(|event| {
        if let RelayEvent::Published { .. } = event {
            // Confirmed by JetStream, not yet marked sent.
            announce_and_hang();
        }
    });
    let _ = relay.relay_once().await;
    panic!("the relay should have been killed before marking the batch sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_after_publishing_and_before_marking_sends_each_message_once() {
    let db = Db::new().await;
    let stream = Stream::new(&common::nats_url()).await;
    let outbox = Outbox::new(&db.repository);
    // An operation appends three messages, committed with its record.
    let manager: Manager<&str, (), PgSession> = Manager::new(db.repository.clone());
    let subject = stream.subject("payments");
    let appender = outbox.clone();
    manager
        .call(operation(
            "pay",
            "p-1",
            "10 EUR",
            move |session: PgSession| async move {
                for n in 1..=3 {
                    appender
                        .append(&session, &subject, format!("{n}").as_bytes())
                        .await?;
                }
                Ok::<_, BoxError>(())
            },
        ))
        .await
        .unwrap();
    assert_eq!(outbox.pending().await.unwrap(), 3);

    let child = run_child("relay_process", &db, &stream).await;
    kill(child).await;
    // Published, not marked.
    assert_eq!(stream.count("payments").await, 3);
    assert_eq!(outbox.pending().await.unwrap(), 3);

    // The next relay publishes them again: JetStream drops every copy.
    let (tx, mut published) = mpsc::unbounded_channel();
    let js = jetstream::new(common::connect(&common::nats_url()).await);
    let relay = OutboxRelay::new(outbox.clone(), js).on_event(move |event| {
        if let RelayEvent::Published { duplicates, .. } = event {
            let _ = tx.send(*duplicates);
        }
    });
    assert_eq!(relay.relay_once().await.unwrap(), 3);
    assert_eq!(published.try_recv().unwrap(), 3);
    assert_eq!(stream.count("payments").await, 3);
    assert_eq!(outbox.pending().await.unwrap(), 0);
    assert_eq!(relay.relay_once().await.unwrap(), 0);
}
