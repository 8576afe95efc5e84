//! `ana-bench redis-cost [count]`: what Redis spends, inside the server, on the store's
//! protocol. Drives `RedisRepository` directly (no HTTP): `count` new keys claimed, then
//! completed with the benchmark's recorded response, then claimed again (replays of the
//! Finished records), each phase on its own between two readings of `INFO cpu` and `INFO
//! commandstats`. It prints Redis's time per new key (claim + complete) and per replay.
//!
//! Two figures per phase: **Redis CPU**, the server process's user and system time, and **in
//! commands**, the time `INFO commandstats` gives the commands the store sent. A script's
//! time includes the commands it calls, which commandstats also counts on their own; the
//! store never mixes scripts and plain commands within one of these phases (a new key's claim
//! is a plain `SET`, or a script in the hash-per-record protocol), so a phase that ran scripts
//! is counted by its scripts alone.
//!
//! `INFO` counts every client of the server: run it on a Redis nothing else uses
//! (`REDIS_URL`, default `redis://127.0.0.1:6379`), for instance a `redis-server --port 6390`
//! started for the purpose.

use std::sync::Arc;
use std::time::Duration;

use ana_core::{Claim, ClaimRequest, Fingerprint, IdempotencyRepository, Lease, RecordId};
use ana_redis::{RedisRepository, RedisSession};
use anyhow::{Result, bail};

use crate::peers::{RedisInfo, command_deltas, is_script, redis_info};

/// Concurrent callers on the repository's shared connection, as many as the HTTP benchmarks'
/// connections: the server sees the same batching as under load.
const CALLERS: usize = 32;

/// Keys claimed and completed before the measurement (connection made, scripts cached).
const WARM_UP: usize = 200;

const TARGET: &str = "[POST]/bench";

/// Runs the measurement and prints its report.
pub(crate) fn run(count: usize) -> Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("ana-bench-cost:{}:", std::process::id());
    let repository = RedisRepository::from_url(url.clone())?.with_prefix(prefix.as_str());
    let result = Arc::new(crate::serve::recorded_response()?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let measured = runtime.block_on(measure(&repository, &url, &result, count));
    crate::clean_redis_prefix(&url, &prefix);
    let [claim, complete, replay] = measured?;
    println!(
        "Redis time per call, {count} calls of each, {CALLERS} callers on one connection, \
         {}-byte result (INFO cpu and INFO commandstats deltas)",
        result.len()
    );
    println!(
        "new key (claim + complete): Redis CPU {:.2} µs, in commands {:.2} µs",
        claim.process_usec + complete.process_usec,
        claim.commands_usec + complete.commands_usec
    );
    println!(
        "replay: Redis CPU {:.2} µs, in commands {:.2} µs",
        replay.process_usec, replay.commands_usec
    );
    for (phase, cost) in [
        ("claim of a new key", &claim),
        ("complete", &complete),
        ("replay", &replay),
    ] {
        println!(
            "  {phase}: Redis CPU {:.2} µs, in commands {:.2} µs",
            cost.process_usec, cost.commands_usec
        );
        for (name, calls, usec) in &cost.per_command {
            println!("    {name:<12} {calls:>5.2} calls  {usec:>6.2} µs");
        }
    }
    Ok(())
}

/// The three phases, each between two `INFO` readings.
async fn measure(
    repository: &RedisRepository,
    url: &str,
    result: &Arc<Vec<u8>>,
    count: usize,
) -> Result<[Cost; 3]> {
    let warm = claim_all(repository, "warm", WARM_UP).await?;
    complete_all(repository, result, warm).await?;

    let before = redis_info(url)?;
    let held = claim_all(repository, "key", count).await?;
    let claimed = redis_info(url)?;
    complete_all(repository, result, held).await?;
    let completed = redis_info(url)?;
    replay_all(repository, "key", count).await?;
    let replayed = redis_info(url)?;
    Ok([
        Cost::between(&before, &claimed, count),
        Cost::between(&claimed, &completed, count),
        Cost::between(&completed, &replayed, count),
    ])
}

