//! The idempotent consumer against a real JetStream and Postgres: once per key, replays
//! acked, poison terminated, failures retried, in-flight duplicates nak'd, bounded
//! concurrency, clean shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ana_core::{BoxError, IdempotencyRepository, Status};
use ana_nats::async_nats::jetstream::Message;
use ana_nats::{ConsumerEvent, IdempotentConsumer, Settlement};
use ana_pg::PgSession;
use common::{Db, Stream, within};
use tokio::sync::{Notify, mpsc};

/// Settlements as they happen: `(key, settlement)`.
type Settled = mpsc::UnboundedReceiver<(String, Settlement)>;

/// A consumer on `stream`'s `subject` whose handler writes an effect per message (and fails
/// for bodies containing "fail" on their first delivery), reporting settlements.
fn consumer(
    db: &Db,
    consumer: ana_nats::async_nats::jetstream::consumer::PullConsumer,
) -> (IdempotentConsumer<String, PgSession>, Settled) {
    let (tx, rx) = mpsc::unbounded_channel();
    let consumer = IdempotentConsumer::new(db.manager(), consumer)
        .with_key(|message: &Message| {
            let headers = message.headers.as_ref()?;
            Some(headers.get("Order-Id")?.as_str().to_owned())
        })
        .with_retry_delay(Duration::from_millis(100))
        .on_event(move |event| {
            if let ConsumerEvent::Settled {
                key: Some(key),
                settlement,
                ..
            } = event
            {
                let _ = tx.send(((*key).to_owned(), *settlement));
            }
        });
    (consumer, rx)
}

async fn next(settled: &mut Settled) -> (String, Settlement) {
    within("a settlement", settled.recv()).await.unwrap()
}

