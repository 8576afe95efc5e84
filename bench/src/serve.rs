//! The benchmark servers and the store-limit scripts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::routing::post;
use bytes::Bytes;

use ana_axum::IdempotencyLayer;
use ana_core::{Codec, IdempotencyRepository, MemoryRepository, ReplayCache};
use ana_http::{Engine, RecordedResponse, RecordedResponseCodec, default_replay_headers};
use ana_pg::PgRepository;
use ana_redis::RedisRepository;

/// The schema and key prefix the benchmark writes to.
const SCHEMA: &str = "ana_bench";
pub(crate) const REDIS_PREFIX: &str = "ana-bench:";

/// A 200-byte JSON response, the size of a typical API answer (the peers' servers send it too).
pub(crate) const RESPONSE: &str = include_str!("response.json").trim_ascii_end();

async fn handler(_body: Bytes) -> impl axum::response::IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], RESPONSE)
}

/// The bare handler, spending one more microsecond of CPU first: the scale of the ratios.
async fn handler_1us(body: Bytes) -> impl axum::response::IntoResponse {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_micros(1) {
        std::hint::spin_loop();
    }
    handler(body).await
}

/// The recorded form of the benchmark's response, as the layer stores it.
pub(crate) fn recorded_response() -> Result<Vec<u8>> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let recorded = RecordedResponse::new(
        StatusCode::OK,
        &headers,
        &default_replay_headers(),
        Bytes::from_static(RESPONSE.as_bytes()),
    );
    RecordedResponseCodec
        .encode(&recorded)
        .map_err(|error| anyhow::anyhow!("encoding the recorded response: {error}"))
}

