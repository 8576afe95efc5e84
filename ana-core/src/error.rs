//! The [`Error`] of a managed call.

use std::time::Duration;

use crate::repository::{BoxError, RepositoryError};

/// Why [`Manager::call`](crate::Manager::call) did not return a result.
///
/// `E` is the operation's own error, returned unwrapped as [`Error::Operation`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error<E> {
    /// The call's reference time plus its expiration, or the stored record's expiration, has
    /// passed; or it passed while the operation ran, and its work was rolled back.
    #[error("Operation {target} expired for key {key}.")]
    Expired {
        /// The operation's target.
        target: String,
        /// The idempotency key.
        key: String,
    },
    /// Another attempt holds the record. Nothing waited on it.
    #[error("Operation {target} still running for key {key}.")]
    StillRunning {
        /// The operation's target.
        target: String,
        /// The idempotency key.
        key: String,
        /// Time left before the holder's timeout (`None`: it has none), for `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The key was first used with a different payload.
    #[error("Operation {target} was called for key {key} with a different payload.")]
    PayloadMismatch {
        /// The operation's target.
        target: String,
        /// The idempotency key.
        key: String,
    },
    /// The operation panicked; the message is `Got panic "<value>"`.
    #[error("{message}")]
    Panic {
        /// `Got panic "<value>"`.
        message: String,
    },
    /// Another attempt took the record over after this one's timeout: this attempt's work was
    /// rolled back (where the store shares a transaction) and its result discarded.
    #[error(
        "Operation {target} was superseded for key {key}: another attempt took over after the timeout."
    )]
    Superseded {
        /// The operation's target.
        target: String,
        /// The idempotency key.
        key: String,
    },
    /// The call asked for a timeout below the manager's minimum
    /// ([`Manager::with_min_timeout`](crate::Manager::with_min_timeout)); the store was not
    /// touched and the operation did not run.
    #[error(
        "Operation {target} for key {key} asked for a timeout of {timeout:?}, below the minimum of {min:?}."
    )]
    TimeoutTooShort {
        /// The operation's target.
        target: String,
        /// The idempotency key.
        key: String,
        /// The timeout asked for.
        timeout: Duration,
        /// The manager's minimum.
        min: Duration,
    },
    /// The operation's own error.
    #[error("{0}")]
    Operation(E),
    /// The store failed.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    /// The result could not be encoded for storage (the run is recorded done all the same, a
    /// Finished record without a result), or a stored result could not be decoded.
    #[error("the operation's result could not be encoded or decoded")]
    Codec(#[source] BoxError),
}

impl<E> Error<E> {
    /// The error of an operation that panicked with `payload`: [`Error::Panic`] with the
    /// message `Got panic "<value>"` (the value when it is a string).
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        Self::Panic {
            message: crate::manager::panic_text(payload),
        }
    }

    /// The operation's own error, if this is one.
    pub fn into_operation_error(self) -> Option<E> {
        match self {
            Self::Operation(error) => Some(error),
            _ => None,
        }
    }
}
