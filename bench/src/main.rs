//! `make bench`: ana's HTTP and store benchmarks, printed as one table of ratios.
//!
//! ```text
//! cargo run --profile bench -p ana-bench      # everything (what `make bench` runs)
//! cargo run --profile bench -p ana-bench -- serve memory  # one server, prints its port
//! cargo run --profile bench -p ana-bench -- limits        # pgbench and redis-benchmark alone
//! cargo run --profile bench -p ana-bench -- peers <ana-bench-peers binary>  # ana vs its peers
//! cargo run --profile bench -p ana-bench -- payments  # example 04: idempotent vs bare POST
//! cargo run --profile bench -p ana-bench -- redis-cost 20000  # Redis's time per new key, replay
//! valgrind --tool=callgrind target/release/ana-bench inproc new 10000  # the route in process
//! ```
//!
//! Every figure comes from one run on this machine: the bare axum handler, the same handler
//! behind `IdempotencyLayer` on the memory store, Postgres, Redis, SQLite and MySQL (new keys
//! and replays, load from `wrk` in a separate process on loopback), the stores' own limits
//! (`pgbench` with the claim + finish protocol and the replay `SELECT`; `redis-benchmark` with
//! the claim's `SET … NX GET`; the SQLite and MySQL repositories' statements in a sqlx loop), and the
//! memory store's footprint for a million records.

mod footprint;
mod measure;
mod nats;
mod payments;
mod peers;
mod redis_cost;
mod serve;
mod sql_limits;
mod wakeup;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use measure::{Figures, Server};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve::run(args.get(1).map_or("bare", String::as_str)),
        Some("footprint") => {
            let records = args
                .get(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(1_000_000);
            let runtime = tokio::runtime::Builder::new_current_thread().build()?;
            let bytes =
                runtime.block_on(footprint::measure(records, &serve::recorded_response()?))?;
            println!("{bytes}");
            Ok(())
        }
        Some("inproc") => {
            let count = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(10_000);
            serve::in_process(args.get(1).map_or("bare", String::as_str), count)
        }
        Some("limits") => limits(),
        Some("peers") => peers::run(args.get(1).map(String::as_str)),
        Some("payments") => payments::run(args.get(1).map(String::as_str)),
        Some("redis-cost") => {
            redis_cost::run(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(20_000))
        }
        Some("wakeup") => wakeup::report(
            &std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            &std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        ),
        Some("nats") => nats::run(
            &std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            &std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
            nats::messages(),
        ),
        None | Some("run") => run(),
        Some(other) => {
            bail!(
                "unknown command {other:?} (expected run, limits, serve, inproc, footprint, peers, payments, redis-cost, wakeup or nats)"
            )
        }
    }
}

/// Seconds per load run (`BENCH_SECONDS`).
const DEFAULT_SECONDS: u64 = 6;

struct Settings {
    seconds: u64,
    connections: u32,
    database_url: String,
    redis_url: String,
    scripts: PathBuf,
    rounds: u32,
}

impl Settings {
    /// Seconds per statement loop of the SQL stores: half a load run, to keep `make bench`
    /// within its time (a loop's rate settles within a second).
    fn limit_seconds(&self) -> u64 {
        (self.seconds / 2).max(1)
    }
}