fn effect_handler(
    schema: String,
) -> impl Fn(
    ana_nats::async_nats::Message,
    PgSession,
) -> std::pin::Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>
+ Send
+ Sync
+ 'static {
    move |message, session| {
        let schema = schema.clone();
        Box::pin(async move {
            let key = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Order-Id"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&message.payload).into_owned();
            common::write_effect(&schema, &session, &key, &body).await?;
            if body.contains("fail") && session.attempt() == 1 {
                return Err("failing on purpose".into());
            }
            Ok(format!("done {key}"))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_key_runs_once_and_duplicates_are_acked_as_replays() {
    let db = Db::new().await;
    let stream = Stream::new(&common::nats_url()).await;
    let pull = stream.consumer("once", "", Duration::from_secs(30)).await;
    let (consumer, mut settled) = consumer(&db, pull);
    let handle = consumer.spawn(effect_handler(db.schema.clone()));

    stream.publish("orders", &[("Order-Id", "a")], "book").await;
    assert_eq!(next(&mut settled).await, ("a".into(), Settlement::Executed));
    // The same order published again (another stream message, same key): replayed.
    stream.publish("orders", &[("Order-Id", "a")], "book").await;
    assert_eq!(next(&mut settled).await, ("a".into(), Settlement::Replayed));
    stream.publish("orders", &[("Order-Id", "b")], "pen").await;
    assert_eq!(next(&mut settled).await, ("b".into(), Settlement::Executed));

    handle.shutdown().await.unwrap();
    assert_eq!(db.effects().await, ["a", "b"]);
    let record = db.repository.get("once", "a").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Finished);
    let mut pull = stream.consumer("once", "", Duration::from_secs(30)).await;
    let info = pull.info().await.unwrap();
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_another_body_is_terminated_as_poison() {
    let db = Db::new().await;
    let stream = Stream::new(&common::nats_url()).await;
    let pull = stream.consumer("poison", "", Duration::from_secs(30)).await;
    let (consumer, mut settled) = consumer(&db, pull);
    let handle = consumer.spawn(effect_handler(db.schema.clone()));

    stream.publish("orders", &[("Order-Id", "a")], "book").await;
    assert_eq!(next(&mut settled).await, ("a".into(), Settlement::Executed));
    stream
        .publish("orders", &[("Order-Id", "a")], "a car")
        .await;
    assert_eq!(next(&mut settled).await, ("a".into(), Settlement::Poison));
    // The same body on another subject is another payload too.
    stream.publish("other", &[("Order-Id", "a")], "book").await;
    assert_eq!(next(&mut settled).await, ("a".into(), Settlement::Poison));

    handle.shutdown().await.unwrap();
    assert_eq!(db.effects().await, ["a"]);
    // Terminated: nothing pending, nothing to redeliver.
    let mut pull = stream.consumer("poison", "", Duration::from_secs(30)).await;
    let info = pull.info().await.unwrap();
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handler_is_rolled_back_and_runs_again_on_redelivery() {
    let db = Db::new().await;
    let stream = Stream::new(&common::nats_url()).await;
    let pull = stream
        .consumer("failing", "", Duration::from_secs(30))
        .await;
    let (consumer, mut settled) = consumer(&db, pull);
    let handle = consumer.spawn(effect_handler(db.schema.clone()));

    stream
        .publish("orders", &[("Order-Id", "f")], "fail once")
        .await;
    assert_eq!(next(&mut settled).await, ("f".into(), Settlement::Failed));
    assert_eq!(next(&mut settled).await, ("f".into(), Settlement::Executed));
    handle.shutdown().await.unwrap();

    // The first attempt's effect was rolled back with its failure.
    assert_eq!(db.effects().await, ["f"]);
    let record = db.repository.get("failing", "f").await.unwrap().unwrap();
    assert_eq!(
        (record.status, record.attempt, record.error_count),
        (Status::Finished, 2, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_of_a_running_message_is_nakd_then_replayed() {
    let db = Db::new().await;
    let stream = Stream::new(&common::nats_url()).await;
    let pull = stream
        .consumer("inflight", "", Duration::from_secs(30))
        .await;
    let (consumer, mut settled) = consumer(&db, pull);
    let release = Arc::new(Notify::new());
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let schema = db.schema.clone();
    let gate = Arc::clone(&release);
    let handle = consumer.spawn(move |message, session: PgSession| {
        let (schema, gate, started_tx) = (schema.clone(), Arc::clone(&gate), started_tx.clone());
        async move {
            common::write_effect(&schema, &session, "d", "slow").await?;
            let _ = started_tx.send(());
            gate.notified().await;
            let _ = message;
            Ok::<_, BoxError>("done".to_owned())
        }
    });

    stream.publish("orders", &[("Order-Id", "d")], "book").await;
    within("the first delivery", started.recv()).await.unwrap();
    stream.publish("orders", &[("Order-Id", "d")], "book").await;
    // The copy finds the first delivery running: nak'd, whatever number of times, until the
    // first delivery is released.
    assert_eq!(
        next(&mut settled).await,
        ("d".into(), Settlement::StillRunning)
    );
    release.notify_one();
    let mut seen = Vec::new();
    loop {
        let (_, settlement) = next(&mut settled).await;
        seen.push(settlement);
        if seen.contains(&Settlement::Executed) && seen.contains(&Settlement::Replayed) {
            break;
        }
        assert!(
            settlement == Settlement::StillRunning || settlement == Settlement::Executed,
            "{seen:?}"
        );
    }
    handle.shutdown().await.unwrap();
    assert_eq!(db.effects().await, ["d"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_the_configured_number_of_handlers_run_at_once() {
    const MESSAGES: usize = 12;
    let db = Db::new().await;
    let stream = Stream::new(&common::nats_url()).await;
    let pull = stream
        .consumer("bounded", "", Duration::from_secs(30))
        .await;
    let (consumer, _settled) = consumer(&db, pull);
    // Handlers hold until released; the test releases one each time one starts, from the
    // third on: with a bound of 3, three run at a time, never more.
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (r, m, gate) = (
        Arc::clone(&running),
        Arc::clone(&most),
        Arc::clone(&release),
    );
    let handle = consumer
        .with_concurrency(3)
        .spawn(move |_message, _session: PgSession| {
            let (r, m, gate, started_tx) = (
                Arc::clone(&r),
                Arc::clone(&m),
                Arc::clone(&gate),
                started_tx.clone(),
            );
            async move {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let _ = started_tx.send(());
                gate.acquire().await?.forget();
                r.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, BoxError>("done".to_owned())
            }
        });
    for i in 0..MESSAGES {
        let key = format!("k{i}");
        stream.publish("orders", &[("Order-Id", &key)], "x").await;
    }
    // Three start; each release lets one more start.
    for count in 1..=MESSAGES {
        within("a handler start", started.recv()).await.unwrap();
        if count >= 3 {
            release.add_permits(1);
        }
    }
    release.add_permits(MESSAGES);
    handle.shutdown().await.unwrap();
    assert_eq!(most.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_handlers_finish_and_ack() {
    let db = Db::new().await;
    let stream = Stream::new(&common::nats_url()).await;
    let pull = stream
        .consumer("shutdown", "", Duration::from_secs(30))
        .await;
    let (consumer, mut settled) = consumer(&db, pull);
    let release = Arc::new(Notify::new());
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let schema = db.schema.clone();
    let gate = Arc::clone(&release);
    let handle = consumer.spawn(move |_message, session: PgSession| {
        let (schema, gate, started_tx) = (schema.clone(), Arc::clone(&gate), started_tx.clone());
        async move {
            common::write_effect(&schema, &session, "s", "late").await?;
            let _ = started_tx.send(());
            gate.notified().await;
            Ok::<_, BoxError>("done".to_owned())
        }
    });
    stream.publish("orders", &[("Order-Id", "s")], "book").await;
    within("the handler start", started.recv()).await.unwrap();
    let shutdown = tokio::spawn(handle.shutdown());
    tokio::task::yield_now().await;
    assert!(!shutdown.is_finished());
    release.notify_one();
    within("the shutdown", shutdown).await.unwrap().unwrap();
    assert_eq!(
        settled.try_recv().unwrap(),
        ("s".into(), Settlement::Executed)
    );
    assert_eq!(db.effects().await, ["s"]);
    let mut pull = stream
        .consumer("shutdown", "", Duration::from_secs(30))
        .await;
    let info = pull.info().await.unwrap();
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_key_is_the_message_id_and_a_long_handler_is_kept_by_progress_acks() {
    let db = Db::new().await;
    let stream = Stream::new(&common::nats_url()).await;
    // A short ack wait: without in-progress acks the handler below would see its message
    // redelivered (and nak'd as still running).
    let pull = stream.consumer("long", "", Duration::from_secs(1)).await;
    let (tx, mut settled) = mpsc::unbounded_channel();
    let schema = db.schema.clone();
    let handle = IdempotentConsumer::new(db.manager(), pull)
        .on_event(move |event| {
            if let ConsumerEvent::Settled {
                key: Some(key),
                settlement,
                ..
            } = event
            {
                let _ = tx.send(((*key).to_owned(), *settlement));
            }
        })
        .spawn(move |_message, session: PgSession| {
            let schema = schema.clone();
            async move {
                common::write_effect(&schema, &session, "m-1", "long").await?;
                // The work itself takes three ack waits.
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok::<_, BoxError>("done".to_owned())
            }
        });
    stream
        .publish("orders", &[("Nats-Msg-Id", "m-1")], "book")
        .await;
    assert_eq!(
        next(&mut settled).await,
        ("m-1".into(), Settlement::Executed)
    );
    handle.shutdown().await.unwrap();
    assert!(settled.try_recv().is_err(), "redelivered while running");
    assert_eq!(db.effects().await, ["m-1"]);
    let record = db.repository.get("long", "m-1").await.unwrap().unwrap();
    assert_eq!((record.status, record.attempt), (Status::Finished, 1));
}
