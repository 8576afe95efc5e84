//! The SQLite and MySQL stores' own limits, the `pgbench` of those stores: the statements
//! their repository runs for a new key (read, claim, complete) and for a replay (read), sent
//! with sqlx from as many tasks as the benchmark server has connections, without HTTP or ana.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ana_mysql::sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use ana_mysql::sqlx::{self as mysql_sqlx, ConnectOptions as _, Row as _};
use ana_sqlite::sqlx::{self as sqlite_sqlx, SqlitePool};
use anyhow::{Context, Result};
use chrono::Utc;

use crate::measure::Figures;

/// The target the benchmark route's records have.
const TARGET: &str = "POST /bench";
/// A fingerprint: the statements compare it, its value does not matter.
const FINGERPRINT: [u8; 16] = [7; 16];
/// The timeout and expiration the records get (the engine's defaults are of this order).
const TIMEOUT: Duration = Duration::from_secs(60);
const EXPIRATION: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// The database the MySQL benchmark server and these loops write to (dropped afterwards).
pub(crate) const MYSQL_DATABASE: &str = "ana_bench";

/// The SQLite limits, on a file of this run opened as the benchmark server opens its own
/// (`SqliteRepository::connect`: WAL, `synchronous = FULL`, 8 connections, one task each).
pub(crate) async fn sqlite_limits(run: &str, seconds: u64) -> Result<(Figures, Figures)> {
    let dir = crate::serve::sqlite_dir(std::process::id());
    std::fs::create_dir_all(&dir)?;
    let url = format!("sqlite://{}", dir.join("limits.db").display());
    let repository = ana_sqlite::SqliteRepository::connect(&url).await?;
    repository.migrate().await?;
    let tasks = repository.pool().options().get_max_connections();
    sqlite(repository.pool().clone(), run, seconds, tasks).await
}

/// The MySQL limits, on a pool as large as the benchmark server's, one task a connection.
pub(crate) async fn mysql_limits(run: &str, seconds: u64) -> Result<(Figures, Figures)> {
    let size = crate::serve::pool_size();
    let pool = mysql_pool(&crate::serve::mysql_url(), size).await?;
    ana_mysql::MySqlRepository::new(pool.clone())
        .migrate()
        .await?;
    mysql(pool, run, seconds, size).await
}

/// New keys, then replays of one finished key, on a migrated SQLite database, from `tasks`
/// tasks for `seconds` each.
async fn sqlite(
    pool: SqlitePool,
    run: &str,
    seconds: u64,
    tasks: u32,
) -> Result<(Figures, Figures)> {
    let (read, claim, complete) = ana_sqlite::protocol_sql();
    let result = Arc::new(crate::serve::recorded_response()?);
    let timeout = micros(TIMEOUT);
    let new_key = {
        let (pool, run, result) = (pool.clone(), run.to_owned(), result.clone());
        load(seconds, tasks, move |n| {
            let (pool, key, result) = (pool.clone(), format!("limit-{run}-{n}"), result.clone());
            async move {
                let now = Utc::now();
                let mut conn = pool.acquire().await?;
                sqlite_sqlx::query(read)
                    .bind(TARGET)
                    .bind(&key)
                    .bind(&FINGERPRINT[..])
                    .fetch_optional(&mut *conn)
                    .await?;
                let row = sqlite_sqlx::query(claim)
                    .bind(TARGET)
                    .bind(&key)
                    .bind(&FINGERPRINT[..])
                    .bind(now.timestamp_micros())
                    .bind(Some(timeout))
                    .bind(Some((now + EXPIRATION).timestamp_micros()))
                    .fetch_optional(&mut *conn)
                    .await?
                    .context("the claim left a new key as it was")?;
                let (attempt, claim): (i64, i64) = (row.try_get("attempt")?, row.try_get("claim")?);
                drop(conn);
                sqlite_sqlx::query(complete)
                    .bind(TARGET)
                    .bind(&key)
                    .bind(attempt)
                    .bind(&result[..])
                    .bind(claim)
                    .execute(&pool)
                    .await?;
                Ok(())
            }
        })
        .await
    };
    let replayed = format!("limit-{run}-0");
    let replay = load(seconds, tasks, move |_| {
        let (pool, key) = (pool.clone(), replayed.clone());
        async move {
            sqlite_sqlx::query(read)
                .bind(TARGET)
                .bind(&key)
                .bind(&FINGERPRINT[..])
                .fetch_optional(&pool)
                .await?
                .context("the replayed record is missing")?;
            Ok(())
        }
    })
    .await;
    Ok((new_key, replay))
}

