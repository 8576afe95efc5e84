//! The command line: [`Config`], parsed by clap.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The payments service: a versioned payments resource whose writes are idempotent through ana.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "example-04-payments",
    version,
    about,
    args_override_self = true
)]
pub struct Config {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8080", env = "PAYMENTS_LISTEN")]
    pub listen: SocketAddr,

    /// The database the payments and the idempotency records live in.
    #[arg(long, value_enum, default_value_t = RepoKind::Sqlite, env = "PAYMENTS_REPO")]
    pub repo: RepoKind,

    /// The database's URL (default: `sqlite://payments.db` for SQLite, the file under the
    /// working directory; `sqlite::memory:` keeps nothing). Required for postgres and mysql.
    #[arg(long, env = "PAYMENTS_REPO_URI")]
    pub repo_uri: Option<String>,

    /// Rate limit per client address: `<count>-<period>`, the period `S`, `M`, `H` or `D`
    /// (`5-S`: five a second). Over it: 429 with `Retry-After`.
    #[arg(long, env = "PAYMENTS_LIMIT")]
    pub limit: Option<RateLimit>,

    /// Serve `GET` and `DELETE /admin/repo` (count and empty the payments).
    #[arg(long, env = "PAYMENTS_ADMIN", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    pub admin: bool,

    /// Serve Prometheus metrics at `GET /metrics`.
    #[arg(long, env = "PAYMENTS_METRICS", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = true)]
    pub metrics: bool,

    /// Request timeout (humantime: `30s`, `500ms`): a request still running then gets 503.
    #[arg(long, default_value = "30s", value_parser = humantime_duration, env = "PAYMENTS_TIMEOUT")]
    pub timeout: Duration,

    /// The largest page `GET /{version}/payments` serves (`size`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000), env = "PAYMENTS_MAX_RESULTS")]
    pub max_results: u32,

    /// The API's path prefix: `/{api-version}/payments`.
    #[arg(long, default_value = "v1", value_parser = api_version, env = "PAYMENTS_API_VERSION")]
    pub api_version: String,

    /// Allow cross-origin requests from these origins (comma-separated; `*` for any).
    #[arg(long, value_delimiter = ',', env = "PAYMENTS_CORS")]
    pub cors: Option<Vec<String>>,

    /// Compress responses (gzip) for clients that accept it.
    #[arg(long, env = "PAYMENTS_COMPRESS", num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
    pub compress: bool,

    /// How long in-flight requests may take to finish after SIGTERM or SIGINT.
    #[arg(long, default_value = "10s", value_parser = humantime_duration, env = "PAYMENTS_SHUTDOWN_GRACE")]
    pub shutdown_grace: Duration,
}

/// The kinds of database the service runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RepoKind {
    /// SQLite, embedded (the default).
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

impl Config {
    /// The database URL: `--repo-uri`, or the SQLite file under the working directory.
    ///
    /// # Errors
    ///
    /// A server database without `--repo-uri`.
    pub fn repo_uri(&self) -> Result<String, String> {
        match (&self.repo_uri, self.repo) {
            (Some(uri), _) => Ok(uri.clone()),
            (None, RepoKind::Sqlite) => Ok("sqlite://payments.db".to_owned()),
            (None, kind) => Err(format!("--repo {kind:?} needs --repo-uri").to_lowercase()),
        }
    }
}

/// A rate limit: `count` requests per `period`, in bursts of up to `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per period.
    pub count: NonZeroU32,
    /// The period.
    pub period: Duration,
}

impl RateLimit {
    /// The time one request's allowance takes to come back.
    pub fn replenish_every(&self) -> Duration {
        self.period / self.count.get()
    }
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not <count>-<S|M|H|D> (e.g. 5-S)");
        let (count, period) = text.split_once('-').ok_or_else(bad)?;
        let count = count.parse::<NonZeroU32>().map_err(|_| bad())?;
        let seconds = match period {
            "S" | "s" => 1,
            "M" | "m" => 60,
            "H" | "h" => 3600,
            "D" | "d" => 86_400,
            _ => return Err(bad()),
        };
        Ok(Self {
            count,
            period: Duration::from_secs(seconds),
        })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} per {:?}", self.count, self.period)
    }
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if duration.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(duration)
}

fn api_version(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "{text:?} is not a path segment (letters, digits, . - _)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_like_the_original() {
        let limit: RateLimit = "5-S".parse().unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(limit.count.get(), 5);
        assert_eq!(limit.replenish_every(), Duration::from_millis(200));
        let limit: RateLimit = "120-M".parse().unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(limit.replenish_every(), Duration::from_millis(500));
        for bad in ["", "5", "0-S", "5-W", "x-S", "-5-S"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_flags_parse() {
        let config = Config::try_parse_from([
            "x",
            "--repo",
            "postgres",
            "--repo-uri",
            "postgres://h/db",
            "--limit",
            "2-M",
            "--metrics=false",
            "--cors",
            "https://a.example,https://b.example",
            "--timeout",
            "2s",
        ])
        .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.repo, RepoKind::Postgres);
        assert!(!config.metrics);
        assert!(!config.admin);
        let flags = Config::try_parse_from(["x", "--admin", "--compress", "--metrics"])
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(flags.admin && flags.compress && flags.metrics);
        assert_eq!(config.cors.map(|c| c.len()), Some(2));
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert!(
            Config::try_parse_from(["x", "--repo", "mysql"]).is_ok_and(|c| c.repo_uri().is_err())
        );
        assert!(Config::try_parse_from(["x", "--api-version", "v/1"]).is_err());
    }
}
