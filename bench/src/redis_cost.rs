//! `ana-bench redis-cost [count]`: what Redis spends, inside the server, on the store's
//! protocol. Drives `RedisRepository` directly (no HTTP) for `count` new keys (claim, then
//! complete with the benchmark's recorded response) and `count` replays (a claim finding the
//! Finished record), and prints Redis's time per new key and per replay from the deltas of
//! `INFO commandstats` (each command's calls and microseconds) and of `INFO cpu`.
//!
//! `INFO` counts every client of the server: run it on a Redis nothing else uses
//! (`REDIS_URL`, default `redis://127.0.0.1:6379`), for instance a `redis-server --port 6390`
//! started for the purpose.

use std::sync::Arc;
use std::time::Duration;

use ana_core::{Claim, ClaimRequest, Fingerprint, IdempotencyRepository, RecordId};
use ana_redis::RedisRepository;
use anyhow::{Result, bail};

use crate::peers::{RedisInfo, redis_info};

/// Concurrent callers on the repository's shared connection, as many as the HTTP benchmarks'
/// connections: the server sees the same batching as under load.
const CALLERS: usize = 32;

/// Keys claimed and completed before the measurement (connection made, scripts cached).
const WARM_UP: usize = 200;

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
    let measured = runtime.block_on(async {
        drive(&repository, &result, "warm", WARM_UP, Step::NewKey).await?;
        let before = redis_info(&url)?;
        drive(&repository, &result, "key", count, Step::NewKey).await?;
        let middle = redis_info(&url)?;
        drive(&repository, &result, "key", count, Step::Replay).await?;
        let after = redis_info(&url)?;
        anyhow::Ok([
            (
                "new key (claim + complete)",
                Cost::between(&before, &middle, count),
            ),
            (
                "replay (claim of a Finished record)",
                Cost::between(&middle, &after, count),
            ),
        ])
    });
    crate::clean_redis_prefix(&url, &prefix);
    let measured = measured?;
    println!(
        "Redis time per call, {count} calls of each, {CALLERS} callers on one connection, \
         {}-byte result (INFO commandstats and INFO cpu deltas)",
        result.len()
    );
    for (load, cost) in &measured {
        println!(
            "{load}: Redis CPU {:.2} µs, in scripts {:.2} µs",
            cost.process_usec, cost.scripts_usec
        );
        for (name, calls, usec) in &cost.per_command {
            println!("  {name:<12} {calls:>5.2} calls  {usec:>6.2} µs");
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Claim a key nobody used, then complete it.
    NewKey,
    /// Claim a Finished key again: the claim answers with the record.
    Replay,
}

/// `count` calls of `step` on the keys `<name>-0` … `<name>-<count - 1>`, from `CALLERS`
/// tasks.
async fn drive(
    repository: &RedisRepository,
    result: &Arc<Vec<u8>>,
    name: &str,
    count: usize,
    step: Step,
) -> Result<()> {
    let mut tasks = Vec::with_capacity(CALLERS);
    for caller in 0..CALLERS {
        let (repository, result) = (repository.clone(), Arc::clone(result));
        let name = name.to_owned();
        tasks.push(tokio::spawn(async move {
            for index in (caller..count).step_by(CALLERS) {
                call(&repository, &result, &format!("{name}-{index}"), step).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn call(repository: &RedisRepository, result: &[u8], key: &str, step: Step) -> Result<()> {
    let request = ClaimRequest {
        target: "[POST]/bench",
        key,
        fingerprint: Fingerprint::of(b"POST /bench {\"amount\":100}"),
        reference_time: chrono::Utc::now(),
        timeout: Some(Duration::from_secs(60)),
        expiration: Some(chrono::Utc::now() + chrono::TimeDelta::days(1)),
    };
    match (repository.claim(&request).await?, step) {
        (Claim::Acquired { lease, session, .. }, Step::NewKey) => {
            let id = RecordId::new(request.target, key);
            repository
                .complete(session, id, lease, Some(result))
                .await?;
            Ok(())
        }
        (Claim::Existing { record, .. }, Step::Replay) if record.result.is_some() => Ok(()),
        (Claim::Existing { record, .. }, _) => {
            bail!("{key}: found {:?}, expected to claim it", record.status)
        }
        (Claim::Acquired { .. }, Step::Replay) => bail!("{key}: claimed, expected a replay"),
    }
}

/// What Redis spent per call between two `INFO` readings.
struct Cost {
    /// The Redis process's CPU time (user and system).
    process_usec: f64,
    /// The time in scripts (`EVALSHA`, `EVAL`), the commands they call included.
    scripts_usec: f64,
    /// Each command's calls and microseconds per call of the step, the costliest first (a
    /// command a script calls is counted here and in the script's time).
    per_command: Vec<(String, f64, f64)>,
}

impl Cost {
    fn between(before: &RedisInfo, after: &RedisInfo, count: usize) -> Self {
        let count = count.max(1) as f64;
        let per_command = crate::peers::command_deltas(before, after, count);
        Self {
            process_usec: (after.cpu_seconds - before.cpu_seconds).max(0.0) * 1e6 / count,
            scripts_usec: per_command
                .iter()
                .filter(|(name, ..)| crate::peers::is_script(name))
                .fold(0.0, |sum, (_, _, usec)| sum + usec),
            per_command,
        }
    }
}
