//! The errors of the consumer and the relay.

/// Why an [`IdempotentConsumer`](crate::IdempotentConsumer) stopped other than by its
/// shutdown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The consumer's task panicked or was aborted.
    #[error("the consumer's task panicked or was aborted")]
    Panicked,
    /// The consumer's concurrency limit was closed.
    #[error("the consumer's concurrency limit was closed")]
    Closed,
}

/// Why a batch of the outbox was not relayed. Its messages stay pending and go out with a
/// later batch (their ids make JetStream drop the copies it already has).
#[cfg(feature = "pg")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The outbox could not be read or marked.
    #[error("the outbox: {0}")]
    Outbox(#[from] ana_core::RepositoryError),
    /// JetStream refused a message or did not confirm it in time.
    #[error("publishing to JetStream: {0}")]
    Publish(#[from] async_nats::jetstream::context::PublishError),
    /// The relay's task panicked or was aborted.
    #[error("the relay's task panicked or was aborted")]
    Panicked,
}
