//! `ana-bench payments`: example 04's `POST /v1/payments` with an `Idempotency-Key` of its own
//! on every request (ana claims the key; the payment's `INSERT` and ana's record commit in
//! one transaction) against the same `POST` without a key (the `INSERT` in a transaction of
//! its own), on SQLite and on Postgres; the table goes into PERFORMANCE.md between its
//! `payments:begin` and `payments:end` markers.
//!
//! The service is the release binary of example 04, started for each load on a fresh
//! database (a SQLite file; a Postgres database made for the load and dropped after it), with
//! its defaults (`--timeout 30s`, no rate limit). wrk's script sends a payment id never used
//! before on every request.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ana_pg::sqlx::{self, Connection, PgConnection};
use anyhow::{Context, Result, bail};

use crate::measure::{self, Figures, Server};

const BEGIN_MARKER: &str = "<!-- payments:begin -->";
const END_MARKER: &str = "<!-- payments:end -->";

/// The binary's name, next to `ana-bench` in the target folder.
const BINARY: &str = "example-04-payments";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Database {
    Sqlite,
    Postgres,
}

impl Database {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Post {
    /// No key: the handler's own transaction.
    Bare,
    /// A fresh key on every request: ana's claim, then the handler in its session.
    Idempotent,
}

impl Post {
    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Idempotent => "idempotent",
        }
    }
}

/// One load's figures, and the statuses of its non-2xx answers (from the service's
/// `http_requests_total`).
#[derive(Clone, Debug, Default)]
struct Load {
    figures: Figures,
    failures: BTreeMap<u16, u64>,
}

struct Settings {
    binary: PathBuf,
    script: PathBuf,
    seconds: u64,
    connections: u32,
    rounds: u32,
    database_url: String,
    /// This run's scratch folder (SQLite files), removed at the end.
    dir: PathBuf,
}

/// Runs the comparison with the example's binary at `binary` (default: next to this one).
pub(crate) fn run(binary: Option<&str>) -> Result<()> {
    let binary = match binary {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .context("locating the bench binary")?
            .with_file_name(BINARY),
    };
    if !binary.is_file() {
        bail!(
            "{} is missing: build it first (cargo build --profile bench -p example-04-payments)",
            binary.display()
        );
    }
    let settings = Settings {
        binary,
        script: Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/payments.lua"),
        seconds: crate::env_or("BENCH_SECONDS", crate::DEFAULT_SECONDS),
        connections: crate::env_or("BENCH_CONNECTIONS", 32),
        // Two rounds by default: four loads a round, and `make bench` stays under ten minutes.
        rounds: crate::env_or("BENCH_PAYMENTS_ROUNDS", 2_u32).max(1),
        database_url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        dir: std::env::temp_dir().join(format!("ana-bench-payments-{}", std::process::id())),
    };
    std::fs::create_dir_all(&settings.dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let measured = measure_all(&settings, &runtime);
    let _ = std::fs::remove_dir_all(&settings.dir);
    let best = measured?;
    let report = report(&settings, &best);
    let _ = std::io::stdout().lock().write_all(report.as_bytes());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../PERFORMANCE.md");
    match crate::write_between(&path, (BEGIN_MARKER, END_MARKER), report.trim()) {
        Ok(()) => eprintln!("bench: the payments table is in {}", path.display()),
        Err(error) => eprintln!("bench: PERFORMANCE.md not updated: {error:#}"),
    }
    Ok(())
}

/// Every (database, POST) load, `rounds` times, the rounds interleaved; the best of each.
fn measure_all(
    settings: &Settings,
    runtime: &tokio::runtime::Runtime,
) -> Result<Vec<(Database, Post, Load)>> {
    let mut best: Vec<(Database, Post, Load)> = Vec::new();
    let mut n = 0;
    for round in 1..=settings.rounds {
        for database in [Database::Sqlite, Database::Postgres] {
            for post in [Post::Bare, Post::Idempotent] {
                eprintln!(
                    "bench: payments, {} {} POST (round {round} of {})...",
                    database.name(),
                    post.name(),
                    settings.rounds
                );
                n += 1;
                let load = runtime.block_on(one_load(settings, database, post, n))?;
                match best
                    .iter_mut()
                    .find(|(d, p, _)| (*d, *p) == (database, post))
                {
                    Some((_, _, kept)) => {
                        if load.figures.requests_per_second > kept.figures.requests_per_second {
                            *kept = load;
                        }
                    }
                    None => best.push((database, post, load)),
                }
            }
        }
    }
    Ok(best)
}

/// One load on a fresh database: the service started, a second of warm-up, then the
/// measured run.
async fn one_load(settings: &Settings, database: Database, post: Post, n: u32) -> Result<Load> {
    let name = format!("ana_bench_pay_{}_{n}", std::process::id());
    let uri = match database {
        Database::Sqlite => format!(
            "sqlite://{}",
            settings.dir.join(format!("{name}.db")).display()
        ),
        Database::Postgres => {
            admin(&settings.database_url, &format!("CREATE DATABASE {name}")).await?;
            with_database(&settings.database_url, &name)?
        }
    };
    let load = serve_and_load(settings, database, post, &uri, &name);
    if database == Database::Postgres {
        admin(
            &settings.database_url,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .await?;
    }
    load
}

fn serve_and_load(
    settings: &Settings,
    database: Database,
    post: Post,
    uri: &str,
    name: &str,
) -> Result<Load> {
    let mut command = Command::new(&settings.binary);
    command
        .args(["--listen", "127.0.0.1:0", "--repo", database.name()])
        .args(["--repo-uri", uri])
        .env("RUST_LOG", "warn");
    let server = Server::spawn_announcing(command, BINARY, "Listening on http://127.0.0.1:")?;
    let url = format!("http://127.0.0.1:{}/v1/payments", server.port);
    let mode = match post {
        Post::Bare => "bare",
        Post::Idempotent => "keyed",
    };
    let warm = format!("{name}-warm");
    measure::wrk_with(
        &url,
        &settings.script,
        &[&warm, mode],
        1,
        settings.connections,
    )?;
    let before = failures(server.port)?;
    let figures = server.measured(|| {
        measure::wrk_with(
            &url,
            &settings.script,
            &[name, mode],
            settings.seconds,
            settings.connections,
        )
    })?;
    let mut failures = failures(server.port)?;
    for (status, count) in &mut failures {
        *count = count.saturating_sub(before.get(status).copied().unwrap_or(0));
    }
    failures.retain(|_, count| *count > 0);
    Ok(Load { figures, failures })
}

/// The non-2xx answers of `POST /v1/payments` so far, by status, from the service's metrics.
fn failures(port: u16) -> Result<BTreeMap<u16, u64>> {
    let text = get(port, "/metrics")?;
    Ok(non_2xx_posts(&text))
}

/// The `http_requests_total` counts of non-2xx `POST /v1/payments`, by status.
fn non_2xx_posts(metrics: &str) -> BTreeMap<u16, u64> {
    let mut counts = BTreeMap::new();
    for line in metrics.lines() {
        let Some(labels) = line.strip_prefix("http_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = labels.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix("=\""))
                .and_then(|value| value.strip_suffix('"'))
        };
        if label("method") != Some("POST") || label("route") != Some("/v1/payments") {
            continue;
        }
        let (Some(status), Ok(count)) = (
            label("status").and_then(|s| s.parse::<u16>().ok()),
            value.trim().parse::<f64>(),
        ) else {
            continue;
        };
        if !(200..300).contains(&status) {
            // A counter's value: a whole number.
            *counts.entry(status).or_insert(0) += count as u64;
        }
    }
    counts
}

