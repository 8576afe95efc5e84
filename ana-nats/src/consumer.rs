//! [`IdempotentConsumer`]: a JetStream pull consumer whose every message runs through a
//! [`Manager`], so a redelivered or republished message has its effect once.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use ana_core::{
    Attempt, Begun, Call, Error, Failure, FailureKind, Fingerprint, FingerprintHasher, Manager,
};
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::error::ConsumerError;
use crate::pause;

/// How a key is found for a message: the `Nats-Msg-Id` header, or the stream sequence.
type KeyFn = dyn Fn(&Message) -> Option<String> + Send + Sync;
type Hook = dyn Fn(&ConsumerEvent<'_>) + Send + Sync;

/// The header JetStream deduplicates on, and the consumer's default key.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// The default key of a message: its `Nats-Msg-Id` header, or `seq:<stream sequence>` when
/// it has none (unique within one stream, as long as the stream is not recreated).
pub fn default_key(message: &Message) -> Option<String> {
    let id = message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(MSG_ID_HEADER))
        .map(|id| id.as_str().to_owned())
        .filter(|id| !id.is_empty());
    match id {
        Some(id) => Some(id),
        None => message
            .info()
            .ok()
            .map(|info| format!("seq:{}", info.stream_sequence)),
    }
}

/// The payload fingerprint of a message: its subject and body. A key reused for another
/// subject or body is a poison message.
pub fn fingerprint(message: &async_nats::Message) -> Fingerprint {
    let mut hasher = FingerprintHasher::default();
    hasher.field(message.subject.as_bytes());
    hasher.field(&message.payload);
    hasher.finish()
}

/// What became of one delivery. Every delivery settles exactly once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Settlement {
    /// The handler ran and its record is Finished: acked.
    Executed,
    /// An earlier delivery's record is Finished: acked without running the handler.
    Replayed,
    /// Another delivery of the same key is running: nak'd with a delay.
    StillRunning,
    /// The handler returned an error or panicked: its record is Failed (its SQL rolled back),
    /// nak'd with a delay to be run again.
    Failed,
    /// The key was used before for another subject or body, the message has no key, or its
    /// record expired: terminated (never redelivered), logged as poison.
    Poison,
    /// The store could not be reached, or another attempt took the record over: nak'd with a
    /// delay; the redelivery finds out what happened.
    Retry,
}

impl Settlement {
    /// The name used in logs: `executed`, `replayed`, `still_running`, `failed`, `poison`,
    /// `retry`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::Replayed => "replayed",
            Self::StillRunning => "still_running",
            Self::Failed => "failed",
            Self::Poison => "poison",
            Self::Retry => "retry",
        }
    }
}

/// What the consumer reports to its [`on_event`](IdempotentConsumer::on_event) hook.
#[derive(Debug)]
#[non_exhaustive]
pub enum ConsumerEvent<'a> {
    /// The handler's record is Finished (with a SQL store: its SQL committed); the ack is
    /// sent next.
    Finished {
        /// The message's key.
        key: &'a str,
        /// The delivery.
        message: &'a Message,
    },
    /// The delivery was settled (acked, nak'd or terminated).
    Settled {
        /// The message's key, if it has one.
        key: Option<&'a str>,
        /// The delivery.
        message: &'a Message,
        /// What became of it.
        settlement: Settlement,
    },
}

