//! Conformance cases of waiting on a holder and renewing leases.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{
    Declined, HOUR, Harness, MINUTE, TARGET, TestManager, advance, count, counter, counting,
    executed, gated, manager, record, replayed, running, seeded,
};
use crate::clock::Clock;
use crate::error::Error;
use crate::manager::Outcome;
use crate::observe::EventKind;
use crate::record::{Payload, Status};
use crate::repository::{
    Claim, ClaimRequest, Completion, IdempotencyRepository, Lease, RecordId, Renewal,
};

/// A manager of the harness, and the receiving end of its [`EventKind::Waiting`] events.
fn watched<H: Harness>(harness: &H) -> (TestManager<H>, mpsc::UnboundedReceiver<()>) {
    let (waiting, waited) = mpsc::unbounded_channel();
    let manager = manager(harness).on_event(move |event| {
        if event.kind == EventKind::Waiting {
            let _ = waiting.send(());
        }
    });
    (manager, waited)
}

/// Returns once `calls` calls reported that they wait.
async fn all_waiting(waited: &mut mpsc::UnboundedReceiver<()>, calls: usize) {
    for _ in 0..calls {
        if waited.recv().await.is_none() {
            panic!("the manager was dropped before every call waited");
        }
    }
}

/// A hundred calls waiting on one holder all replay its answer once it finishes: one run.
pub async fn waiters_replay_the_holders_answer<H: Harness>(harness: H) {
    const WAITERS: usize = 100;
    let (manager, mut waited) = watched(&harness);
    let runs = counter();
    let (holder, release) = running(&manager, &runs, "first").await;
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let (manager, op) = (manager.clone(), counting(&runs, "k", "payload", "second"));
            tokio::spawn(async move { manager.run_or_wait(op, HOUR).await })
        })
        .collect();
    all_waiting(&mut waited, WAITERS).await;
    let _ = release.send(());
    assert_eq!(executed(joined(holder).await), "first");
    for waiter in waiters {
        assert_eq!(replayed(joined(waiter).await), "first");
    }
    assert_eq!(count(&runs), 1);
}

/// A call whose wait runs out answers StillRunning with the time left on the holder's lease.
pub async fn a_wait_that_runs_out_is_still_running<H: Harness>(harness: H) {
    let manager = manager(&harness);
    let runs = counter();
    let (started, started_rx) = oneshot::channel();
    let (release, release_rx) = oneshot::channel();
    let op = gated(&runs, "k", "first", started, release_rx).timeout(10 * MINUTE);
    let holder = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(op).await }
    });
    let _ = started_rx.await;
    let again = counting(&runs, "k", "payload", "second").timeout(10 * MINUTE);
    let out = manager.run_or_wait(again, Duration::from_millis(30)).await;
    match out {
        Err(Error::StillRunning {
            retry_after: Some(left),
            ..
        }) => assert!(left > 9 * MINUTE && left <= 10 * MINUTE, "{left:?}"),
        other => panic!("expected StillRunning with a Retry-After, got {other:?}"),
    }
    let _ = release.send(());
    assert_eq!(executed(joined(holder).await), "first");
    assert_eq!(count(&runs), 1);
}

/// Calls waiting on a holder that crashed (nobody finishes its record): once its timeout
/// passes exactly one of them runs the operation, and the others replay that run.
pub async fn waiters_take_over_a_crashed_holder<H: Harness>(harness: H) {
    const WAITERS: usize = 10;
    let (manager, mut waited) = watched(&harness);
    let now = harness.clock().now();
    let mut crashed = seeded("k", Status::Running, now);
    crashed.timeout = Some(now + chrono::TimeDelta::minutes(1));
    harness.seed(crashed).await;
    let runs = counter();
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let op = counting(&runs, "k", "payload", "again").timeout(MINUTE);
            let manager = manager.clone();
            tokio::spawn(async move { manager.run_or_wait(op, HOUR).await })
        })
        .collect();
    all_waiting(&mut waited, WAITERS).await;
    advance(&harness, 2 * MINUTE).await;
    let mut executions = 0;
    for waiter in waiters {
        match joined(waiter).await {
            Ok(Outcome::Executed(value)) => {
                executions += 1;
                assert_eq!(value, "again");
            }
            replay => assert_eq!(replayed(replay), "again"),
        }
    }
    assert_eq!((executions, count(&runs)), (1, 1));
    let record = record(&harness, "k").await;
    assert_eq!((record.status, record.attempt), (Status::Finished, 2));
}

/// Renewing moves the timeout of the record its lease holds, and nothing else: not after a
/// takeover, not once finished.
pub async fn renewal_is_fenced_by_the_claim<H: Harness>(harness: H) {
    let repository = harness.repository();
    let id = RecordId::new(TARGET, "k");
    let request = ClaimRequest {
        target: TARGET,
        key: "k",
        fingerprint: "payload".fingerprint(),
        reference_time: harness.clock().now(),
        timeout: Some(MINUTE),
        expiration: None,
    };
    let (first, first_session) = acquire(&repository, &request).await;
    let until = match repository.renew(id, first, 10 * MINUTE).await {
        Ok(Renewal::Renewed { until }) => until,
        other => panic!("expected the holder's renewal, got {other:?}"),
    };
    assert_eq!(record(&harness, "k").await.timeout, Some(until));

    // Past the claim's own timeout, within the renewed one: still held.
    advance(&harness, 5 * MINUTE).await;
    match repository.claim(&request).await {
        Ok(Claim::Existing { record, .. }) => assert_eq!(record.status, Status::Running),
        Ok(Claim::Acquired { .. }) => panic!("a renewed lease was taken over"),
        Err(error) => panic!("claiming failed: {error:?}"),
    }

    advance(&harness, 6 * MINUTE).await;
    let (later, later_session) = acquire(&repository, &request).await;
    drop(first_session);
    let stale = repository.renew(id, first, HOUR).await;
    assert!(matches!(stale, Ok(Renewal::Lost)), "{stale:?}");
    let renewed = repository.renew(id, later, MINUTE).await;
    assert!(
        matches!(renewed, Ok(Renewal::Renewed { .. })),
        "{renewed:?}"
    );

    let done = repository
        .complete(later_session, id, later, Some(b"1"))
        .await;
    assert!(matches!(done, Ok(Completion::Done)), "{done:?}");
    let finished = repository.renew(id, later, MINUTE).await;
    assert!(matches!(finished, Ok(Renewal::Lost)), "{finished:?}");
    assert_eq!(record(&harness, "k").await.status, Status::Finished);
}

/// A claim that must acquire.
async fn acquire<S: IdempotencyRepository>(
    repository: &S,
    request: &ClaimRequest<'_>,
) -> (Lease, S::Session) {
    match repository.claim(request).await {
        Ok(Claim::Acquired { lease, session, .. }) => (lease, session),
        Ok(Claim::Existing { record, .. }) => panic!("expected to acquire, found {record:?}"),
        Err(error) => panic!("claiming failed: {error:?}"),
    }
}

/// A spawned call's answer.
async fn joined(
    call: tokio::task::JoinHandle<Result<Outcome<String>, Error<Declined>>>,
) -> Result<Outcome<String>, Error<Declined>> {
    match call.await {
        Ok(out) => out,
        Err(error) => panic!("the call's task failed: {error}"),
    }
}
