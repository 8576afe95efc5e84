//! `ana-bench peers <ana-bench-peers binary>` (`make bench-peers`): ana's benchmark servers
//! and the same handler behind the layers of other idempotency crates (built by the separate
//! crate `bench/peers`), measured in the same run with the same wrk scripts, the rounds
//! interleaved, and printed side by side with the ratios ana / peer.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::measure::{self, Figures, Server};
use crate::{DEFAULT_SECONDS, env_or, format_latency, serve};

/// Sessions the `axum-idempotent` server is loaded with: it caches responses per session, so
/// its new keys are spread over this many clients' sessions.
const SESSIONS: usize = 1_000;

/// The key prefix of `idempotent`'s Redis store in `bench/peers`.
const PEER_REDIS_PREFIX: &str = "ana-bench-peers";

const BEGIN_MARKER: &str = "<!-- peers:begin -->";
const END_MARKER: &str = "<!-- peers:end -->";

/// Which store a server keeps its records in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    None,
    Memory,
    Redis,
}

/// One server of the comparison.
#[derive(Clone, Copy)]
struct Contender {
    /// The name in the table.
    name: &'static str,
    /// `ana-bench serve <variant>`, or the peers' binary with `<variant>`.
    variant: &'static str,
    peer: bool,
    store: Store,
    /// Keeps its records in sessions: every request carries a session's cookie.
    sessions: bool,
}

const CONTENDERS: [Contender; 6] = [
    Contender::ana("bare", "bare", Store::None),
    Contender::ana("ana", "memory", Store::Memory),
    Contender::peer("idempotent 2.x", "idempotent-memory", Store::Memory, false),
    Contender::peer(
        "axum-idempotent 0.6",
        "axum-idempotent",
        Store::Memory,
        true,
    ),
    Contender::ana("ana", "redis", Store::Redis),
    Contender::peer("idempotent 2.x", "idempotent-redis", Store::Redis, false),
];

impl Contender {
    const fn ana(name: &'static str, variant: &'static str, store: Store) -> Self {
        Self {
            name,
            variant,
            peer: false,
            store,
            sessions: false,
        }
    }

    const fn peer(name: &'static str, variant: &'static str, store: Store, sessions: bool) -> Self {
        Self {
            name,
            variant,
            peer: true,
            store,
            sessions,
        }
    }

    fn start(&self, peers: &Path) -> Result<Server> {
        if self.peer {
            let mut command = Command::new(peers);
            command.arg(self.variant);
            Server::spawn(command, self.variant)
        } else {
            Server::start(self.variant)
        }
    }

    fn redis_prefix(&self) -> &'static str {
        if self.peer {
            PEER_REDIS_PREFIX
        } else {
            serve::REDIS_PREFIX
        }
    }
}

/// One server's figures: new keys and replays, each with the CPU time Redis spent per
/// request (from `INFO commandstats`) when it keeps its records there.
#[derive(Clone, Default)]
struct Measured {
    new_key: Load,
    replay: Load,
}

#[derive(Clone, Default)]
struct Load {
    figures: Figures,
    redis: Option<RedisCost>,
}

/// What Redis did per request: the CPU time of its process, and per command (a script's
/// time includes the commands it calls, which are counted on their own too).
#[derive(Clone, Default)]
struct RedisCost {
    process: f64,
    commands: Vec<(String, f64, f64)>,
}

impl RedisCost {
    /// Microseconds per request in scripts (`EVAL`, `EVALSHA`, `FCALL`).
    fn scripts(&self) -> f64 {
        self.commands
            .iter()
            .filter(|(name, ..)| is_script(name))
            // Folded from 0.0: an empty f64 sum is -0.0, printed with its sign.
            .fold(0.0, |sum, (_, _, usec)| sum + usec)
    }
}

pub(crate) fn is_script(command: &str) -> bool {
    [
        "eval",
        "evalsha",
        "eval_ro",
        "evalsha_ro",
        "fcall",
        "fcall_ro",
    ]
    .contains(&command)
}