/// An idempotent JetStream consumer: each message runs its handler through a [`Manager`]
/// under the key [`default_key`] (or [`with_key`](Self::with_key)) gives it, target = the
/// consumer's name (or [`with_target`](Self::with_target)).
///
/// - **Ack after the finish.** A message is acked only once its record is Finished: with
///   `ana-pg`, once the handler's SQL committed with it. A crash in between leaves the
///   message unacked; its redelivery finds the record Finished and is acked without running
///   the handler again (a replay).
/// - **In-flight duplicates** (a redelivery while the first delivery still runs, the same
///   key published twice) are nak'd with a delay: the smaller of the holder's time left and
///   [`with_retry_delay`](Self::with_retry_delay).
/// - **Poison.** A key reused with another subject or body (the payload fingerprint,
///   [`fingerprint`]) is terminated (`+TERM`, never redelivered) and logged at `warn`.
/// - **Failures.** A handler error or panic fails the record (its SQL rolled back) and naks
///   the message with [`with_retry_delay`](Self::with_retry_delay): it runs again on
///   redelivery, up to the consumer's `max_deliver`.
/// - **Long handlers** get an in-progress ack (`+WPI`) every third of the consumer's
///   `ack_wait`, so JetStream does not redeliver while they run.
/// - **Bounded concurrency**: at most [`with_concurrency`](Self::with_concurrency) messages
///   at a time (default 16).
/// - **Clean shutdown**: [`ConsumerHandle::shutdown`] stops pulling, lets the handlers at work
///   finish and settle their messages, then returns. Messages pulled but not started are
///   redelivered after `ack_wait`.
///
/// The record's timeout ([`with_timeout`](Self::with_timeout), default a minute) frees the key
/// of a consumer that crashed (or was aborted) while it held the record; until then the
/// redeliveries are nak'd as still running. Give the JetStream consumer a `max_deliver` that
/// allows for that, or none. A handler still running past the timeout may be taken over by a
/// redelivery: its finish is then refused (fenced) and, with a SQL store, its SQL rolled back.
pub struct IdempotentConsumer<R, Ctx> {
    manager: Manager<Fingerprint, R, Ctx>,
    consumer: PullConsumer,
    config: Config,
}

struct Config {
    target: String,
    key: Arc<KeyFn>,
    hook: Option<Arc<Hook>>,
    concurrency: usize,
    progress: Option<Duration>,
    timeout: Duration,
    retry_delay: Duration,
}

impl<R, Ctx> fmt::Debug for IdempotentConsumer<R, Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotentConsumer")
            .field("target", &self.config.target)
            .field("concurrency", &self.config.concurrency)
            .field("progress", &self.config.progress)
            .field("timeout", &self.config.timeout)
            .field("retry_delay", &self.config.retry_delay)
            .finish_non_exhaustive()
    }
}

impl<R, Ctx> IdempotentConsumer<R, Ctx>
where
    R: Send + Sync + 'static,
    Ctx: Clone + Send + Sync + 'static,
{
    /// An idempotent consumer of `consumer`'s messages through `manager`.
    pub fn new(manager: Manager<Fingerprint, R, Ctx>, consumer: PullConsumer) -> Self {
        let info = consumer.cached_info();
        let ack_wait = info.config.ack_wait;
        let progress = (!ack_wait.is_zero()).then(|| ack_wait / 3);
        let config = Config {
            target: info.name.clone(),
            key: Arc::new(default_key),
            hook: None,
            concurrency: 16,
            progress,
            timeout: Duration::from_secs(60),
            retry_delay: Duration::from_secs(1),
        };
        Self {
            manager,
            consumer,
            config,
        }
    }

    /// The records' target (default: the consumer's name). Two consumers with one target
    /// share their keys: a message handled by one is a replay for the other.
    #[must_use]
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.config.target = target.into();
        self
    }

    /// How a message's key is found (default: [`default_key`]). `None` or an empty key makes
    /// the message poison.
    #[must_use]
    pub fn with_key(
        mut self,
        key: impl Fn(&Message) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config.key = Arc::new(key);
        self
    }

    /// At most `concurrency` handlers at a time (default 16; at least 1).
    #[must_use]
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.config.concurrency = concurrency.max(1);
        self
    }

    /// How often a running handler's message gets an in-progress ack (default: a third of
    /// the consumer's `ack_wait`; `None`: never).
    #[must_use]
    pub fn with_progress_interval(mut self, interval: Option<Duration>) -> Self {
        self.config.progress = interval.filter(|i| !i.is_zero());
        self
    }

    /// How long a delivery holds its record before another may take over (default a
    /// minute): the time a crashed consumer blocks its messages. Keep it above the longest
    /// handler.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// The nak delay after a failure, and the longest one for an in-flight duplicate
    /// (default 1 s).
    #[must_use]
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.config.retry_delay = delay;
        self
    }

    /// Calls `hook` with every [`ConsumerEvent`]; it runs on the message's task, keep it
    /// short.
    #[must_use]
    pub fn on_event(mut self, hook: impl Fn(&ConsumerEvent<'_>) + Send + Sync + 'static) -> Self {
        self.config.hook = Some(Arc::new(hook));
        self
    }

    /// The records' target.
    pub fn target(&self) -> &str {
        &self.config.target
    }

    /// Starts consuming on a task of its own: each message runs `handler(message, session)`
    /// (for `ana-pg`, write through `session.transaction()`, do not commit), whose result is
    /// recorded. Stop it with [`ConsumerHandle::shutdown`].
    pub fn spawn<F, Fut, E>(self, handler: F) -> ConsumerHandle
    where
        F: Fn(async_nats::Message, Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(self.run(handler, stopped));
        ConsumerHandle { stop, task }
    }

    async fn run<F, Fut, E>(
        self,
        handler: F,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), ConsumerError>
    where
        F: Fn(async_nats::Message, Ctx) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, E>> + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let shared = Arc::new(Shared {
            manager: self.manager,
            config: self.config,
            handler,
        });
        let permits = Arc::new(Semaphore::new(shared.config.concurrency));
        let mut tasks = JoinSet::new();
        let mut messages = None;
        while !*stop.borrow() {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = stop.changed() => break,
                permit = Arc::clone(&permits).acquire_owned() => permit.map_err(|_| ConsumerError::Closed)?,
            };
            let stream = match &mut messages {
                Some(stream) => stream,
                None => {
                    let opened = self
                        .consumer
                        .stream()
                        .max_messages_per_batch(shared.config.concurrency)
                        .heartbeat(Duration::from_secs(5))
                        .expires(Duration::from_secs(30))
                        .messages()
                        .await;
                    match opened {
                        Ok(stream) => messages.insert(stream),
                        Err(error) => {
                            tracing::warn!(target: "ana_nats", %error, "cannot pull messages; trying again");
                            pause(&mut stop, shared.config.retry_delay).await;
                            continue;
                        }
                    }
                }
            };
            let next = tokio::select! {
                _ = stop.changed() => break,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(message)) => {
                    let shared = Arc::clone(&shared);
                    tasks.spawn(async move {
                        shared.process(message).await;
                        drop(permit);
                    });
                }
                Some(Err(error)) => {
                    // Missed heartbeats, a server restarting: the stream recovers by itself.
                    tracing::warn!(target: "ana_nats", %error, "pulling messages");
                }
                None => {
                    messages = None;
                    pause(&mut stop, shared.config.retry_delay).await;
                }
            }
        }
        // Stop pulling, then let the handlers at work finish and settle their messages.
        drop(messages);
        while tasks.join_next().await.is_some() {}
        shared.manager.flush().await;
        Ok(())
    }
}

