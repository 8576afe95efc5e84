//! [`OutboxRelay`]: publishes an `ana-pg` [`Outbox`] to JetStream.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ana_pg::outbox::{Outbox, OutboxMessage};
use async_nats::jetstream::message::PublishMessage;
use tokio::sync::watch;

use crate::pause;

use crate::error::RelayError;

type Hook = dyn Fn(&RelayEvent<'_>) + Send + Sync;

/// What the relay reports to its [`on_event`](OutboxRelay::on_event) hook.
#[derive(Debug)]
#[non_exhaustive]
pub enum RelayEvent<'a> {
    /// JetStream confirmed every message of a batch; the batch is marked sent next.
    Published {
        /// The batch's messages, in order.
        messages: &'a [OutboxMessage],
        /// How many of them JetStream already had (a batch published again after a crash,
        /// inside the stream's duplicate window).
        duplicates: usize,
    },
    /// A batch is marked sent.
    Sent {
        /// How many messages it held.
        count: usize,
    },
}

/// Publishes the messages of an [`Outbox`] to JetStream, each with `Nats-Msg-Id` = its
/// [`id`](OutboxMessage::id), and marks them sent.
///
/// - A batch is published, every publish confirmed by JetStream, and only then marked sent.
///   A relay that crashes in between publishes the batch again; JetStream drops the copies
///   that arrive within the stream's duplicate window (2 minutes by default: keep it longer
///   than a relay takes to come back), and an [`IdempotentConsumer`](crate::IdempotentConsumer)
///   keyed on `Nats-Msg-Id` drops any that arrive later.
/// - Any number of relays may run on one outbox (see [`ana_pg::outbox`] for the order kept:
///   per subject, in commit order).
/// - A publish JetStream refuses or does not confirm fails the whole batch, which is taken
///   again after [`with_poll_interval`](Self::with_poll_interval).
pub struct OutboxRelay {
    outbox: Outbox,
    jetstream: async_nats::jetstream::Context,
    batch_size: u32,
    poll_interval: Duration,
    retention: Option<Duration>,
    hook: Option<Arc<Hook>>,
}

impl fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("outbox", &self.outbox)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl OutboxRelay {
    /// A relay of `outbox` to `jetstream`: batches of 100, polled every 100 ms when idle,
    /// sent messages kept an hour.
    pub fn new(outbox: Outbox, jetstream: async_nats::jetstream::Context) -> Self {
        Self {
            outbox,
            jetstream,
            batch_size: 100,
            poll_interval: Duration::from_millis(100),
            retention: Some(Duration::from_secs(3600)),
            hook: None,
        }
    }

    /// At most `size` messages a batch (default 100; at least 1).
    #[must_use]
    pub fn with_batch_size(mut self, size: u32) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// How long an idle or failed relay waits before it looks again (default 100 ms).
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long sent messages are kept before an idle relay deletes them (default an hour;
    /// `None`: kept, delete them with [`Outbox::delete_sent`]).
    #[must_use]
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Calls `hook` with every [`RelayEvent`].
    #[must_use]
    pub fn on_event(mut self, hook: impl Fn(&RelayEvent<'_>) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Relays one batch: how many messages were published and marked sent (0: nothing was
    /// pending).
    ///
    /// # Errors
    ///
    /// [`RelayError`]: the batch stays pending.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let Some(batch) = self.outbox.next_batch(self.batch_size).await? else {
            return Ok(0);
        };
        // Sent in order on one connection, then confirmed.
        let mut confirmations = Vec::with_capacity(batch.messages().len());
        for message in batch.messages() {
            let publish = PublishMessage::build()
                .payload(message.payload.clone().into())
                .message_id(&message.id);
            let sent = self
                .jetstream
                .send_publish(message.subject.clone(), publish)
                .await?;
            confirmations.push(sent);
        }
        let mut duplicates = 0;
        for confirmation in confirmations {
            duplicates += usize::from(confirmation.await?.duplicate);
        }
        self.report(&RelayEvent::Published {
            messages: batch.messages(),
            duplicates,
        });
        let count = batch.messages().len();
        batch.mark_sent().await?;
        self.report(&RelayEvent::Sent { count });
        Ok(count)
    }

    fn report(&self, event: &RelayEvent<'_>) {
        if let Some(hook) = &self.hook {
            hook(event);
        }
    }

    /// Relays on a task of its own until [`RelayHandle::shutdown`].
    pub fn spawn(self) -> RelayHandle {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(self.run(stopped));
        RelayHandle { stop, task }
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            match self.relay_once().await {
                Ok(0) => {
                    self.delete_sent().await;
                    pause(&mut stop, self.poll_interval).await;
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(target: "ana_nats", %error, "outbox batch not relayed; trying again");
                    pause(&mut stop, self.poll_interval).await;
                }
            }
        }
    }

    async fn delete_sent(&self) {
        let Some(retention) = self.retention else {
            return;
        };
        if let Err(error) = self.outbox.delete_sent(retention, 1000).await {
            tracing::warn!(target: "ana_nats", %error, "deleting sent outbox messages");
        }
    }
}

/// A running [`OutboxRelay`].
#[derive(Debug)]
pub struct RelayHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RelayHandle {
    /// Stops after the batch in flight, if any, is relayed.
    ///
    /// # Errors
    ///
    /// [`RelayError::Panicked`] if the relay's task panicked.
    pub async fn shutdown(self) -> Result<(), RelayError> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|_| RelayError::Panicked)
    }
}
