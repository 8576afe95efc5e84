//! The Redis harness shared by the test files: a store under a fresh random key prefix on a
//! single server (`REDIS_URL`) or a cluster (`REDIS_CLUSTER_URLS`).

#![allow(
    clippy::panic,
    clippy::expect_used,
    clippy::unwrap_used,
    dead_code,
    unreachable_pub
)]

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ana_core::conformance::Harness;
use ana_core::{ManualClock, TrackedOperation};
use ana_redis::RedisRepository;
use ana_redis::redis::{self, AsyncCommands, aio::MultiplexedConnection};
use tokio::sync::OnceCell;

pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

static URL: OnceCell<String> = OnceCell::const_new();

/// The single server the tests use: `REDIS_URL` (read at run time), else the local server if
/// it answers, else a container started with testcontainers if Docker runs; else the test
/// fails saying what to set.
pub async fn redis_url() -> String {
    URL.get_or_init(resolve_url).await.clone()
}

async fn resolve_url() -> String {
    if let Ok(url) = std::env::var("REDIS_URL")
        && !url.is_empty()
    {
        return url;
    }
    let local = tokio::time::timeout(Duration::from_secs(3), ping(DEFAULT_REDIS_URL)).await;
    let local_error = match local {
        Ok(Ok(())) => return DEFAULT_REDIS_URL.to_owned(),
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no answer within 3s".to_owned(),
    };
    match start_container().await {
        Ok(url) => url,
        Err(container_error) => panic!(
            "no Redis for the ana-redis tests: REDIS_URL is unset, the local server \
             {DEFAULT_REDIS_URL} is unreachable ({local_error}), and no container could be \
             started ({container_error}). Set REDIS_URL=redis://host:port, start the local \
             server (`make services`), or start Docker."
        ),
    }
}

async fn ping(url: &str) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async(&mut connection).await
}

/// A Redis container shared by every test process (testcontainers' reuse: it stays up after
/// the tests; remove it with `docker rm -f` when done).
async fn start_container() -> Result<String, String> {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt, ReuseDirective};

    let container = GenericImage::new("redis", "7-alpine")
        .with_exposed_port(6379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .map_err(|error| error.to_string())?;
    let port = container
        .get_host_port_ipv4(6379.tcp())
        .await
        .map_err(|error| error.to_string())?;
    // A reused container is not removed on drop.
    drop(container);
    Ok(format!("redis://127.0.0.1:{port}"))
}

/// The cluster's node URLs from `REDIS_CLUSTER_URLS` (comma-separated). Fails when unset, so
/// that the cluster tests never pass without a cluster.
pub fn cluster_urls() -> Vec<String> {
    let urls = std::env::var("REDIS_CLUSTER_URLS").unwrap_or_default();
    let urls: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(
        !urls.is_empty(),
        "REDIS_CLUSTER_URLS is not set: these tests need a Redis Cluster. Run \
         `make test-redis-cluster` (ana-redis/scripts/redis-cluster.sh starts a 3-master \
         cluster on 127.0.0.1:7301-7303, runs them and stops it), or set REDIS_CLUSTER_URLS \
         to the comma-separated redis:// URLs of every master."
    );
    urls
}

/// A fresh key prefix, unique per test.
pub fn random_prefix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    let seed = (
        nanos,
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
    );
    format!("ana-test:{:016x}:", RandomState::new().hash_one(seed))
}

/// A plain connection to one server (one cluster node for the cluster harness), failing with
/// a message saying what to set when it does not answer.
pub async fn connect(url: &str) -> MultiplexedConnection {
    let client = redis::Client::open(url).unwrap_or_else(|error| panic!("bad URL {url}: {error}"));
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|error| {
            panic!(
                "Redis at {url} does not answer ({error}). Start it (`make services`) or set \
                 REDIS_URL to a running Redis 7 server."
            )
        });
    let _: () = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("Redis at {url} does not answer PING: {error}"));
    connection
}

