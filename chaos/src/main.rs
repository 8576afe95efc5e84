//! `make chaos`: a bounded fault run against example 02, on loopback only.
//!
//! For each store (memory, Postgres, Redis; `ana-chaos memory redis` picks some) it starts
//! example-02 servers on one store (one for the memory store, which dies with its process;
//! three otherwise), drives the scenarios of [`scenario`] — a storm on one key, a store
//! outage under load, a SIGKILLed holder taken over after its timeout, a client that hangs up
//! mid-request, timeouts below the server's minimum — and checks the invariants of [`check`]
//! on every key: at most one committed effect, every 2xx backed by its effect, every other
//! answer a problem with the right status, a retry after an outage running at most once more.
//!
//! Postgres is the shared server seen through a TCP proxy this run cuts (the shared server is
//! never restarted); Redis is a private `redis-server` on a spare port, SIGKILLed and started
//! again on its append-only file. It prints the invariants table and exits non-zero on any
//! violation. Every step is bounded: the whole run ends on its own within minutes.

mod check;
mod scenario;
mod server;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use check::Checks;
use scenario::Run;
use store::{PrivateRedis, Proxy, Store};

/// The longest one store's scenarios may take.
const STORE_LIMIT: Duration = Duration::from_secs(180);

#[tokio::main]
async fn main() -> ExitCode {
    let stores: Vec<String> = std::env::args().skip(1).collect();
    let stores = if stores.is_empty() {
        vec![
            "memory".to_owned(),
            "postgres".to_owned(),
            "redis".to_owned(),
        ]
    } else {
        stores
    };
    let binary = match example_binary() {
        Ok(binary) => binary,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let mut checks = Checks::default();
    for name in &stores {
        let store = match open(name).await {
            Ok(store) => store,
            Err(error) => {
                eprintln!("error: {name}: {error}");
                return ExitCode::from(2);
            }
        };
        println!("== {name}");
        let run = Run::new(&binary, store, &mut checks);
        if tokio::time::timeout(STORE_LIMIT, run.all()).await.is_err() {
            checks.fail(
                name_of(name),
                check::SETTLED,
                "the scenarios did not end in time",
            );
        }
    }
    let violations = checks.print(&stores.iter().map(|s| name_of(s)).collect::<Vec<_>>());
    if violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn name_of(name: &str) -> &'static str {
    match name {
        "postgres" => "postgres",
        "redis" => "redis",
        _ => "memory",
    }
}

/// The example-02 binary next to this one (`cargo build -p example-02-axum` puts it there).
fn example_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|error| error.to_string())?;
    let binary = me.with_file_name("example-02-axum");
    if binary.exists() {
        Ok(binary)
    } else {
        Err(format!(
            "{} is missing: run `cargo build -p example-02-axum` first (`make chaos` does)",
            binary.display()
        ))
    }
}

async fn open(name: &str) -> Result<Store, String> {
    match name {
        "memory" => Ok(Store::Memory),
        "postgres" => {
            let url = std::env::var("DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
            let upstream = authority(&url).ok_or_else(|| format!("DATABASE_URL={url}: no host"))?;
            let pool = ana_pg::sqlx::PgPool::connect(&url)
                .await
                .map_err(|error| format!("{url}: {error}"))?;
            let proxy = Proxy::start(upstream).await?;
            Ok(Store::Postgres { proxy, pool })
        }
        "redis" => Ok(Store::Redis(PrivateRedis::start().await?)),
        other => Err(format!("unknown store {other} (memory, postgres, redis)")),
    }
}

/// `host:port` of a `postgres://user@host:port/db` URL (port 5432 when absent).
fn authority(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split(['/', '?']).next()?;
    if host.is_empty() {
        return None;
    }
    Some(if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    })
}