fn run() -> Result<()> {
    let settings = Settings {
        // Six seconds a load: with the build of a fresh checkout (about 2½ minutes here),
        // `make bench` stays under ten minutes.
        seconds: env_or("BENCH_SECONDS", DEFAULT_SECONDS),
        connections: env_or("BENCH_CONNECTIONS", 32),
        database_url: std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        redis_url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        scripts: Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"),
        rounds: env_or("BENCH_ROUNDS", 3_u32).max(1),
    };
    let run_id = format!("{}", std::process::id());
    let mut rows = Vec::new();

    eprintln!("bench: wake-up latency of waiting calls...");
    wakeup::report(&settings.database_url, &settings.redis_url)?;
    eprintln!("bench: memory footprint of 1,000,000 records...");
    let footprint = footprint_in_child()?;

    // Every variant is measured `rounds` times, the rounds interleaved (bare, memory,
    // postgres, redis, bare, ...), and its best round kept: a burst of noise from the rest of
    // a 2-core machine then spoils one round of one variant, not the ratio. The stores' own
    // limits are measured the same way, right after their HTTP variant in each round (a
    // Postgres commit's fsync time drifts on this machine: HTTP and pgbench must see the same).
    let rounds = settings.rounds;
    // `+cache`: replays only, answered by the replay cache in front of the store.
    // `bare+1us`: the bare handler spending one microsecond more of CPU per request, new
    // keys only: what a microsecond of server work costs in this harness (wrk shares the
    // cores), the scale for the layer's ratios.
    let variants = [
        ("bare", Only::Both),
        ("bare+1us", Only::NewKeys),
        ("memory", Only::Both),
        ("postgres", Only::Both),
        ("postgres+cache", Only::Replays),
        ("redis", Only::Both),
        ("redis+cache", Only::Replays),
        ("sqlite", Only::Both),
        ("mysql", Only::Both),
    ];
    // The SQL stores' statement loops run in this process.
    let runtime = tokio::runtime::Runtime::new()?;
    let pg_scripts = pgbench_scripts()?;
    let (redis_host, redis_port) = serve::redis_address(&settings.redis_url)?;
    let claim = serve::redis_claim_command()?;
    let claim: Vec<&str> = claim.iter().map(String::as_str).collect();
    let mut http: Vec<(&str, Only, Figures, Figures)> = Vec::new();
    let (mut pg_new, mut pg_new_tx, mut pg_replay, mut redis_new) = Default::default();
    let (mut sqlite_new, mut sqlite_replay, mut mysql_new, mut mysql_replay) = Default::default();
    for round in 0..rounds {
        for (variant, only) in variants {
            eprintln!("bench: HTTP {variant} (round {} of {rounds})...", round + 1);
            let (new_key, replay) =
                http_round(&settings, variant, &format!("{run_id}-{round}"), only)?;
            match http.iter_mut().find(|(v, ..)| *v == variant) {
                Some((_, _, best_new, best_replay)) => {
                    *best_new = best(*best_new, new_key);
                    *best_replay = best(*best_replay, replay);
                }
                None => http.push((variant, only, new_key, replay)),
            }
            match variant {
                "postgres" => {
                    eprintln!("bench: pgbench (store limits)...");
                    let pgbench = |script| {
                        measure::pgbench(
                            &settings.database_url,
                            script,
                            settings.seconds,
                            serve::pool_size(),
                        )
                    };
                    pg_new = best(pg_new, pgbench(&pg_scripts.claim_finish)?);
                    pg_new_tx = best(pg_new_tx, pgbench(&pg_scripts.claim_finish_in_transaction)?);
                    pg_replay = best(pg_replay, pgbench(&pg_scripts.replay)?);
                }
                "redis" => {
                    eprintln!("bench: redis-benchmark (store limit)...");
                    let new = measure::redis_benchmark(
                        &redis_host,
                        redis_port,
                        200_000,
                        settings.connections,
                        &claim,
                    )?;
                    redis_new = best(redis_new, new);
                    clean_redis(&settings.redis_url);
                }
                "sqlite" => {
                    eprintln!("bench: SQLite statements (store limit)...");
                    let run = format!("{run_id}-{round}");
                    let (new, replay) = runtime
                        .block_on(sql_limits::sqlite_limits(&run, settings.limit_seconds()))?;
                    sqlite_new = best(sqlite_new, new);
                    sqlite_replay = best(sqlite_replay, replay);
                }
                "mysql" => {
                    eprintln!("bench: MySQL statements (store limit)...");
                    let run = format!("{run_id}-{round}");
                    let (new, replay) = runtime
                        .block_on(sql_limits::mysql_limits(&run, settings.limit_seconds()))?;
                    mysql_new = best(mysql_new, new);
                    mysql_replay = best(mysql_replay, replay);
                }
                _ => {}
            }
        }
    }

    // Each scenario is compared with the bare handler under the same load script.
    let (bare, bare_replay) = http
        .first()
        .map(|(_, _, new, replay)| (*new, *replay))
        .unwrap_or_default();
    for &(variant, only, ref new_key, ref replay) in &http {
        if only != Only::Replays {
            rows.push(Row::http(variant, "new key", new_key, &bare));
        }
        if only != Only::NewKeys {
            rows.push(Row::http(variant, "replay", replay, &bare_replay));
        }
    }
    rows.push(Row::limit("pgbench claim+finish (2 steps)", &pg_new));
    rows.push(Row::limit(
        "pgbench claim+finish, finish in BEGIN/COMMIT",
        &pg_new_tx,
    ));
    rows.push(Row::limit("pgbench replay SELECT", &pg_replay));
    rows.push(Row::limit("redis-benchmark claim SET NX GET", &redis_new));
    rows.push(Row::limit(
        "sqlite read+claim+complete statements",
        &sqlite_new,
    ));
    rows.push(Row::limit("sqlite replay read statement", &sqlite_replay));
    rows.push(Row::limit(
        "mysql read+claim+complete statements",
        &mysql_new,
    ));
    rows.push(Row::limit("mysql replay read statement", &mysql_replay));
    let _ = std::fs::remove_dir_all(serve::sqlite_dir(std::process::id()));
    if let Err(error) = runtime.block_on(sql_limits::drop_mysql_database(&serve::mysql_url())) {
        eprintln!(
            "bench: could not drop the {} database: {error:#}",
            sql_limits::MYSQL_DATABASE
        );
    }

    let find = |variant: &str, replay: bool| {
        http.iter()
            .find(|(v, ..)| *v == variant)
            .map(|(_, _, new, rep)| if replay { *rep } else { *new })
            .unwrap_or_default()
    };
    let ratio = |a: Figures, b: Figures| a.requests_per_second / b.requests_per_second;
    let added_p99 = find("memory", false)
        .p99
        .zip(bare.p99)
        .map(|(layer, bare)| layer.as_secs_f64() - bare.as_secs_f64());

    let targets = [
        Target::at_least(
            "memory new key / bare",
            ratio(find("memory", false), bare),
            0.85,
        ),
        Target::at_least(
            "memory replay / bare replay",
            ratio(find("memory", true), bare_replay),
            0.9,
        ),
        Target::at_least(
            "postgres new key / pgbench claim+finish",
            ratio(find("postgres", false), pg_new),
            0.8,
        ),
        Target::at_least(
            "postgres replay, replay cache / pgbench replay SELECT",
            ratio(find("postgres+cache", true), pg_replay),
            0.6,
        ),
        Target::at_least(
            "redis new key / bare",
            ratio(find("redis", false), bare),
            0.5,
        ),
        Target::at_least(
            "redis replay, replay cache / bare replay",
            ratio(find("redis+cache", true), bare_replay),
            0.6,
        ),
        Target::at_most_ms(
            "added p99, memory new key vs bare (ms)",
            added_p99.map_or(f64::NAN, |s| s * 1e3),
            1.0,
        ),
        Target::at_most_ms(
            "memory store, 1,000,000 records (MB)",
            footprint as f64 / 1e6,
            420.0,
        ),
    ];

    let uncached = [
        (
            "postgres replay, no cache / pgbench replay SELECT",
            ratio(find("postgres", true), pg_replay),
        ),
        (
            "redis replay, no cache / bare replay",
            ratio(find("redis", true), bare_replay),
        ),
        (
            "redis new key / redis-benchmark claim SET NX GET",
            ratio(find("redis", false), redis_new),
        ),
        (
            "postgres new key / pgbench claim+finish, finish in BEGIN/COMMIT",
            ratio(find("postgres", false), pg_new_tx),
        ),
        (
            "sqlite new key / its read+claim+complete statements",
            ratio(find("sqlite", false), sqlite_new),
        ),
        (
            "sqlite replay, no cache / its read statement",
            ratio(find("sqlite", true), sqlite_replay),
        ),
        (
            "mysql new key / its read+claim+complete statements",
            ratio(find("mysql", false), mysql_new),
        ),
        (
            "mysql replay, no cache / its read statement",
            ratio(find("mysql", true), mysql_replay),
        ),
    ];
    print_report(&settings, &rows, &targets, &uncached);
    Ok(())
}