/// Shifts every stored time of one record back by ARGV[1] microseconds: the five time fields
/// of the string layout (at the offsets of the crate\'s `layout.rs`, 17 characters each, `_`
/// when absent), or the time fields of a record of the hash layout.
const SHIFT: &str = r"
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'string' then
  local v = redis.call('GET', KEYS[1])
  for _, at in ipairs({76, 93, 110, 127, 144}) do
    local field = string.sub(v, at, at + 16)
    if field ~= '_________________' then
      local shifted = string.format('%017.0f', tonumber(field) - tonumber(ARGV[1]))
      v = string.sub(v, 1, at - 1) .. shifted .. string.sub(v, at + 17)
    end
  end
  redis.call('SET', KEYS[1], v, 'KEEPTTL')
elseif kind == 'hash' then
  for _, field in ipairs({'ref', 'start', 'timeout', 'exp', 'fin'}) do
    local v = redis.call('HGET', KEYS[1], field)
    if v then
      redis.call('HSET', KEYS[1], field, string.format('%.0f', tonumber(v) - tonumber(ARGV[1])))
    end
  end
end
return 1
";

/// A store under its own key prefix, on a manual clock for the manager; the store's own
/// deadlines are moved by rewriting the stored times.
#[derive(Clone, Debug)]
pub struct RedisHarness {
    repository: RedisRepository,
    clock: ManualClock,
    /// Every node that may hold this prefix's keys (one for a single server).
    nodes: Vec<String>,
    prefix: String,
}

impl RedisHarness {
    /// Records are kept a day past their expiration (the suite shifts times by up to two
    /// hours and expects expired records to stay), and an hour without one, so what the
    /// tests leave behind vanishes on its own.
    fn configure(repository: RedisRepository, prefix: &str) -> RedisRepository {
        repository
            .with_prefix(prefix)
            .with_retention_after_expiration(Duration::from_secs(24 * 3600))
            .with_retention_without_expiration(Duration::from_secs(3600))
    }

    /// On the single server of `REDIS_URL`.
    pub async fn single() -> Self {
        let url = redis_url().await;
        drop(connect(&url).await);
        let prefix = random_prefix();
        let repository = RedisRepository::from_url(url.clone()).expect("REDIS_URL is a URL");
        Self {
            repository: Self::configure(repository, &prefix),
            clock: ManualClock::default(),
            nodes: vec![url],
            prefix,
        }
    }

    /// On the cluster of `REDIS_CLUSTER_URLS` (every master).
    pub async fn cluster() -> Self {
        let urls = cluster_urls();
        for url in &urls {
            drop(connect(url).await);
        }
        let prefix = random_prefix();
        let repository =
            RedisRepository::from_cluster_urls(urls.clone()).expect("REDIS_CLUSTER_URLS are URLs");
        Self {
            repository: Self::configure(repository, &prefix),
            clock: ManualClock::default(),
            nodes: urls,
            prefix,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// This prefix's keys on one node.
    pub async fn keys_on(&self, node: &str) -> Vec<String> {
        let mut connection = connect(node).await;
        let pattern = format!("{}*", self.prefix);
        let mut keys = Vec::new();
        let mut cursor = 0_u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .expect("SCAN");
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }
}

impl Harness for RedisHarness {
    type Repository = RedisRepository;

    fn repository(&self) -> RedisRepository {
        self.repository.clone()
    }

    fn clock(&self) -> ManualClock {
        self.clock.clone()
    }

    async fn advance_store(&self, by: Duration) {
        let by = i64::try_from(by.as_micros()).expect("a test duration");
        let shift = redis::Script::new(SHIFT);
        for node in &self.nodes {
            let keys = self.keys_on(node).await;
            let mut connection = connect(node).await;
            for key in keys {
                let _: i64 = shift
                    .key(&key)
                    .arg(by)
                    .invoke_async(&mut connection)
                    .await
                    .expect("shifting a record's times");
            }
        }
    }

    async fn seed(&self, record: TrackedOperation) {
        self.repository
            .restore(&record)
            .await
            .expect("seeding a record");
    }
}

/// The remaining life of `key` in milliseconds and its absolute expiry (`PEXPIRETIME`).
pub async fn expiry(connection: &mut MultiplexedConnection, key: &str) -> (i64, i64) {
    let pttl: i64 = connection.pttl(key).await.expect("PTTL");
    let at: i64 = redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(connection)
        .await
        .expect("PEXPIRETIME");
    (pttl, at)
}