/// A running [`IdempotentConsumer`].
#[derive(Debug)]
pub struct ConsumerHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), ConsumerError>>,
}

impl ConsumerHandle {
    /// Stops pulling messages, waits for the handlers at work to finish and settle their
    /// messages, and returns.
    ///
    /// # Errors
    ///
    /// [`ConsumerError::Panicked`] if the consumer's task panicked.
    pub async fn shutdown(self) -> Result<(), ConsumerError> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|_| ConsumerError::Panicked)?
    }

    /// Stops at once: handlers at work are dropped (their records failed, their messages
    /// redelivered after `ack_wait`). For tests of crashes.
    pub fn abort(self) {
        self.task.abort();
    }
}

/// What every message's task shares.
struct Shared<R, Ctx, F> {
    manager: Manager<Fingerprint, R, Ctx>,
    config: Config,
    handler: F,
}

impl<R, Ctx, F, Fut, E> Shared<R, Ctx, F>
where
    R: Send + Sync + 'static,
    Ctx: Clone + Send + Sync + 'static,
    F: Fn(async_nats::Message, Ctx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    async fn process(&self, message: Message) {
        let key = (self.config.key)(&message).filter(|key| !key.is_empty());
        let settlement = match &key {
            Some(key) => self.handle(key, &message).await,
            None => {
                tracing::warn!(
                    target: "ana_nats", subject = %message.subject, consumer = %self.config.target,
                    "poison message: no key; terminated"
                );
                (Settlement::Poison, AckKind::Term)
            }
        };
        let (settlement, ack) = settlement;
        if let Err(error) = message.ack_with(ack).await {
            // Unsettled: JetStream redelivers after `ack_wait`, and the record answers it.
            tracing::warn!(target: "ana_nats", %error, "settling a message");
        }
        self.report(&ConsumerEvent::Settled {
            key: key.as_deref(),
            message: &message,
            settlement,
        });
    }

    fn report(&self, event: &ConsumerEvent<'_>) {
        if let Some(hook) = &self.config.hook {
            hook(event);
        }
    }

    /// Claims the message's record, runs the handler if this delivery holds it, and says how
    /// to settle it.
    async fn handle(&self, key: &str, message: &Message) -> (Settlement, AckKind) {
        let call = Call::new(&self.config.target, key, fingerprint(message))
            .timeout(Some(self.config.timeout));
        let begun = self.manager.begin::<E>(call).await;
        match begun {
            Ok(Begun::Replayed(_)) => (Settlement::Replayed, AckKind::Ack),
            Ok(Begun::Acquired(attempt)) => self.execute(attempt, key, message).await,
            Err(error) => self.refused(&error, key, message),
        }
    }

    /// Runs the handler in the attempt, with in-progress acks, and finishes the attempt.
    async fn execute(
        &self,
        attempt: Attempt<'_, Fingerprint, R, Ctx>,
        key: &str,
        message: &Message,
    ) -> (Settlement, AckKind) {
        let work = run_caught(
            &self.handler,
            message.message.clone(),
            attempt.session().clone(),
        );
        let ran = with_progress(message, self.config.progress, work).await;
        let (kind, text) = match ran {
            Ok(Ok(value)) => {
                return match attempt.complete::<E>(&value).await {
                    Ok(()) => {
                        self.report(&ConsumerEvent::Finished { key, message });
                        (Settlement::Executed, AckKind::Ack)
                    }
                    // The work is recorded done, without a result to replay: acked.
                    Err(Error::Codec(error)) => {
                        tracing::error!(target: "ana_nats", %error, "result not stored; message acked");
                        (Settlement::Executed, AckKind::Ack)
                    }
                    Err(error) => self.refused(&error, key, message),
                };
            }
            Ok(Err(error)) => (FailureKind::Error, error.to_string()),
            Err(panic) => (
                FailureKind::Panic,
                Error::<E>::from_panic(&*panic).to_string(),
            ),
        };
        tracing::info!(target: "ana_nats", key, error = %text, "handler failed; message nak'd");
        // A record left Running (the store failed) is freed by its timeout.
        let _ = attempt.fail(Failure::new(kind, &text)).await;
        (
            Settlement::Failed,
            AckKind::Nak(Some(self.config.retry_delay)),
        )
    }

    /// How to settle a delivery the manager refused.
    fn refused(&self, error: &Error<E>, key: &str, message: &Message) -> (Settlement, AckKind) {
        match error {
            Error::StillRunning { retry_after, .. } => {
                let delay = retry_after.map_or(self.config.retry_delay, |left| {
                    left.min(self.config.retry_delay)
                });
                (Settlement::StillRunning, AckKind::Nak(Some(delay)))
            }
            Error::PayloadMismatch { .. } | Error::Expired { .. } => {
                tracing::warn!(
                    target: "ana_nats", subject = %message.subject, consumer = %self.config.target,
                    key, %error, "poison message; terminated"
                );
                (Settlement::Poison, AckKind::Term)
            }
            // A Finished record whose result does not decode: the work is done.
            Error::Codec(_) => (Settlement::Replayed, AckKind::Ack),
            _ => {
                tracing::warn!(target: "ana_nats", key, %error, "message not settled; redelivered later");
                (
                    Settlement::Retry,
                    AckKind::Nak(Some(self.config.retry_delay)),
                )
            }
        }
    }
}

/// The handler's future, its panics caught (raised while making the future or polling it).
async fn run_caught<F, Fut, R, E, Ctx>(
    handler: &F,
    message: async_nats::Message,
    session: Ctx,
) -> Result<Result<R, E>, Box<dyn Any + Send>>
where
    F: Fn(async_nats::Message, Ctx) -> Fut,
    Fut: Future<Output = Result<R, E>>,
{
    let future = std::panic::catch_unwind(AssertUnwindSafe(|| handler(message, session)))?;
    AssertUnwindSafe(future).catch_unwind().await
}

/// Runs `work`, sending an in-progress ack for `message` every `interval`.
async fn with_progress<T>(
    message: &Message,
    interval: Option<Duration>,
    work: impl Future<Output = T>,
) -> T {
    let Some(interval) = interval else {
        return work.await;
    };
    let mut work = std::pin::pin!(work);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = ticks.tick() => {
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(target: "ana_nats", %error, "in-progress ack");
                }
            }
        }
    }
}