/// The stores' own limits alone (pgbench, redis-benchmark), one round: for comparing a
/// server run by hand (`serve`) with what the store can do right now.
fn limits() -> Result<()> {
    let seconds = env_or("BENCH_SECONDS", DEFAULT_SECONDS);
    let connections: u32 = env_or("BENCH_CONNECTIONS", 32);
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let scripts = pgbench_scripts()?;
    let pgbench = |script| measure::pgbench(&database_url, script, seconds, serve::pool_size());
    let new = pgbench(&scripts.claim_finish)?;
    let new_tx = pgbench(&scripts.claim_finish_in_transaction)?;
    let replay = pgbench(&scripts.replay)?;
    let (host, port) = serve::redis_address(&redis_url)?;
    let claim = serve::redis_claim_command()?;
    let claim: Vec<&str> = claim.iter().map(String::as_str).collect();
    let redis = measure::redis_benchmark(&host, port, 200_000, connections, &claim)?;
    clean_redis(&redis_url);
    println!("pgbench claim+finish {:.0} tps", new.requests_per_second);
    println!(
        "pgbench claim+finish, finish in BEGIN/COMMIT {:.0} tps",
        new_tx.requests_per_second
    );
    println!(
        "pgbench replay SELECT {:.0} tps",
        replay.requests_per_second
    );
    println!(
        "redis-benchmark claim SET NX GET {:.0} req/s",
        redis.requests_per_second
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let run = std::process::id().to_string();
    let half = (seconds / 2).max(1);
    let sqlite = runtime.block_on(sql_limits::sqlite_limits(&run, half));
    let _ = std::fs::remove_dir_all(serve::sqlite_dir(std::process::id()));
    let (sqlite_new, sqlite_replay) = sqlite?;
    let (mysql_new, mysql_replay) = runtime.block_on(sql_limits::mysql_limits(&run, half))?;
    runtime.block_on(sql_limits::drop_mysql_database(&serve::mysql_url()))?;
    for (name, figures) in [
        ("sqlite read+claim+complete statements", sqlite_new),
        ("sqlite replay read statement", sqlite_replay),
        ("mysql read+claim+complete statements", mysql_new),
        ("mysql replay read statement", mysql_replay),
    ] {
        println!(
            "{name} {:.0}/s ({} failed)",
            figures.requests_per_second, figures.errors
        );
    }
    Ok(())
}

/// The pgbench scripts, on a migrated schema: the Postgres server migrates the schema they
/// seed and write to (a fresh database has none yet).
fn pgbench_scripts() -> Result<serve::PgbenchScripts> {
    drop(Server::start("postgres")?);
    serve::pgbench_scripts()
}

/// Which loads a variant's server gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    Both,
    NewKeys,
    Replays,
}

