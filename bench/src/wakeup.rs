//! Wake-up latency of a waiting call: from the end of the holder's operation to the answer of
//! a call waiting on it (`Manager::run_or_wait`), p50 and p99 per store. It spans the holder's
//! write of its result, the wake-up (in process, `NOTIFY`, a pub/sub message) and the waiting
//! call's read of the record.
//!
//! The clock starts inside the holder's operation, not when the holder's call returns: a
//! pushed wake-up can reach the waiting call, and the waiting call answer, before the holder's
//! own call has returned and its task has run again, which would count as no time at all.

use std::time::Duration;

use ana_core::{EventKind, IdempotencyRepository, Manager, MemoryRepository, operation};
use ana_pg::PgRepository;
use ana_redis::RedisRepository;
use anyhow::{Context, Result};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Samples per store.
const SAMPLES: usize = 200;

/// Prints one line per store: `wake-up <store> p50 … ms p99 … ms`.
pub(crate) fn report(database_url: &str, redis_url: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        print("memory", measure(MemoryRepository::new()).await?);
        let pool = ana_pg::sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(database_url)
            .await
            .context("connecting to Postgres (DATABASE_URL)")?;
        let pg = PgRepository::with_schema(pool, "ana_bench_wakeup")?;
        pg.migrate().await?;
        print("postgres", measure(pg).await?);
        let redis = RedisRepository::from_url(redis_url)?.with_prefix("ana-bench-wakeup:");
        print("redis", measure(redis).await?);
        Ok(())
    })
}

fn print(store: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "wake-up {store:<8} p50 {:.3} ms  p99 {:.3} ms  ({} waits; holder's operation done -> waiter's answer)",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.len()
    );
}

async fn measure<S: IdempotencyRepository>(repository: S) -> Result<Vec<Duration>> {
    let (waiting_tx, mut waiting) = mpsc::unbounded_channel();
    let manager: Manager<&'static str, u64, S::Session> =
        Manager::new(repository).on_event(move |event| {
            if event.kind == EventKind::Waiting {
                let _ = waiting_tx.send(());
            }
        });
    // Keys of earlier runs stay behind (Postgres, Redis): a key must be new to this run, or
    // its holder would replay instead of running.
    let run = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_micros())
    );
    let mut samples = Vec::with_capacity(SAMPLES);
    for sample in 0..SAMPLES {
        let key: &'static str = Box::leak(format!("{run}-{sample}").into_boxed_str());
        let (started, start) = oneshot::channel();
        let (release, released) = oneshot::channel::<()>();
        let (done, finished) = oneshot::channel::<Instant>();
        let holder = tokio::spawn({
            let manager = manager.clone();
            let op = operation("[POST]/wakeup", key, "p", move |_: S::Session| async move {
                let _ = started.send(());
                let _ = released.await;
                let _ = done.send(Instant::now());
                Ok::<_, std::io::Error>(1)
            });
            async move {
                let out = manager.run(op.timeout(Duration::from_secs(60))).await;
                out.is_ok()
            }
        });
        start.await.context("the holder did not start")?;
        let waiter = tokio::spawn({
            let manager = manager.clone();
            let op = operation("[POST]/wakeup", key, "p", |_: S::Session| async {
                Ok::<_, std::io::Error>(2)
            });
            async move {
                let out = manager.run_or_wait(op, Duration::from_secs(30)).await;
                (
                    out.is_ok_and(|outcome| outcome.is_replayed()),
                    Instant::now(),
                )
            }
        });
        waiting.recv().await.context("the waiter did not wait")?;
        let _ = release.send(());
        let (held, (replayed, answered)) = (holder.await?, waiter.await?);
        let finished = finished
            .await
            .context("the holder's operation did not end")?;
        anyhow::ensure!(
            held && replayed,
            "sample {sample}: not one run and one replay"
        );
        samples.push(answered.saturating_duration_since(finished));
    }
    Ok(samples)
}