struct Settings {
    seconds: u64,
    connections: u32,
    rounds: u32,
    redis_url: String,
    scripts: PathBuf,
    work: PathBuf,
}

/// Runs the comparison and writes its table into PERFORMANCE.md.
pub(crate) fn run(peers: Option<&str>) -> Result<()> {
    let Some(peers) = peers else {
        bail!("usage: ana-bench peers <ana-bench-peers binary> (`make bench-peers` builds it)");
    };
    let peers = Path::new(peers);
    if !peers.is_file() {
        bail!(
            "{} is not a file: build bench/peers first (`make bench-peers`)",
            peers.display()
        );
    }
    let settings = Settings {
        seconds: env_or("BENCH_SECONDS", DEFAULT_SECONDS),
        connections: env_or("BENCH_CONNECTIONS", 32),
        rounds: env_or("BENCH_ROUNDS", 3_u32).max(1),
        redis_url: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        scripts: Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"),
        work: std::env::temp_dir().join(format!("ana-bench-peers-{}", std::process::id())),
    };
    std::fs::create_dir_all(&settings.work)?;
    let measured = measure_all(&settings, peers);
    let _ = std::fs::remove_dir_all(&settings.work);
    let report = report(&settings, &measured?);
    print!("{report}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../PERFORMANCE.md");
    match crate::write_between(&path, (BEGIN_MARKER, END_MARKER), report.trim()) {
        Ok(()) => eprintln!("bench: the table is in {}", path.display()),
        Err(error) => eprintln!("bench: PERFORMANCE.md not updated: {error:#}"),
    }
    Ok(())
}

/// Every contender `rounds` times, the rounds interleaved; the best round of each load kept.
fn measure_all(settings: &Settings, peers: &Path) -> Result<Vec<Measured>> {
    let mut measured = vec![Measured::default(); CONTENDERS.len()];
    for round in 0..settings.rounds {
        for (contender, best_so_far) in CONTENDERS.iter().zip(&mut measured) {
            eprintln!(
                "bench: {} {} (round {} of {})...",
                contender.name,
                contender.variant,
                round + 1,
                settings.rounds
            );
            let run = format!("{}-{round}", std::process::id());
            let this = measure_one(settings, peers, contender, &run)?;
            best_so_far.new_key = best_load(std::mem::take(&mut best_so_far.new_key), this.new_key);
            best_so_far.replay = best_load(std::mem::take(&mut best_so_far.replay), this.replay);
        }
    }
    Ok(measured)
}

/// The load with more requests per second, with what Redis spent in it.
fn best_load(a: Load, b: Load) -> Load {
    if b.figures.requests_per_second > a.figures.requests_per_second {
        b
    } else {
        a
    }
}

/// One contender's server: sessions opened if it needs them, a warm-up, new keys, then
/// replays of one key.
fn measure_one(
    settings: &Settings,
    peers: &Path,
    contender: &Contender,
    run: &str,
) -> Result<Measured> {
    let server = contender.start(peers)?;
    let cookies = if contender.sessions {
        open_sessions(&server, SESSIONS)?
    } else {
        Vec::new()
    };
    let cookie_file = settings.work.join(format!("cookies-{run}"));
    if contender.sessions {
        std::fs::write(&cookie_file, cookies.join("\n"))?;
    }
    let cookie_file = cookie_file.to_string_lossy().into_owned();
    let new_key_script = settings.scripts.join("new-key.lua");
    let wrk = |script: &Path, arguments: &[&str], seconds| {
        measure::wrk_with(
            &server.url(),
            script,
            arguments,
            seconds,
            settings.connections,
        )
    };
    let with_cookies = |argument: String| {
        let mut arguments = vec![argument];
        if contender.sessions {
            arguments.push(cookie_file.clone());
        }
        arguments
    };
    let warm = with_cookies(format!("warm-{run}"));
    wrk(&new_key_script, &strs(&warm), 2)?;
    let new = with_cookies(format!("new-{run}"));
    let new_key = redis_measured(settings, contender.store, || {
        server.measured(|| wrk(&new_key_script, &strs(&new), settings.seconds))
    })?;

    let replay_key = format!("replayed-{run}");
    let cookie = cookies.first().map(String::as_str);
    let first = serve::send_post(
        server.port,
        "/bench",
        &format!(
            "X-Idempotency-Key: {replay_key}\r\n{}",
            cookie.map_or_else(String::new, |cookie| format!("Cookie: {cookie}\r\n"))
        ),
    )?;
    if !first.starts_with("HTTP/1.1 200") {
        bail!("the first request of the replay run failed: {first}");
    }
    let mut replay_arguments = vec![replay_key.as_str()];
    replay_arguments.extend(cookie);
    let replay = redis_measured(settings, contender.store, || {
        server.measured(|| {
            wrk(
                &settings.scripts.join("replay.lua"),
                &replay_arguments,
                settings.seconds,
            )
        })
    })?;
    drop(server);
    if contender.store == Store::Redis {
        crate::clean_redis_prefix(&settings.redis_url, contender.redis_prefix());
    }
    Ok(Measured { new_key, replay })
}

