//! Running the load generators (wrk, pgbench, redis-benchmark) and reading their figures.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Throughput and latency of one load run.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Figures {
    pub(crate) requests_per_second: f64,
    pub(crate) p50: Option<Duration>,
    pub(crate) p99: Option<Duration>,
    pub(crate) errors: u64,
    /// Requests answered (wrk's count).
    pub(crate) requests: u64,
    /// CPU time (user and system) the server process spent per request, when measured.
    pub(crate) server_cpu: Option<Duration>,
}

/// A server child process, killed when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) port: u16,
}

impl Server {
    /// Starts `ana-bench serve <variant>` and waits for the line that gives its port.
    pub(crate) fn start(variant: &str) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut command = Command::new(exe);
        command.args(["serve", variant]);
        Self::spawn(command, variant)
    }

    /// Starts `command`, a server that prints `listening on 127.0.0.1:<port>` first (as
    /// `ana-bench serve` does), and waits for that line.
    pub(crate) fn spawn(command: Command, variant: &str) -> Result<Self> {
        Self::spawn_announcing(command, variant, "listening on 127.0.0.1:")
    }

    /// Starts `command`, a server whose first line on stdout is `announce` followed by its
    /// port, and waits for that line.
    pub(crate) fn spawn_announcing(
        mut command: Command,
        variant: &str,
        announce: &str,
    ) -> Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {variant} server"))?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading the server's port")?;
        let port = line
            .trim()
            .strip_prefix(announce)
            .and_then(|port| port.parse().ok());
        match port {
            Some(port) => Ok(Self { child, port }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the {variant} server did not start (said {line:?})")
            }
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}/bench", self.port)
    }

    /// The CPU time (user and system, every thread) the server has used so far: fields 14
    /// and 15 of `/proc/<pid>/stat`, in ticks of 1/100 s (Linux's `USER_HZ`). `None` off Linux.
    pub(crate) fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // The command name (field 2) is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace().skip(11);
        let user: u64 = fields.next()?.parse().ok()?;
        let system: u64 = fields.next()?.parse().ok()?;
        Some(Duration::from_millis((user + system) * 10))
    }

    /// Runs `load` and adds to its figures the server's CPU time per request.
    pub(crate) fn measured(&self, load: impl FnOnce() -> Result<Figures>) -> Result<Figures> {
        let before = self.cpu_time();
        let mut figures = load()?;
        let after = self.cpu_time();
        if let (Some(before), Some(after)) = (before, after)
            && figures.requests > 0
        {
            let used = after.saturating_sub(before).as_secs_f64();
            figures.server_cpu = Some(Duration::from_secs_f64(used / figures.requests as f64));
        }
        Ok(figures)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs wrk against `url` with `script` (and its argument) and reads its figures.
pub(crate) fn wrk(
    url: &str,
    script: &Path,
    argument: &str,
    seconds: u64,
    connections: u32,
) -> Result<Figures> {
    wrk_with(url, script, &[argument], seconds, connections)
}

/// Runs wrk against `url` with `script` and its `arguments`, and reads its figures.
pub(crate) fn wrk_with(
    url: &str,
    script: &Path,
    arguments: &[&str],
    seconds: u64,
    connections: u32,
) -> Result<Figures> {
    let output = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s")])
        .args(["--latency", "--timeout", "5s", "-s"])
        .arg(script)
        .arg(url)
        .arg("--")
        .args(arguments)
        .output()
        .context("running wrk (install it: apt-get install wrk, or `make bench`)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_wrk(&text)
}

fn parse_wrk(text: &str) -> Result<Figures> {
    let mut figures = Figures::default();
    for line in text.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some(count), Some("requests")) => {
                figures.requests = count.parse().unwrap_or(0);
            }
            (Some("Requests/sec:"), Some(value)) => {
                figures.requests_per_second = value.parse().context("wrk's Requests/sec")?;
            }
            (Some("50%"), Some(value)) => figures.p50 = parse_latency(value),
            (Some("99%"), Some(value)) => figures.p99 = parse_latency(value),
            (Some("Non-2xx"), _) => {
                figures.errors += line
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            (Some("Socket"), Some("errors:")) => {
                figures.errors += line
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if figures.requests_per_second == 0.0 {
        bail!("wrk printed no Requests/sec:\n{text}");
    }
    Ok(figures)
}

fn parse_latency(value: &str) -> Option<Duration> {
    let split = value.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// Runs pgbench with `script` and reads its transactions per second.
pub(crate) fn pgbench(
    database_url: &str,
    script: &Path,
    seconds: u64,
    clients: u32,
) -> Result<Figures> {
    let output = Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-j", "2"])
        .args([format!("-c{clients}"), format!("-T{seconds}")])
        .arg("-f")
        .arg(script)
        .arg(database_url)
        .output()
        .context("running pgbench (apt-get install postgresql-client)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let tps = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse().ok())
        .with_context(|| format!("pgbench printed no tps:\n{text}"))?;
    let latency = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("latency average = "))
        .and_then(|rest| rest.strip_suffix(" ms"))
        .and_then(|ms| ms.parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1e3));
    Ok(Figures {
        requests_per_second: tps,
        p50: latency,
        p99: None,
        ..Figures::default()
    })
}

/// Runs redis-benchmark for one command (with `__rand_int__` placeholders) and reads its
/// requests per second.
pub(crate) fn redis_benchmark(
    host: &str,
    port: u16,
    requests: u32,
    clients: u32,
    command: &[&str],
) -> Result<Figures> {
    let output = Command::new("redis-benchmark")
        .args(["-h", host, "-p", &port.to_string(), "-q", "--csv"])
        .args(["-n", &requests.to_string(), "-c", &clients.to_string()])
        .args(["-r", "1000000000"])
        .args(command)
        .output()
        .context("running redis-benchmark (apt-get install redis-tools)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "redis-benchmark failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let row = text
        .lines()
        .rfind(|line| !line.starts_with("\"test\""))
        .with_context(|| format!("redis-benchmark printed no row:\n{text}"))?;
    let fields: Vec<f64> = row
        .split(',')
        .skip(1)
        .filter_map(|field| field.trim_matches('"').parse().ok())
        .collect();
    let ms = |index: usize| {
        fields
            .get(index)
            .map(|ms| Duration::from_secs_f64(ms / 1e3))
    };
    Ok(Figures {
        requests_per_second: fields.first().copied().context("redis-benchmark rps")?,
        p50: ms(3),
        p99: ms(5),
        ..Figures::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 2s test @ http://127.0.0.1:3000/bench
  2 threads and 16 connections
  Latency Distribution
     50%  190.00us
     75%  250.00us
     90%  310.00us
     99%    1.21ms
  99000 requests in 2.00s, 20.00MB read
  Non-2xx or 3xx responses: 7
Requests/sec:  49500.12
Transfer/sec:     10.00MB";
        let figures = parse_wrk(text).expect("parsed");
        assert!((figures.requests_per_second - 49500.12).abs() < 1e-6);
        assert_eq!(figures.p50, Some(Duration::from_micros(190)));
        assert_eq!(figures.p99, Some(Duration::from_micros(1210)));
        assert_eq!(figures.errors, 7);
        assert_eq!(figures.requests, 99000);
    }

    #[test]
    fn wrk_output_without_throughput_is_an_error() {
        assert!(parse_wrk("unable to connect").is_err());
    }
}
