//! # ana-nats
//!
//! Exactly-once effects over NATS JetStream's at-least-once delivery.
//!
//! - [`IdempotentConsumer`] runs every message of a JetStream pull consumer through an
//!   [`ana_core::Manager`], keyed by its `Nats-Msg-Id` header (its stream sequence when it
//!   has none, or a key function of yours): a redelivered or republished message has its
//!   effect once. With `ana-pg` the handler's SQL commits in the same transaction as the
//!   record, and the message is acked only after that commit.
//! - [`OutboxRelay`] (feature `pg`, on by default) publishes `ana-pg`'s transactional
//!   [`Outbox`](ana_pg::outbox::Outbox): the handler appends its outgoing messages through its
//!   session, so they commit with its effects; the relay publishes them with
//!   `Nats-Msg-Id` = the outbox row's id, so JetStream's duplicate window drops a copy
//!   published again after a relay crash, and marks them sent.
//!
//! ```text
//!  JetStream ──msg──▶ IdempotentConsumer ── claim (target = consumer, key = Nats-Msg-Id)
//!                        │  Finished earlier ──────────────────────────▶ +ACK (replay)
//!                        │  other subject/body under the key ──────────▶ +TERM (poison)
//!                        │  another delivery running ──────────────────▶ NAK, delay
//!                        └▶ handler(msg, session): SQL + outbox.append   (+WPI while it runs)
//!                             ok ─▶ COMMIT (SQL, outbox rows, record) ─▶ +ACK
//!                             error/panic ─▶ ROLLBACK, record Failed ──▶ NAK, delay
//!  OutboxRelay: SELECT pending … FOR UPDATE SKIP LOCKED ─▶ publish (Nats-Msg-Id = row id)
//!               ─▶ every publish confirmed ─▶ mark sent, COMMIT
//! ```
//!
//! ## Example
//!
//! ```no_run
//! use std::time::Duration;
//! use ana_core::{BoxError, Fingerprint, Manager};
//! use ana_nats::{IdempotentConsumer, OutboxRelay};
//! use ana_pg::outbox::Outbox;
//! use ana_pg::{PgRepository, PgSession, sqlx};
//! use async_nats::jetstream::{self, consumer::pull, stream};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/test").await?;
//! let repository = PgRepository::new(pool);
//! repository.migrate().await?; // the records and the outbox
//! let outbox = Outbox::new(&repository);
//!
//! let js = jetstream::new(async_nats::connect("127.0.0.1:4222").await?);
//! let stream = js
//!     .get_or_create_stream(stream::Config {
//!         name: "ORDERS".into(),
//!         subjects: vec!["orders.>".into(), "credit.>".into()],
//!         ..Default::default()
//!     })
//!     .await?;
//! let consumer = stream
//!     .get_or_create_consumer("credit", pull::Config {
//!         durable_name: Some("credit".into()),
//!         filter_subject: "orders.created".into(),
//!         ack_wait: Duration::from_secs(30),
//!         ..Default::default()
//!     })
//!     .await?;
//!
//! // Relays what the handlers append.
//! let relay = OutboxRelay::new(outbox.clone(), js.clone()).spawn();
//!
//! let manager: Manager<Fingerprint, (), PgSession> = Manager::new(repository);
//! let consumer = IdempotentConsumer::new(manager, consumer).spawn(move |message, session: PgSession| {
//!     let outbox = outbox.clone();
//!     async move {
//!         {
//!             let mut tx = session.transaction().await?;
//!             sqlx::query("UPDATE accounts SET reserved = reserved + 1 WHERE id = 1")
//!                 .execute(&mut *tx)
//!                 .await?;
//!         }
//!         // Published only if the UPDATE and the record commit.
//!         outbox.append(&session, "credit.reserved", &message.payload).await?;
//!         Ok::<_, BoxError>(())
//!     }
//! });
//!
//! // ... until the application stops:
//! consumer.shutdown().await?;
//! relay.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! ## Decisions
//!
//! - **Key.** `Nats-Msg-Id` when present and non-empty (a publisher's id survives its own
//!   retries and JetStream's duplicate window), else `seq:<stream sequence>` (a redelivery
//!   keeps it; a republish does not). [`IdempotentConsumer::with_key`] takes a function of the
//!   message instead (a business id from a header or the body).
//! - **Payload.** The record's fingerprint is the message's subject and body ([`fingerprint`]);
//!   headers are not part of it (tracing headers differ between copies).
//! - **Target.** The JetStream consumer's name: two consumers of one stream each have the
//!   message's effect once. Share a target between consumers to share their records.
//! - **Result.** The handler's value is recorded like any operation's result (`R` of the
//!   [`Manager`](ana_core::Manager)); a replay acks without reading it back into the handler.
//! - **Store.** Any [`IdempotencyRepository`](ana_core::IdempotencyRepository) works; only a
//!   transactional store (`ana-pg`) commits the handler's SQL with the record. The outbox is
//!   `ana-pg`'s so far; the other SQL stores are to follow.
//! - **Delays.** A nak carries a delay ([`IdempotentConsumer::with_retry_delay`], 1 s): a
//!   duplicate of a running message comes back once the holder is likely done, a failure does
//!   not spin.

mod consumer;
mod error;
#[cfg(feature = "pg")]
mod relay;

pub use consumer::{
    ConsumerEvent, ConsumerHandle, IdempotentConsumer, MSG_ID_HEADER, Settlement, default_key,
    fingerprint,
};
pub use error::ConsumerError;
#[cfg(feature = "pg")]
pub use error::RelayError;
#[cfg(feature = "pg")]
pub use relay::{OutboxRelay, RelayEvent, RelayHandle};

/// The NATS client this crate is built on, so applications use the same version.
pub use async_nats;

use std::time::Duration;

use tokio::sync::watch;

/// Waits `delay`, or less if asked to stop.
async fn pause(stop: &mut watch::Receiver<bool>, delay: Duration) {
    tokio::select! {
        _ = stop.changed() => {}
        () = tokio::time::sleep(delay) => {}
    }
}

// This crate's README runs as doc tests, so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