fn strs(strings: &[String]) -> Vec<&str> {
    strings.iter().map(String::as_str).collect()
}

/// Opens `count` sessions on the server (`POST /session`) and returns their cookies.
fn open_sessions(server: &Server, count: usize) -> Result<Vec<String>> {
    (0..count)
        .map(|_| {
            let response = serve::send_post(server.port, "/session", "")?;
            response
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("set-cookie")
                        .then(|| value.split(';').next().unwrap_or(value).trim().to_owned())
                })
                .with_context(|| format!("opening a session: no cookie in {response:?}"))
        })
        .collect()
}

/// Runs `load`, and for a server on Redis reads what Redis spent on it per request.
fn redis_measured(
    settings: &Settings,
    store: Store,
    load: impl FnOnce() -> Result<Figures>,
) -> Result<Load> {
    if store != Store::Redis {
        return Ok(Load {
            figures: load()?,
            redis: None,
        });
    }
    let before = redis_info(&settings.redis_url)?;
    let figures = load()?;
    let after = redis_info(&settings.redis_url)?;
    let requests = figures.requests.max(1) as f64;
    let commands = command_deltas(&before, &after, requests);
    Ok(Load {
        figures,
        redis: Some(RedisCost {
            process: (after.cpu_seconds - before.cpu_seconds).max(0.0) * 1e6 / requests,
            commands,
        }),
    })
}

/// Each command run between two `INFO` readings: its name, calls and microseconds, each
/// divided by `per` (the requests of the load), the costliest first.
pub(crate) fn command_deltas(
    before: &RedisInfo,
    after: &RedisInfo,
    per: f64,
) -> Vec<(String, f64, f64)> {
    let mut commands: Vec<(String, f64, f64)> = after
        .commands
        .iter()
        .filter_map(|(name, calls, usec)| {
            let (calls_before, usec_before) = before
                .commands
                .iter()
                .find(|(before, ..)| before == name)
                .map_or((0, 0), |(_, calls, usec)| (*calls, *usec));
            let calls = calls.saturating_sub(calls_before);
            (calls > 0).then(|| {
                let usec = usec.saturating_sub(usec_before);
                (name.clone(), calls as f64 / per, usec as f64 / per)
            })
        })
        .collect();
    commands.sort_by(|a, b| b.2.total_cmp(&a.2));
    commands
}

/// Redis's CPU time (user and system, seconds) and its `INFO commandstats`: each command's
/// calls and microseconds.
#[derive(Default)]
pub(crate) struct RedisInfo {
    pub(crate) cpu_seconds: f64,
    commands: Vec<(String, u64, u64)>,
}

