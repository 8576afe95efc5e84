//! NATS killed and restarted mid-stream: nothing lost, nothing doubled.
//!
//! The test starts a `nats-server -js` of its own on a free loopback port with its store in a
//! temporary directory, SIGKILLs it once the consumer is under way, and starts it again on the
//! same port and store. The publisher retries every publish until JetStream confirms it
//! (JetStream drops the copies through `Nats-Msg-Id`); the consumer reconnects by itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use ana_core::BoxError;
use ana_nats::async_nats::HeaderMap;
use ana_nats::async_nats::jetstream;
use ana_nats::{ConsumerEvent, IdempotentConsumer, Settlement};
use ana_pg::PgSession;
use common::{Db, NatsServer, Stream, within};
use tokio::sync::mpsc;

const MESSAGES: usize = 300;

/// Publishes message `n` until JetStream confirms it; says on `failed` when a try failed.
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    n: usize,
    failed: &mpsc::UnboundedSender<()>,
) {
    loop {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("m-{n}").as_str());
        let sent = js
            .publish_with_headers(subject.to_owned(), headers, n.to_string().into())
            .await;
        if let Ok(confirmation) = sent
            && confirmation.await.is_ok()
        {
            return;
        }
        let _ = failed.send(());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_mid_stream_loses_nothing_and_doubles_nothing() {
    let mut server = NatsServer::start();
    let db = Db::new().await;
    let stream = Stream::new(&server.url()).await;
    let pull = stream.consumer("restart", "", Duration::from_secs(2)).await;
    let (tx, mut settled) = mpsc::unbounded_channel();
    let schema = db.schema.clone();
    let handle = IdempotentConsumer::new(db.manager(), pull)
        .with_retry_delay(Duration::from_millis(200))
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
        .spawn(move |message, session: PgSession| {
            let schema = schema.clone();
            async move {
                let body = String::from_utf8_lossy(&message.payload).into_owned();
                common::write_effect(&schema, &session, &format!("m-{body}"), "paid").await?;
                Ok::<_, BoxError>(body)
            }
        });

    let (half_tx, half_rx) = tokio::sync::oneshot::channel();
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel();
    let (failed_tx, mut failed_rx) = mpsc::unbounded_channel();
    let publisher = {
        let (js, subject) = (stream.js.clone(), stream.subject("payments"));
        tokio::spawn(async move {
            for n in 0..MESSAGES {
                if n == MESSAGES / 2 {
                    // The second half goes out while the server is down, and after.
                    let _ = half_tx.send(());
                    let _ = killed_rx.await;
                    for n in n..MESSAGES {
                        publish(&js, &subject, n, &failed_tx).await;
                    }
                    return;
                }
                publish(&js, &subject, n, &failed_tx).await;
            }
        })
    };

    // Once a third is handled and half published, the server dies; it comes back once a
    // publish failed for want of it.
    within("half published", half_rx).await.unwrap();
    let mut executed = HashSet::new();
    while executed.len() < MESSAGES / 3 {
        let (key, settlement) = within("a settlement", settled.recv()).await.unwrap();
        if settlement == Settlement::Executed {
            assert!(executed.insert(key.clone()), "{key} executed twice");
        }
    }
    server.kill();
    killed_tx.send(()).unwrap();
    within("a failed publish", failed_rx.recv()).await.unwrap();
    server.restart();

    while executed.len() < MESSAGES {
        let (key, settlement) = within("a settlement after the restart", settled.recv())
            .await
            .unwrap();
        if settlement == Settlement::Executed {
            assert!(executed.insert(key.clone()), "{key} executed twice");
        }
    }
    within("the publisher", publisher).await.unwrap();
    handle.shutdown().await.unwrap();

    let effects = db.effects().await;
    let distinct: HashSet<_> = effects.iter().cloned().collect();
    assert_eq!((effects.len(), distinct.len()), (MESSAGES, MESSAGES));
    let info = stream
        .js
        .get_stream(&stream.name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, MESSAGES as u64, "published once each");
}