/// Sends `count` requests to the route in process (no socket), on one thread: `bare` (no
/// layer), `new` (the layer on the memory store, a new key each) or `replay` (one key). For
/// instruction counts (`valgrind --tool=callgrind`): the layer's cost per request is the
/// difference with `bare`, divided by `count`.
pub(crate) fn in_process(mode: &str, count: u64) -> Result<()> {
    use tower::ServiceExt;
    let routes = Router::new().route("/bench", post(handler));
    let app = match mode {
        "bare" => routes,
        "new" | "replay" => routes.layer(IdempotencyLayer::new(
            MemoryRepository::new().with_capacity(usize::MAX),
        )),
        other => bail!("unknown in-process mode {other:?} (expected bare, new or replay)"),
    };
    // As `axum::serve` runs it (and as the divan benches do): the layered routes built once,
    // not per request.
    let app = app.with_state(());
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let mut bytes = 0;
    for n in 0..count {
        // The bare route gets new keys too: `new` less `bare` is the layer's own cost.
        let key = if mode == "replay" {
            "replayed".to_owned()
        } else {
            format!("key-{n}")
        };
        let request = axum::http::Request::post("/bench")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-idempotency-key", key)
            .body(axum::body::Body::from(r#"{"amount":100,"currency":"EUR"}"#))?;
        bytes += runtime.block_on(async {
            let response = app.clone().oneshot(request).await?;
            if !response.status().is_success() {
                bail!("the route answered {}", response.status());
            }
            Ok(axum::body::to_bytes(response.into_body(), usize::MAX)
                .await?
                .len())
        })?;
    }
    println!("{count} requests, {bytes} response bytes");
    Ok(())
}

/// The layer over `repository`, with a replay cache of 64 MiB when `cached`.
fn layer<R: IdempotencyRepository>(repository: R, cached: bool) -> IdempotencyLayer<R::Session> {
    let service = Engine::new(repository);
    if cached {
        IdempotencyLayer::from_engine(service.with_replay_cache(ReplayCache::new(64 << 20)))
    } else {
        IdempotencyLayer::from_engine(service)
    }
}

/// Serves one variant on a free loopback port; prints `listening on 127.0.0.1:<port>`.
/// `postgres+cache` and `redis+cache` put a replay cache in front of the store.
pub(crate) fn run(variant: &str) -> Result<()> {
    let (store, cached) = match variant.strip_suffix("+cache") {
        Some(store) => (store, true),
        None => (variant, false),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let routes = Router::new().route("/bench", post(handler));
        let app = match store {
            "bare" => routes,
            "bare+1us" => Router::new().route("/bench", post(handler_1us)),
            "memory" => routes.layer(IdempotencyLayer::new(
                MemoryRepository::new().with_capacity(50_000_000),
            )),
            "postgres" => {
                let url = std::env::var("DATABASE_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
                let pool = ana_pg::sqlx::postgres::PgPoolOptions::new()
                    .max_connections(pool_size())
                    // No test round trip on every checkout (see ana-pg's docs).
                    .test_before_acquire(false)
                    .connect(&url)
                    .await
                    .context("connecting to Postgres (DATABASE_URL)")?;
                let repository = PgRepository::with_schema(pool, SCHEMA)?;
                repository.migrate().await?;
                routes.layer(layer(repository, cached))
            }
            "sqlite" => {
                let dir = sqlite_dir(std::os::unix::process::parent_id());
                std::fs::create_dir_all(&dir)?;
                let url = format!("sqlite://{}", dir.join("server.db").display());
                let repository = ana_sqlite::SqliteRepository::connect(&url).await?;
                repository.migrate().await?;
                routes.layer(layer(repository, cached))
            }
            "mysql" => {
                let pool = crate::sql_limits::mysql_pool(&mysql_url(), pool_size()).await?;
                let repository = ana_mysql::MySqlRepository::new(pool);
                repository.migrate().await?;
                routes.layer(layer(repository, cached))
            }
            "redis" => {
                let url =
                    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
                let repository = RedisRepository::from_url(url)?.with_prefix(REDIS_PREFIX);
                routes.layer(layer(repository, cached))
            }
            other => bail!("unknown server variant {other:?}"),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        println!("listening on 127.0.0.1:{port}");
        std::io::stdout().flush()?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}

/// Sends one request with `key`, so the replay run finds a Finished record.
pub(crate) fn post_once(port: u16, key: &str) -> Result<()> {
    let response = send_post(port, "/bench", &format!("X-Idempotency-Key: {key}\r\n"))?;
    if !response.starts_with("HTTP/1.1 200") {
        bail!("the first request of the replay run failed: {response}");
    }
    Ok(())
}

/// Sends the benchmark's request body to `path` with `headers` (each line ending in `\r\n`)
/// and returns the whole response.
pub(crate) fn send_post(port: u16, path: &str, headers: &str) -> Result<String> {
    let body = r#"{"amount":100,"currency":"EUR"}"#;
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         {headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// pgbench scripts for the store's own limits, on the schema the Postgres server migrated;
/// their temporary folder is removed when dropped.
pub(crate) struct PgbenchScripts {
    dir: PathBuf,
    pub(crate) claim_finish: PathBuf,
    pub(crate) claim_finish_in_transaction: PathBuf,
    pub(crate) replay: PathBuf,
}

impl Drop for PgbenchScripts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes the pgbench scripts: `PgRepository`'s own claim statement (new random keys), then its
/// complete statement, the parameters written in as literals, as `PgRepository` sends them for
/// an operation that opens no transaction (the benchmark's handler); the same with the
/// complete statement in `BEGIN; …; COMMIT` (a handler writing in its session); and the
/// replay's single-row `SELECT`.
pub(crate) fn pgbench_scripts() -> Result<PgbenchScripts> {
    let dir = std::env::temp_dir().join(format!("ana-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let table = format!("{SCHEMA}.tracked_operations");
    let (claim, complete) = ana_pg::claim_and_complete_sql(SCHEMA)?;
    let fingerprint = r"'\x000102030405060708090a0b0c0d0e0f'::bytea";
    // Highest first, so that `$1` never eats the start of `$10`.
    let claim = bind(
        &claim,
        &[
            "'[POST]/pgbench'",
            "('k' || :n)",
            fingerprint,
            "now()",
            "60000000",
            "(now() + interval '1 day')",
        ],
    );
    let complete = bind(
        &complete,
        &[
            "'[POST]/pgbench'",
            "('k' || :n)",
            "1",
            "convert_to(repeat('x', 230), 'UTF8')",
            // The claim's number, which the claim's answer set (`\gset`).
            ":claim",
        ],
    );
    let claim_finish = format!(
        "\\set n random(1, 1000000000000)\n{} \\gset\n{};\n",
        one_line(&claim),
        one_line(&complete)
    );
    let claim_finish_in_transaction = format!(
        "\\set n random(1, 1000000000000)\n{} \\gset\nBEGIN;\n{};\nCOMMIT;\n",
        one_line(&claim),
        one_line(&complete)
    );
    let replay = format!(
        r"SELECT * FROM {table} WHERE target = '[POST]/pgbench-replay' AND key = 'replayed';
"
    );
    let seed = format!(
        "TRUNCATE {table}; INSERT INTO {table} (target, key, status, fingerprint, reference_time, result, finished_at, attempt) \
         VALUES ('[POST]/pgbench-replay', 'replayed', 'finished', '\\x000102030405060708090a0b0c0d0e0f'::bytea, now(), \
         convert_to(repeat('x', 230), 'UTF8'), now(), 1) ON CONFLICT DO NOTHING"
    );
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let status = std::process::Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", &database_url, "-c", &seed])
        .status()
        .context("running psql to seed the replay row")?;
    if !status.success() {
        bail!("seeding the pgbench replay row failed");
    }
    let paths = PgbenchScripts {
        claim_finish: dir.join("claim-finish.sql"),
        claim_finish_in_transaction: dir.join("claim-finish-in-transaction.sql"),
        replay: dir.join("replay.sql"),
        dir,
    };
    std::fs::write(&paths.claim_finish, claim_finish)?;
    std::fs::write(
        &paths.claim_finish_in_transaction,
        claim_finish_in_transaction,
    )?;
    std::fs::write(&paths.replay, replay)?;
    Ok(paths)
}

/// `sql` with `$1`, `$2`, … replaced by `values`.
fn bind(sql: &str, values: &[&str]) -> String {
    values
        .iter()
        .enumerate()
        .rev()
        .fold(sql.to_owned(), |sql, (index, value)| {
            sql.replace(&format!("${}", index + 1), value)
        })
}

/// pgbench reads one statement per line.
fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Host and port of a `redis://host:port` URL.
pub(crate) fn redis_address(url: &str) -> Result<(String, u16)> {
    let rest = url
        .strip_prefix("redis://")
        .context("REDIS_URL must start with redis://")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = host_port.rsplit_once(':').unwrap_or((host_port, "6379"));
    Ok((host.to_owned(), port.parse().context("the Redis port")?))
}

/// `SET <random key> <new Running record> NX GET PXAT <ttl>` for redis-benchmark: the command
/// `RedisRepository` sends to claim a new key. The record is the one the repository writes,
/// read back from a key it claims here (and deletes).
pub(crate) fn redis_claim_command() -> Result<Vec<String>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let (host, port) = redis_address(&url)?;
    let repository = RedisRepository::from_url(url.as_str())?.with_prefix(REDIS_PREFIX);
    let key = format!("limit-template-{}", std::process::id());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let now = chrono::Utc::now();
    runtime.block_on(repository.claim(&ana_core::ClaimRequest {
        target: "[POST]/bench",
        key: &key,
        fingerprint: ana_core::Fingerprint::of(b"POST /bench {\"amount\":100}"),
        reference_time: now,
        timeout: Some(Duration::from_secs(60)),
        expiration: Some(now + chrono::TimeDelta::days(1)),
    }))?;
    let name = repository.record_key("[POST]/bench", &key);
    let cli = |command: &[&str]| {
        std::process::Command::new("redis-cli")
            .args(["-h", &host, "-p", &port.to_string()])
            .args(command)
            .output()
            .context("running redis-cli")
    };
    let record = cli(&["GET", &name])?;
    cli(&["DEL", &name])?;
    let record = String::from_utf8(record.stdout)
        .context("the record is ASCII")?
        .trim_end()
        .to_owned();
    if !record.starts_with('A') {
        bail!("reading the claimed record failed: {record:?}");
    }
    Ok(vec![
        "SET".into(),
        format!("{REDIS_PREFIX}limit:__rand_int__"),
        record,
        "NX".into(),
        "GET".into(),
        "PXAT".into(),
        (now + chrono::TimeDelta::days(1))
            .timestamp_millis()
            .to_string(),
    ])
}

/// Database connections of the Postgres server: as many as pgbench's clients (`BENCH_PG_POOL`,
/// 16 by default), so the HTTP path and the store's own limit load Postgres alike.
/// `MYSQL_URL`, or the local MariaDB.
pub(crate) fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// The folder of the SQLite files of the benchmark run by process `run_pid`.
pub(crate) fn sqlite_dir(run_pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("ana-bench-{run_pid}"))
}

pub(crate) fn pool_size() -> u32 {
    std::env::var("BENCH_PG_POOL")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(16)
}