/// One variant's server: a warm-up, then new keys, then replays of one key (as `only` says).
fn http_round(
    settings: &Settings,
    variant: &str,
    run: &str,
    only: Only,
) -> Result<(Figures, Figures)> {
    let server = Server::start(variant)?;
    let new_key_script = settings.scripts.join("new-key.lua");
    measure::wrk(
        &server.url(),
        &new_key_script,
        &format!("warm-{run}"),
        2,
        settings.connections,
    )?;
    let new_key = if only == Only::Replays {
        Figures::default()
    } else {
        server.measured(|| {
            measure::wrk(
                &server.url(),
                &new_key_script,
                &format!("new-{run}"),
                settings.seconds,
                settings.connections,
            )
        })?
    };
    if only == Only::NewKeys {
        return Ok((new_key, Figures::default()));
    }
    let replay_key = format!("replayed-{run}");
    serve::post_once(server.port, &replay_key)?;
    let replay = server.measured(|| {
        measure::wrk(
            &server.url(),
            &settings.scripts.join("replay.lua"),
            &replay_key,
            settings.seconds,
            settings.connections,
        )
    })?;
    Ok((new_key, replay))
}

/// The round with more requests per second.
fn best(a: Figures, b: Figures) -> Figures {
    if b.requests_per_second > a.requests_per_second {
        b
    } else {
        a
    }
}