pub(crate) fn redis_info(url: &str) -> Result<RedisInfo> {
    let (host, port) = serve::redis_address(url)?;
    let output = Command::new("redis-cli")
        .args(["-h", &host, "-p", &port.to_string()])
        .args(["INFO", "cpu", "commandstats"])
        .output()
        .context("running redis-cli INFO")?;
    if !output.status.success() {
        bail!("redis-cli INFO failed");
    }
    Ok(parse_info(&String::from_utf8_lossy(&output.stdout)))
}

/// Reads `used_cpu_user`, `used_cpu_sys` and the `cmdstat_<name>:calls=…,usec=…` lines
/// (`info` itself left out).
fn parse_info(text: &str) -> RedisInfo {
    let mut info = RedisInfo::default();
    for line in text.lines() {
        let Some((name, value)) = line.trim().split_once(':') else {
            continue;
        };
        if name == "used_cpu_user" || name == "used_cpu_sys" {
            info.cpu_seconds += value.parse::<f64>().unwrap_or(0.0);
        }
        let Some(command) = name.strip_prefix("cmdstat_") else {
            continue;
        };
        if command == "info" {
            continue;
        }
        let field = |wanted: &str| {
            value
                .split(',')
                .find_map(|field| field.strip_prefix(wanted)?.strip_prefix('='))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        info.commands
            .push((command.to_owned(), field("calls"), field("usec")));
    }
    info
}

fn report(settings: &Settings, measured: &[Measured]) -> String {
    let mut out = String::new();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let _ = writeln!(
        out,
        "\nana and its peers: {cores} cores, wrk -t2 -c{} -d{}s on loopback, one run, best of \
         {} interleaved rounds each; the same handler and wrk scripts; ana's Redis replays \
         without its replay cache\n",
        settings.connections, settings.seconds, settings.rounds
    );
    let _ = writeln!(
        out,
        "| scenario | ana req/s | ana p99 | peer | peer req/s | peer p99 | ana / peer | \
         p99 ≤ peer's | CPU/req ana, peer | non-2xx ana, peer |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|---:|---:|---:|---|---:|---:|");
    let rows = comparisons(measured);
    for row in &rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {} | {} | {:.0} | {} | {:.2} | {} | {} , {} | {} , {} |",
            row.scenario,
            row.ana.requests_per_second,
            format_latency(row.ana.p99),
            row.peer_name,
            row.peer.requests_per_second,
            format_latency(row.peer.p99),
            row.ratio(),
            match (row.ana.p99, row.peer.p99) {
                (Some(ana), Some(peer)) if ana <= peer => "yes",
                _ => "NO",
            },
            cpu(row.ana.server_cpu),
            cpu(row.peer.server_cpu),
            row.ana.errors,
            row.peer.errors,
        );
    }
    if let Some(bare) = measured.first() {
        let _ = writeln!(
            out,
            "\nThe bare handler, no layer: {:.0} req/s on new keys, {:.0} on replays. CPU/req: \
             the server process's user and system time per request.",
            bare.new_key.figures.requests_per_second, bare.replay.figures.requests_per_second
        );
    }
    own_costs(&mut out, &rows);
    redis_costs(&mut out, measured);
    targets(&mut out, &rows);
    out
}

/// What each layer itself costs per request, beyond the bare handler of the same run, and the
/// most the req/s ratio can show in this harness.
fn own_costs(out: &mut String, rows: &[Comparison]) {
    let _ = writeln!(
        out,
        "
What the layer itself costs per request, beyond the bare handler: the server's CPU \
         time per request over the bare server's, plus Redis's CPU time per request on Redis. \
         `wrk`, the server and the store share the two cores, so the req/s ratio cannot exceed \
         the bare handler's req/s over the peer's (ceiling):\n"
    );
    let _ = writeln!(
        out,
        "| scenario | peer | ana's own cost | peer's own cost | peer / ana | req/s ceiling, bare / peer |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|");
    let micros =
        |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} µs"));
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.2} |",
            row.scenario,
            row.peer_name,
            micros(row.ana_cost()),
            micros(row.peer_cost()),
            row.cost_ratio()
                .map_or_else(|| "-".to_owned(), |ratio| format!("{ratio:.2}")),
            row.ceiling(),
        );
    }
}