/// `GET path` on the service, the body of a 200.
fn get(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        bail!("GET {path}: no answer");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {head}");
    }
    Ok(body.to_owned())
}

/// Runs one statement on the Postgres server at `url` (creating or dropping a database).
async fn admin(url: &str, statement: &str) -> Result<()> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connecting to Postgres (DATABASE_URL)")?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut conn)
        .await
        .with_context(|| statement.to_owned())?;
    conn.close().await?;
    Ok(())
}

/// `url` with its database (the path) replaced by `database`, its query kept.
fn with_database(url: &str, database: &str) -> Result<String> {
    let scheme_end = url.find("://").context("DATABASE_URL is not a URL")? + 3;
    let (head, rest) = url.split_at(scheme_end);
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let query = tail.find('?').map_or("", |at| &tail[at..]);
    Ok(format!("{head}{authority}/{database}{query}"))
}

fn report(settings: &Settings, best: &[(Database, Post, Load)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nexample 04, POST /v1/payments (a new payment id per request): wrk -t2 -c{} -d{}s on \
         loopback, best of {} interleaved rounds, each load on a fresh database\n",
        settings.connections, settings.seconds, settings.rounds
    );
    let _ = writeln!(
        out,
        "| database | POST | req/s | p50 | p99 | non-2xx | idempotent / bare |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
    for &(database, post, ref load) in best {
        let ratio = match post {
            Post::Bare => "-".to_owned(),
            Post::Idempotent => best
                .iter()
                .find(|(d, p, _)| (*d, *p) == (database, Post::Bare))
                .map_or_else(
                    || "-".to_owned(),
                    |(_, _, bare)| {
                        format!(
                            "{:.3}",
                            load.figures.requests_per_second / bare.figures.requests_per_second
                        )
                    },
                ),
        };
        let statuses: Vec<String> = load
            .failures
            .iter()
            .map(|(status, count)| format!("{count}× {status}"))
            .collect();
        let non_2xx = if statuses.is_empty() {
            load.figures.errors.to_string()
        } else {
            format!("{} ({})", load.figures.errors, statuses.join(", "))
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {non_2xx} | {ratio} |",
            database.name(),
            post.name(),
            load.figures.requests_per_second,
            crate::format_latency(load.figures.p50),
            crate::format_latency(load.figures.p99),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_failed_posts_from_the_metrics() {
        let metrics = "\
# TYPE http_requests_total counter
http_requests_total{method=\"POST\",route=\"/v1/payments\",status=\"201\"} 900
http_requests_total{method=\"POST\",route=\"/v1/payments\",status=\"503\"} 7
http_requests_total{method=\"POST\",route=\"/v1/payments\",status=\"409\"} 2
http_requests_total{method=\"GET\",route=\"/v1/payments\",status=\"400\"} 5
http_requests_total{method=\"POST\",route=\"unmatched\",status=\"404\"} 1
";
        let counts = non_2xx_posts(metrics);
        assert_eq!(counts, BTreeMap::from([(409, 2), (503, 7)]));
    }

    #[test]
    fn swaps_the_database_of_a_url() {
        let swap = |url| with_database(url, "other").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            swap("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/other"
        );
        assert_eq!(
            swap("postgres://u@h/test?sslmode=disable"),
            "postgres://u@h/other?sslmode=disable"
        );
        assert_eq!(swap("postgres://u@h"), "postgres://u@h/other");
        assert!(with_database("nonsense", "other").is_err());
    }
}