/// Deletes the records the benchmark left in Redis (they would live a day).
fn clean_redis(url: &str) {
    clean_redis_prefix(url, serve::REDIS_PREFIX);
}

/// Deletes the Redis keys that start with `prefix`.
fn clean_redis_prefix(url: &str, prefix: &str) {
    let Ok((host, port)) = serve::redis_address(url) else {
        return;
    };
    let port = port.to_string();
    let script = format!(
        "redis-cli -h {host} -p {port} --scan --pattern '{prefix}*' | xargs -r -n 1000 redis-cli -h {host} -p {port} DEL >/dev/null"
    );
    let cleaned = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
        .is_ok_and(|status| status.success());
    if !cleaned {
        eprintln!("bench: could not delete the {prefix}* keys");
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Runs the footprint measurement in a fresh process, so nothing else is in its heap.
fn footprint_in_child() -> Result<u64> {
    let exe = std::env::current_exe()?;
    let output = std::process::Command::new(exe)
        .args(["footprint", "1000000"])
        .output()
        .context("running the footprint measurement")?;
    if !output.status.success() {
        bail!(
            "the footprint measurement failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("reading the footprint")
}

struct Row {
    name: String,
    figures: Figures,
    ratio: Option<f64>,
}

impl Row {
    fn http(variant: &str, mode: &str, figures: &Figures, bare: &Figures) -> Self {
        Self {
            name: format!("HTTP {variant:<8} {mode}"),
            figures: *figures,
            ratio: Some(figures.requests_per_second / bare.requests_per_second),
        }
    }

    fn limit(name: &str, figures: &Figures) -> Self {
        Self {
            name: name.to_owned(),
            figures: *figures,
            ratio: None,
        }
    }
}

struct Target {
    name: &'static str,
    value: f64,
    limit: f64,
    at_least: bool,
}

impl Target {
    fn at_least(name: &'static str, value: f64, limit: f64) -> Self {
        Self {
            name,
            value,
            limit,
            at_least: true,
        }
    }

    fn at_most_ms(name: &'static str, value: f64, limit: f64) -> Self {
        Self {
            name,
            value,
            limit,
            at_least: false,
        }
    }

    fn met(&self) -> bool {
        if self.at_least {
            self.value >= self.limit
        } else {
            self.value <= self.limit
        }
    }
}

fn format_latency(latency: Option<Duration>) -> String {
    latency.map_or_else(
        || "-".to_owned(),
        |l| format!("{:.2} ms", l.as_secs_f64() * 1e3),
    )
}

/// Prints the report and writes it into PERFORMANCE.md, between its `bench:begin` and
/// `bench:end` markers, so the document holds the figures of the last run.
fn print_report(settings: &Settings, rows: &[Row], targets: &[Target], uncached: &[(&str, f64)]) {
    let report = report(settings, rows, targets, uncached);
    let _ = std::io::stdout().lock().write_all(report.as_bytes());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../PERFORMANCE.md");
    match write_between_markers(&path, report.trim()) {
        Ok(()) => eprintln!("bench: the table is in {}", path.display()),
        Err(error) => eprintln!("bench: PERFORMANCE.md not updated: {error:#}"),
    }
}

const BEGIN_MARKER: &str = "<!-- bench:begin -->";
const END_MARKER: &str = "<!-- bench:end -->";

/// Replaces what lies between the markers of the file at `path` with `report`.
fn write_between_markers(path: &Path, report: &str) -> Result<()> {
    write_between(path, (BEGIN_MARKER, END_MARKER), report)
}

/// Replaces what lies between the `(begin, end)` markers of the file at `path` with `report`.
fn write_between(
    path: &Path,
    (begin_marker, end_marker): (&str, &str),
    report: &str,
) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(begin), Some(end)) = (text.find(begin_marker), text.find(end_marker)) else {
        bail!(
            "{} has no {begin_marker} … {end_marker} markers",
            path.display()
        );
    };
    if end < begin {
        bail!("{} has its markers in the wrong order", path.display());
    }
    let head = &text[..begin + begin_marker.len()];
    let tail = &text[end..];
    std::fs::write(path, format!("{head}\n{report}\n{tail}"))
        .with_context(|| format!("writing {}", path.display()))
}

fn report(
    settings: &Settings,
    rows: &[Row],
    targets: &[Target],
    uncached: &[(&str, f64)],
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let _ = writeln!(
        out,
        "\nana benchmarks: {cores} cores, wrk -t2 -c{} -d{}s on loopback, one run (HTTP and store \
         limits: best of {} interleaved rounds each; × bare: against the bare handler under the \
         same load script)\n",
        settings.connections, settings.seconds, settings.rounds
    );
    let _ = writeln!(
        out,
        "| scenario | req/s | p50 | p99 | × bare | server CPU/req | non-2xx |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {} | {} | {} |",
            row.name,
            row.figures.requests_per_second,
            format_latency(row.figures.p50),
            format_latency(row.figures.p99),
            row.ratio
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            row.figures.server_cpu.map_or_else(
                || "-".to_owned(),
                |cpu| format!("{:.1} µs", cpu.as_secs_f64() * 1e6)
            ),
            row.figures.errors,
        );
    }
    let _ = writeln!(
        out,
        "\nserver CPU/req: user and system time of the server process per request (wrk and \
         the stores not counted). bare+1us: the bare handler spending 1 µs more CPU per \
         request, the scale of the × bare ratios on this machine."
    );
    let _ = writeln!(out, "\n| target | measured | limit | met |");
    let _ = writeln!(out, "|---|---:|---:|---|");
    for target in targets {
        let _ = writeln!(
            out,
            // Three decimals: 0.898 must not print as a missed 0.90.
            "| {} | {:.3} | {} {:.2} | {} |",
            target.name,
            target.value,
            if target.at_least { "≥" } else { "≤" },
            target.limit,
            if target.met() { "yes" } else { "NO" },
        );
    }
    let _ = writeln!(
        out,
        "\nFor information (no target): the store paths without the replay cache; a new key \
         on Redis runs a SET NX GET (the claim, what redis-benchmark runs) and a script (the \
         complete); the benchmark's \
         handler opens no transaction, so its Postgres finish is one autocommitted UPDATE \
         (a handler writing in its session adds BEGIN and COMMIT). The SQLite and MySQL \
         limits are their repository's own statements sent with sqlx in a loop, one task a \
         connection (SQLite: a file with WAL and synchronous = FULL, 8 connections; MySQL: \
         the server at MYSQL_URL, MariaDB on this machine), for half a load run each.\n"
    );
    let _ = writeln!(out, "| ratio | measured |");
    let _ = writeln!(out, "|---|---:|");
    for (name, value) in uncached {
        let _ = writeln!(out, "| {name} | {value:.3} |");
    }
    out
}
