//! What the [`Manager`](crate::Manager) runs: [`Operation`], and [`operation`] for closures.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::record::Payload;

/// One idempotent unit of work, identified by `(target, key)`.
///
/// Implement it on your own type (a queue message, a command), or build one from a closure
/// with [`operation`]. A [`timeout`](Self::timeout) or [`expiration`](Self::expiration) of
/// `None` means "never"; `Some(Duration::ZERO)` means zero (a record held by no time, a call
/// expired as soon as any time passed).
pub trait Operation<Ctx>: Send + Sized {
    /// The request data, fingerprinted to detect a key reused for another request.
    type Payload: Payload + ?Sized;
    /// The result, stored and replayed to later calls.
    type Output: Send;
    /// The operation's own error, returned unwrapped in
    /// [`Error::Operation`](crate::Error::Operation); its text is stored on the Failed record.
    type Error: fmt::Display + Send;

    /// What the key is scoped to (an operation name, a route, a queue).
    fn target(&self) -> &str;
    /// The caller's idempotency key.
    fn key(&self) -> &str;
    /// The request data.
    fn payload(&self) -> &Self::Payload;
    /// When the caller issued the request; `None` means now.
    fn reference_time(&self) -> Option<DateTime<Utc>> {
        None
    }
    /// How long one attempt holds the record before another call may take over (`None`:
    /// until it finishes).
    fn timeout(&self) -> Option<Duration> {
        None
    }
    /// How long after the reference time the operation may still run (`None`: forever).
    fn expiration(&self) -> Option<Duration> {
        None
    }
    /// Does the work, inside the store's session context.
    fn call(self, ctx: Ctx) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;
}

/// An [`Operation`] made of a closure; build it with [`operation`].
pub struct FnOperation<P, F> {
    target: String,
    key: String,
    payload: P,
    reference_time: Option<DateTime<Utc>>,
    timeout: Option<Duration>,
    expiration: Option<Duration>,
    call: F,
}

/// Builds a one-off [`Operation`] from a closure that receives the session context.
///
/// ```
/// use std::time::Duration;
/// use ana_core::{operation, MemorySession};
///
/// let op = operation("send-invoice", "order-42", "invoice #42", |_ctx: MemorySession| async {
///     Ok::<_, std::io::Error>("sent")
/// })
/// .timeout(Duration::from_secs(30))
/// .expiration(Duration::from_secs(24 * 3600));
/// # let _ = op;
/// ```
pub fn operation<P, F>(
    target: impl Into<String>,
    key: impl Into<String>,
    payload: P,
    call: F,
) -> FnOperation<P, F> {
    FnOperation {
        target: target.into(),
        key: key.into(),
        payload,
        reference_time: None,
        timeout: None,
        expiration: None,
        call,
    }
}

impl<P, F> FnOperation<P, F> {
    /// Sets the reference time (default: now).
    #[must_use]
    pub fn reference_time(mut self, at: DateTime<Utc>) -> Self {
        self.reference_time = Some(at);
        self
    }

    /// Sets how long one attempt holds the record (default: until it finishes).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets how long after the reference time the operation may run (default: forever).
    #[must_use]
    pub fn expiration(mut self, expiration: Duration) -> Self {
        self.expiration = Some(expiration);
        self
    }
}

impl<P: fmt::Debug, F> fmt::Debug for FnOperation<P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnOperation")
            .field("target", &self.target)
            .field("key", &self.key)
            .field("payload", &self.payload)
            .field("reference_time", &self.reference_time)
            .field("timeout", &self.timeout)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

impl<Ctx, P, F, Fut, R, E> Operation<Ctx> for FnOperation<P, F>
where
    P: Payload + Send,
    F: FnOnce(Ctx) -> Fut + Send,
    Fut: Future<Output = Result<R, E>> + Send,
    R: Send,
    E: fmt::Display + Send,
{
    type Payload = P;
    type Output = R;
    type Error = E;

    fn target(&self) -> &str {
        &self.target
    }

    fn key(&self) -> &str {
        &self.key
    }

    fn payload(&self) -> &P {
        &self.payload
    }

    fn reference_time(&self) -> Option<DateTime<Utc>> {
        self.reference_time
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn expiration(&self) -> Option<Duration> {
        self.expiration
    }

    fn call(self, ctx: Ctx) -> impl Future<Output = Result<R, E>> + Send {
        (self.call)(ctx)
    }
}
