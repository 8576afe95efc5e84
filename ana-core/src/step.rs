//! [`to_the_end`]: a store's transaction step (`BEGIN`, `COMMIT`, `ROLLBACK`) that runs to its
//! end whether or not its caller still waits for it.

use std::future::Future;

use crate::repository::RepositoryError;

/// Runs `step` (a transaction's `BEGIN`, `COMMIT` or `ROLLBACK`) as a Tokio task of its own,
/// so that it runs to its end even if the caller stops waiting for it: a client hanging up on
/// a request drops the call's future, and with it whatever step of a transaction was in
/// flight.
///
/// A driver that counts a transaction open until its `COMMIT` has answered (sqlx does) sends
/// a `ROLLBACK` after a `COMMIT` dropped in flight, into a transaction that is over; one that
/// counts it only once `BEGIN` has answered puts a connection whose `BEGIN` was dropped in
/// flight back in its pool inside a transaction nobody ends. Run to its end, the step leaves
/// the connection as the driver believes it is: a transaction begun for nobody is dropped by
/// the task, which rolls it back before the connection is pooled again.
///
/// Without a Tokio runtime (sqlx's runtime is Tokio, so none of its steps can run there) the
/// step is waited for in place.
///
/// # Errors
///
/// [`RepositoryError::Backend`] when the task did not run to its end: it panicked, or the
/// runtime shut down under it. The step's own error is in its output.
///
/// The step starts at the first poll; from then on, dropping the returned future only stops
/// the wait.
///
/// ```
/// use tokio::sync::oneshot;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (started, start) = oneshot::channel();
/// let (release, released) = oneshot::channel::<()>();
/// let (ended, end) = oneshot::channel();
/// let step = ana_core::to_the_end(async move {
///     let _ = started.send(());
///     let _ = released.await;
///     let _ = ended.send("committed");
/// });
/// // The caller stops waiting once the step has started.
/// tokio::select! {
///     _ = step => unreachable!("the step waits for its release"),
///     _ = start => {}
/// }
/// let _ = release.send(());
/// assert_eq!(end.await, Ok("committed"));
/// # }
/// ```
pub async fn to_the_end<T: Send + 'static>(
    step: impl Future<Output = T> + Send + 'static,
) -> Result<T, RepositoryError> {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn(step)
            .await
            .map_err(|error| RepositoryError::Backend(Box::new(error))),
        Err(_) => Ok(step.await),
    }
}