/// One line of the table: ana against one peer on one store and load.
struct Comparison {
    scenario: String,
    ana: Figures,
    peer_name: &'static str,
    peer: Figures,
    /// The bare handler under the same load script.
    bare: Figures,
    /// Redis's CPU time per request (µs), on the Redis store.
    ana_redis: Option<f64>,
    peer_redis: Option<f64>,
}

impl Comparison {
    fn ratio(&self) -> f64 {
        self.ana.requests_per_second / self.peer.requests_per_second
    }

    /// The most `ratio` can show in this harness: the bare handler against the peer.
    fn ceiling(&self) -> f64 {
        self.bare.requests_per_second / self.peer.requests_per_second
    }

    /// What a layer costs per request of CPU time (µs) beyond the bare handler: the
    /// server's own over the bare server's, plus what Redis spent, on the Redis store.
    fn own_cost(figures: &Figures, redis: Option<f64>, bare: &Figures) -> Option<f64> {
        let server = figures.server_cpu?.as_secs_f64() * 1e6;
        let bare = bare.server_cpu?.as_secs_f64() * 1e6;
        Some(server - bare + redis.unwrap_or(0.0))
    }

    fn ana_cost(&self) -> Option<f64> {
        Self::own_cost(&self.ana, self.ana_redis, &self.bare)
    }

    fn peer_cost(&self) -> Option<f64> {
        Self::own_cost(&self.peer, self.peer_redis, &self.bare)
    }

    /// The peer's own cost over ana's: how many times ana's the peer spends.
    fn cost_ratio(&self) -> Option<f64> {
        Some(self.peer_cost()? / self.ana_cost()?)
    }
}

fn comparisons(measured: &[Measured]) -> Vec<Comparison> {
    let mut rows = Vec::new();
    for (store, label) in [(Store::Memory, "memory"), (Store::Redis, "Redis")] {
        let of_store = || {
            CONTENDERS
                .iter()
                .zip(measured)
                .filter(move |(contender, _)| contender.store == store)
        };
        let Some((_, ana)) = of_store().find(|(contender, _)| !contender.peer) else {
            continue;
        };
        let Some(bare) = CONTENDERS
            .iter()
            .zip(measured)
            .find(|(contender, _)| contender.store == Store::None)
            .map(|(_, bare)| bare)
        else {
            continue;
        };
        for (load, replay) in [("new key", false), ("replay", true)] {
            for (peer, figures) in of_store().filter(|(contender, _)| contender.peer) {
                let pick = |m: &Measured| {
                    if replay {
                        m.replay.clone()
                    } else {
                        m.new_key.clone()
                    }
                };
                let (ana, peer_load) = (pick(ana), pick(figures));
                rows.push(Comparison {
                    scenario: format!("{label} {load}"),
                    ana: ana.figures,
                    peer_name: peer.name,
                    peer: peer_load.figures,
                    bare: pick(bare).figures,
                    ana_redis: ana.redis.map(|redis| redis.process),
                    peer_redis: peer_load.redis.map(|redis| redis.process),
                });
            }
        }
    }
    rows
}