fn request(key: &str) -> ClaimRequest<'_> {
    ClaimRequest {
        target: TARGET,
        key,
        fingerprint: Fingerprint::of(b"POST /bench {\"amount\":100}"),
        reference_time: chrono::Utc::now(),
        timeout: Some(Duration::from_secs(60)),
        expiration: Some(chrono::Utc::now() + chrono::TimeDelta::days(1)),
    }
}

/// Runs `work` on each index below `count`, from `CALLERS` tasks; their outputs in no order.
async fn concurrently<T, F, Fut>(count: usize, work: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<T>> + Send,
{
    let mut tasks = Vec::with_capacity(CALLERS);
    for caller in 0..CALLERS {
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut outputs = Vec::new();
            for index in (caller..count).step_by(CALLERS) {
                outputs.push(work(index).await?);
            }
            anyhow::Ok(outputs)
        }));
    }
    let mut outputs = Vec::with_capacity(count);
    for task in tasks {
        outputs.extend(task.await??);
    }
    Ok(outputs)
}

/// Claims the new keys `<name>-0` … `<name>-<count - 1>`; their leases.
async fn claim_all(
    repository: &RedisRepository,
    name: &str,
    count: usize,
) -> Result<Vec<(String, Lease, RedisSession)>> {
    let (repository, name) = (repository.clone(), name.to_owned());
    concurrently(count, move |index| {
        let (repository, key) = (repository.clone(), format!("{name}-{index}"));
        async move {
            match repository.claim(&request(&key)).await? {
                Claim::Acquired { lease, session, .. } => Ok((key, lease, session)),
                Claim::Existing { record, .. } => {
                    bail!("{key}: found {:?}, expected to claim it", record.status)
                }
            }
        }
    })
    .await
}

/// Completes every held key with `result`.
async fn complete_all(
    repository: &RedisRepository,
    result: &Arc<Vec<u8>>,
    held: Vec<(String, Lease, RedisSession)>,
) -> Result<()> {
    let held = Arc::new(held);
    let (repository, result) = (repository.clone(), Arc::clone(result));
    concurrently(held.len(), move |index| {
        let (repository, result, held) =
            (repository.clone(), Arc::clone(&result), Arc::clone(&held));
        async move {
            let (key, lease, session) = &held[index];
            let id = RecordId::new(TARGET, key);
            repository
                .complete(session.clone(), id, *lease, Some(&result))
                .await?;
            Ok(())
        }
    })
    .await
    .map(drop)
}

/// Claims the Finished keys `<name>-0` … `<name>-<count - 1>` again: each answers with its
/// record.
async fn replay_all(repository: &RedisRepository, name: &str, count: usize) -> Result<()> {
    let (repository, name) = (repository.clone(), name.to_owned());
    concurrently(count, move |index| {
        let (repository, key) = (repository.clone(), format!("{name}-{index}"));
        async move {
            match repository.claim(&request(&key)).await? {
                Claim::Existing { record, .. } if record.result.is_some() => Ok(()),
                Claim::Existing { record, .. } => {
                    bail!("{key}: found {:?}, expected a replay", record.status)
                }
                Claim::Acquired { .. } => bail!("{key}: claimed, expected a replay"),
            }
        }
    })
    .await
    .map(drop)
}

/// What Redis spent per call between two `INFO` readings.
struct Cost {
    /// The Redis process's CPU time (user and system).
    process_usec: f64,
    /// The time of the commands the store sent: its scripts if it ran any (their time
    /// includes the commands they call), else every command.
    commands_usec: f64,
    /// Each command's calls and microseconds per call, the costliest first (a command a
    /// script calls is counted here and in the script's time).
    per_command: Vec<(String, f64, f64)>,
}

impl Cost {
    fn between(before: &RedisInfo, after: &RedisInfo, count: usize) -> Self {
        let count = count.max(1) as f64;
        let per_command = command_deltas(before, after, count);
        let scripts = per_command.iter().any(|(name, ..)| is_script(name));
        let commands_usec = per_command
            .iter()
            .filter(|(name, ..)| !scripts || is_script(name))
            .fold(0.0, |sum, (_, _, usec)| sum + usec);
        Self {
            process_usec: (after.cpu_seconds - before.cpu_seconds).max(0.0) * 1e6 / count,
            commands_usec,
            per_command,
        }
    }
}
