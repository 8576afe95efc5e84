//! The outbox and its relay against a real JetStream and Postgres: messages go out only when
//! their operation commits, each with its id as `Nats-Msg-Id`, and several relays keep each
//! subject's order.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use ana_core::{BoxError, Error, Manager, operation};
use ana_nats::async_nats::jetstream::consumer::{DeliverPolicy, pull};
use ana_nats::{MSG_ID_HEADER, OutboxRelay};
use ana_pg::PgSession;
use ana_pg::outbox::{Outbox, OutboxError};
use common::{Db, Stream, within};
use futures_util::StreamExt;

/// Every message of the stream, in stream order: `(subject, Nats-Msg-Id, body)`.
async fn read_all(stream: &Stream, expected: usize) -> Vec<(String, String, String)> {
    let consumer = stream
        .js
        .get_stream(&stream.name)
        .await
        .unwrap()
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while out.len() < expected {
        let message = within("a stream message", messages.next())
            .await
            .unwrap()
            .unwrap();
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get(MSG_ID_HEADER))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        let body = String::from_utf8_lossy(&message.payload).into_owned();
        out.push((message.subject.to_string(), id, body));
        message.ack().await.unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_go_out_only_when_their_operation_commits() {
    let db = Db::new().await;
    let stream = Stream::new(&common::nats_url()).await;
    let outbox = Outbox::new(&db.repository);
    let manager: Manager<&str, String, PgSession> = Manager::new(db.repository.clone());
    let subject = stream.subject("orders");
    let send = |key: &'static str, fail: bool| {
        let (outbox, subject) = (outbox.clone(), subject.clone());
        operation("send", key, "body", move |session: PgSession| async move {
            let id = outbox.append(&session, &subject, key.as_bytes()).await?;
            if fail {
                return Err::<String, BoxError>("declined".into());
            }
            Ok(id)
        })
    };
    let id = manager.call(send("kept", false)).await.unwrap();
    let failed = manager.call(send("rolled-back", true)).await;
    assert!(matches!(failed, Err(Error::Operation(_))), "{failed:?}");
    // A bad subject is refused before anything is written.
    let bad = outbox
        .append_on(&mut db.pool.acquire().await.unwrap(), "a b", b"x")
        .await;
    assert!(
        matches!(bad, Err(OutboxError::InvalidSubject(_))),
        "{bad:?}"
    );
    assert_eq!(outbox.pending().await.unwrap(), 1);

    let relay = OutboxRelay::new(outbox.clone(), stream.js.clone());
    assert_eq!(relay.relay_once().await.unwrap(), 1);
    assert_eq!(relay.relay_once().await.unwrap(), 0);
    assert_eq!(
        read_all(&stream, 1).await,
        [(subject.clone(), id, "kept".to_owned())]
    );
    assert_eq!(outbox.pending().await.unwrap(), 0);
    // Sent messages are deleted once older than the retention.
    assert_eq!(
        outbox
            .delete_sent(Duration::from_secs(3600), 10)
            .await
            .unwrap(),
        0
    );
    assert_eq!(outbox.delete_sent(Duration::ZERO, 10).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_relays_publish_each_message_once_and_keep_each_subjects_order() {
    const SUBJECTS: usize = 4;
    const PER_SUBJECT: usize = 60;
    let db = Db::new().await;
    let stream = Stream::new(&common::nats_url()).await;
    let outbox = Outbox::new(&db.repository);
    // Appended one transaction after another, subjects interleaved.
    for n in 0..PER_SUBJECT {
        let mut tx = db.pool.begin().await.unwrap();
        for s in 0..SUBJECTS {
            let subject = stream.subject(&format!("s{s}"));
            outbox
                .append_on(&mut tx, &subject, n.to_string().as_bytes())
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let relays: Vec<_> = (0..3)
        .map(|_| {
            OutboxRelay::new(outbox.clone(), stream.js.clone())
                .with_batch_size(7)
                .with_poll_interval(Duration::from_millis(10))
                .spawn()
        })
        .collect();
    let messages = read_all(&stream, SUBJECTS * PER_SUBJECT).await;
    for relay in relays {
        relay.shutdown().await.unwrap();
    }
    assert_eq!(outbox.pending().await.unwrap(), 0);
    let mut by_subject: HashMap<String, Vec<usize>> = HashMap::new();
    let mut ids = std::collections::HashSet::new();
    for (subject, id, body) in messages {
        assert!(ids.insert(id), "a message published twice");
        by_subject
            .entry(subject)
            .or_default()
            .push(body.parse().unwrap());
    }
    assert_eq!(by_subject.len(), SUBJECTS);
    let in_order: Vec<usize> = (0..PER_SUBJECT).collect();
    for (subject, bodies) in by_subject {
        assert_eq!(bodies, in_order, "{subject}");
    }
    // Nothing more arrives: the stream holds exactly the messages read.
    let info = stream
        .js
        .get_stream(&stream.name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, (SUBJECTS * PER_SUBJECT) as u64);
}