/// Redis's own CPU time per request, for ana and `idempotent`.
fn redis_costs(out: &mut String, measured: &[Measured]) {
    let _ = writeln!(
        out,
        "\nInside Redis, per request (read around each load: the process's CPU time from `INFO \
         cpu`; from `INFO commandstats`, the time in scripts, and each command's calls and time, \
         a script's own counting the commands it calls):\n"
    );
    let _ = writeln!(
        out,
        "| server | load | Redis CPU/req | in scripts | commands (calls/req, µs/req) |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---|");
    for (contender, figures) in CONTENDERS.iter().zip(measured) {
        for (load, measured) in [("new key", &figures.new_key), ("replay", &figures.replay)] {
            if let Some(redis) = &measured.redis {
                let commands: Vec<String> = redis
                    .commands
                    .iter()
                    .map(|(name, calls, usec)| format!("{name} {calls:.2}, {usec:.1}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {load} | {:.1} µs | {:.1} µs | {} |",
                    contender.name,
                    redis.process,
                    redis.scripts(),
                    commands.join("; ")
                );
            }
        }
    }
}

/// The targets of the comparison: ana at least 1.5 times its best peer.
fn targets(out: &mut String, rows: &[Comparison]) {
    let best_ratio = |scenario: &str| {
        rows.iter()
            .filter(|row| row.scenario == scenario)
            .map(Comparison::ratio)
            .reduce(f64::min)
            .unwrap_or(f64::NAN)
    };
    let _ = writeln!(out, "\n| target | measured | limit | met |");
    let _ = writeln!(out, "|---|---:|---:|---|");
    for (name, scenario) in [
        ("memory new key / best peer", "memory new key"),
        ("Redis new key / idempotent", "Redis new key"),
        ("Redis replay, no replay cache / idempotent", "Redis replay"),
    ] {
        let value = best_ratio(scenario);
        let _ = writeln!(
            out,
            "| {name} | {value:.3} | ≥ 1.50 | {} |",
            if value >= 1.5 { "yes" } else { "NO" }
        );
    }
    // The same lead on what the layers themselves cost: the least of the peers' own cost over
    // ana's.
    let cost_ratio = |scenario: &str| {
        rows.iter()
            .filter(|row| row.scenario == scenario)
            .map(|row| row.cost_ratio().unwrap_or(f64::NAN))
            .reduce(f64::min)
            .unwrap_or(f64::NAN)
    };
    for (name, scenario) in [
        (
            "memory new key, own cost: best peer / ana",
            "memory new key",
        ),
        ("memory replay, own cost: best peer / ana", "memory replay"),
        ("Redis new key, own cost: idempotent / ana", "Redis new key"),
        ("Redis replay, own cost: idempotent / ana", "Redis replay"),
    ] {
        let value = cost_ratio(scenario);
        let _ = writeln!(
            out,
            "| {name} | {value:.3} | ≥ 1.50 | {} |",
            if value >= 1.5 { "yes" } else { "NO" }
        );
    }
}

fn cpu(cpu: Option<Duration>) -> String {
    cpu.map_or_else(
        || "-".to_owned(),
        |cpu| format!("{:.1} µs", cpu.as_secs_f64() * 1e6),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_cpu_and_commandstats() {
        let text = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\n\
            used_cpu_sys_children:9.0\r\n# Commandstats\r\n\
            cmdstat_evalsha:calls=200,usec=2400,usec_per_call=12.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_info:calls=3,usec=90,usec_per_call=30.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_get:calls=10,usec=5,usec_per_call=0.50,rejected_calls=0,failed_calls=0\r\n";
        let info = parse_info(text);
        assert!((info.cpu_seconds - 3.75).abs() < 1e-9);
        assert_eq!(
            info.commands,
            [("evalsha".to_owned(), 200, 2400), ("get".to_owned(), 10, 5)]
        );
    }

    #[test]
    fn own_cost_is_over_the_bare_server_plus_redis() {
        let figures = |requests_per_second, cpu_micros: u64| Figures {
            requests_per_second,
            server_cpu: Some(Duration::from_nanos(cpu_micros * 1000)),
            ..Figures::default()
        };
        let row = Comparison {
            scenario: "Redis new key".to_owned(),
            ana: figures(40_000.0, 19),
            peer_name: "peer",
            peer: figures(30_000.0, 21),
            bare: figures(120_000.0, 7),
            ana_redis: Some(10.0),
            peer_redis: Some(18.0),
        };
        assert_eq!(row.ana_cost(), Some(22.0));
        assert_eq!(row.peer_cost(), Some(32.0));
        assert_eq!(row.cost_ratio(), Some(32.0 / 22.0));
        assert!((row.ceiling() - 4.0).abs() < 1e-9);
    }
}