/// New keys, then replays of one finished key, on a migrated MySQL database, from `tasks`
/// tasks for `seconds` each. The complete statement runs on the claim's connection,
/// autocommitted, as the repository sends it for an operation that opens no transaction.
async fn mysql(pool: MySqlPool, run: &str, seconds: u64, tasks: u32) -> Result<(Figures, Figures)> {
    let (read, claim_sql, complete) = ana_mysql::protocol_sql();
    let result = Arc::new(crate::serve::recorded_response()?);
    let timeout = micros(TIMEOUT);
    let new_key = {
        let (pool, run, result) = (pool.clone(), run.to_owned(), result.clone());
        load(seconds, tasks, move |n| {
            let (pool, key, result) = (pool.clone(), format!("limit-{run}-{n}"), result.clone());
            async move {
                let now = Utc::now();
                let mut conn = pool.acquire().await?;
                let row = mysql_sqlx::query(read)
                    .bind(&FINGERPRINT[..])
                    .bind(TARGET)
                    .bind(&key)
                    .fetch_one(&mut *conn)
                    .await?;
                let claim: u64 = row.try_get("next_claim")?;
                let done = mysql_sqlx::query(claim_sql)
                    .bind(TARGET)
                    .bind(&key)
                    .bind(&FINGERPRINT[..])
                    .bind(now)
                    .bind(Some(timeout))
                    .bind(Some(now + EXPIRATION))
                    .bind(claim)
                    .bind(&FINGERPRINT[..])
                    .bind(claim)
                    .bind(claim)
                    .bind(claim)
                    .bind(claim)
                    .bind(claim)
                    .bind(Some(timeout))
                    .bind(claim)
                    .bind(claim)
                    .execute(&mut *conn)
                    .await?;
                mysql_sqlx::query(complete)
                    .bind(&result[..])
                    .bind(TARGET)
                    .bind(&key)
                    .bind(done.last_insert_id())
                    .bind(claim)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }
        })
        .await
    };
    let replayed = format!("limit-{run}-0");
    let replay = load(seconds, tasks, move |_| {
        let (pool, key) = (pool.clone(), replayed.clone());
        async move {
            let row = mysql_sqlx::query(read)
                .bind(&FINGERPRINT[..])
                .bind(TARGET)
                .bind(&key)
                .fetch_one(&pool)
                .await?;
            let _: String = row
                .try_get::<Option<String>, _>("target")?
                .context("the replayed record is missing")?;
            Ok(())
        }
    })
    .await;
    Ok((new_key, replay))
}

/// A pool of `size` connections to the benchmark's own database on the MySQL server at
/// `url` (`MYSQL_URL`), which it creates if missing.
pub(crate) async fn mysql_pool(url: &str, size: u32) -> Result<MySqlPool> {
    let options = MySqlConnectOptions::from_str(url).context("parsing MYSQL_URL")?;
    let mut admin = options
        .connect()
        .await
        .context("connecting to MySQL (MYSQL_URL)")?;
    mysql_sqlx::query("CREATE DATABASE IF NOT EXISTS ana_bench")
        .execute(&mut admin)
        .await?;
    Ok(MySqlPoolOptions::new()
        .max_connections(size)
        .connect_with(options.database(MYSQL_DATABASE))
        .await?)
}

/// Drops the benchmark's MySQL database.
pub(crate) async fn drop_mysql_database(url: &str) -> Result<()> {
    let mut admin = MySqlConnectOptions::from_str(url)?.connect().await?;
    mysql_sqlx::query("DROP DATABASE IF EXISTS ana_bench")
        .execute(&mut admin)
        .await?;
    Ok(())
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Calls `op(n)` from `tasks` tasks for `seconds`, `n` counting the calls of all tasks from
/// 0; the throughput and latencies of the calls that succeeded, and how many failed.
async fn load<F, Fut>(seconds: u64, tasks: u32, op: F) -> Figures
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..tasks.max(1) {
        let (op, next) = (op.clone(), next.clone());
        running.spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0_u64);
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                match op(n).await {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(error) => {
                        if errors == 0 {
                            eprintln!("bench: a statement loop failed: {error:#}");
                        }
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        });
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while let Some(Ok((task_latencies, task_errors))) = running.join_next().await {
        latencies.extend(task_latencies);
        errors += task_errors;
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(index).copied()
    };
    Figures {
        requests_per_second: latencies.len() as f64 / elapsed,
        p50: percentile(0.5),
        p99: percentile(0.99),
        errors,
        requests: latencies.len() as u64,
        server_cpu: None,
    }
}
