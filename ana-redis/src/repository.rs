//! [`RedisRepository`]: the store, its pools and its scripts.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ana_core::chrono::{DateTime, Utc};
use ana_core::{
    Claim, ClaimRequest, Completion, Failure, FailureKind, IdempotencyRepository, Lease, RecordId,
    Renewal, RepositoryError, Status, TrackedOperation, Watch,
};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{ErrorKind, FromRedisValue, RedisError, RedisFuture, ServerErrorKind, Value};

use crate::layout::{self, Header};
use crate::record::{self, corrupt, duration_micros, micros};
use crate::script::{Call, Lua};
use crate::wake::{self, Subscriber};

/// A script: prelude.lua, helpers.lua, then the script's own file.
macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Lua::new(concat!(
                include_str!("lua/prelude.lua"),
                include_str!("lua/helpers.lua"),
                include_str!($file)
            ))
        })
    };
}

static CLAIM: LazyLock<Lua> = script!("lua/claim.lua");
/// Complete and fail. A complete returns before helpers.lua's functions are made, and so
/// pays nothing for them.
static FINISH: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(concat!(
        include_str!("lua/prelude.lua"),
        include_str!("lua/finish.lua"),
        include_str!("lua/helpers.lua"),
        include_str!("lua/fail.lua")
    ))
});
static RENEW: LazyLock<Lua> = script!("lua/renew.lua");
static RESTORE: LazyLock<Lua> = script!("lua/restore.lua");
pub(crate) static FORGET: LazyLock<Lua> = script!("lua/forget.lua");
pub(crate) static TIME_OUT: LazyLock<Lua> = script!("lua/time_out.lua");

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "ana:";
/// The default retention of a record after its expiration: one hour.
pub const DEFAULT_RETENTION_AFTER_EXPIRATION: Duration = Duration::from_secs(3600);
/// The default retention of a record without an expiration: seven days from its last write.
pub const DEFAULT_RETENTION_WITHOUT_EXPIRATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The context of an attempt on a [`RedisRepository`]: the attempt number.
///
/// **Redis cannot share a transaction with the operation.** Unlike the Postgres store, nothing
/// the operation writes (to Redis or anywhere else) is committed or rolled back together with
/// the record: if the operation succeeds but finishing the record fails (Redis unreachable, or
/// the attempt was [superseded](ana_core::Completion::Superseded) after its timeout), those
/// writes stay. What the store does promise:
///
/// - the operation only runs after a successful claim, and at most one attempt at a time
///   holds a record until its `timeout` passes;
/// - a record is only finished or failed by the attempt that holds it (a compare-and-set on
///   the [`Lease`]: the attempt number and the claim number), so a late attempt never
///   overwrites a newer one's result.
///
/// Pass [`attempt`](Self::attempt) to downstream systems that can reject stale writers (a
/// fencing token: a write tagged with a lower attempt than one already seen is refused), and
/// make the operation's side effects idempotent themselves where they can be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSession {
    attempt: u64,
}

impl RedisSession {
    /// The fencing token of this attempt: 1 for the first attempt on a record, one more for
    /// each attempt after it.
    pub fn attempt(&self) -> u64 {
        self.attempt
    }
}

/// The pool, and the connection taken from it that every call shares.
#[derive(Clone)]
enum Pool {
    Single(deadpool_redis::Pool),
    #[cfg(feature = "cluster")]
    Cluster(deadpool_redis::cluster::Pool),
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, status) = match self {
            Self::Single(pool) => ("single", pool.status()),
            #[cfg(feature = "cluster")]
            Self::Cluster(pool) => ("cluster", pool.status()),
        };
        f.debug_struct("Pool")
            .field("kind", &kind)
            .field("status", &status)
            .finish()
    }
}

impl Pool {
    /// A connection of its own, taken from the pool for good.
    async fn take(&self) -> Result<Connection, RepositoryError> {
        match self {
            Self::Single(pool) => pool
                .get()
                .await
                .map(|connection| Connection::Single(deadpool_redis::Connection::take(connection)))
                .map_err(unavailable),
            #[cfg(feature = "cluster")]
            Self::Cluster(pool) => pool
                .get()
                .await
                .map(|connection| {
                    Connection::Cluster(deadpool_redis::cluster::Connection::take(connection))
                })
                .map_err(unavailable),
        }
    }
}

/// A multiplexed connection to a server or a cluster; clones share it.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(MultiplexedConnection),
    #[cfg(feature = "cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            #[cfg(feature = "cluster")]
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "cluster")]
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            #[cfg(feature = "cluster")]
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

/// One server holding records: the server of a single-node store, or a cluster's master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// The one server of a single-node store.
    Single,
    /// A cluster master, by the address the cluster gives for it.
    #[cfg(feature = "cluster")]
    Master { host: String, port: u16 },
}

impl Connection {
    /// The servers holding records: the one server, or every master of the cluster (from
    /// `CLUSTER SLOTS`, as the driver itself learns them).
    pub(crate) async fn nodes(&mut self) -> Result<Vec<Node>, RedisError> {
        match self {
            Self::Single(_) => Ok(vec![Node::Single]),
            #[cfg(feature = "cluster")]
            Self::Cluster(connection) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let slots = connection
                    .route_command(
                        redis::cmd("CLUSTER").arg("SLOTS").clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                masters(slots)
            }
        }
    }

    /// Runs `command` on `node`.
    pub(crate) async fn on_node<T: FromRedisValue>(
        &mut self,
        node: &Node,
        command: redis::Cmd,
    ) -> Result<T, RedisError> {
        match (self, node) {
            (Self::Single(connection), _) => command.query_async(connection).await,
            #[cfg(feature = "cluster")]
            (Self::Cluster(connection), Node::Master { host, port }) => {
                use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let value = connection.route_command(command, routing).await?;
                T::from_redis_value(value).map_err(RedisError::from)
            }
            #[cfg(feature = "cluster")]
            (Self::Cluster(_), Node::Single) => Err(RedisError::from((
                ErrorKind::Client,
                "a cluster has no single node",
            ))),
        }
    }

    /// Runs `pipeline` on `node`: every key it names lives there.
    pub(crate) async fn pipeline_on_node(
        &mut self,
        node: &Node,
        pipeline: redis::Pipeline,
    ) -> Result<Vec<Value>, RedisError> {
        match (self, node) {
            (Self::Single(connection), _) => pipeline.query_async(connection).await,
            #[cfg(feature = "cluster")]
            (Self::Cluster(connection), Node::Master { host, port }) => {
                use redis::cluster_routing::SingleNodeRoutingInfo;
                let count = pipeline.len();
                let route = SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                };
                connection.route_pipeline(pipeline, 0, count, route).await
            }
            #[cfg(feature = "cluster")]
            (Self::Cluster(_), Node::Single) => Err(RedisError::from((
                ErrorKind::Client,
                "a cluster has no single node",
            ))),
        }
    }
}

/// The masters named by a `CLUSTER SLOTS` reply (each slot range's first node), once each.
#[cfg(feature = "cluster")]
fn masters(slots: Value) -> Result<Vec<Node>, RedisError> {
    let malformed = || {
        RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "malformed CLUSTER SLOTS reply",
        ))
    };
    let Value::Array(ranges) = slots else {
        return Err(malformed());
    };
    let mut nodes = Vec::new();
    for range in ranges {
        let Value::Array(range) = range else {
            return Err(malformed());
        };
        let Some(Value::Array(master)) = range.into_iter().nth(2) else {
            return Err(malformed());
        };
        let mut master = master.into_iter();
        let host = match master.next() {
            Some(Value::BulkString(host)) => String::from_utf8(host).map_err(|_| malformed())?,
            Some(Value::SimpleString(host)) => host,
            _ => return Err(malformed()),
        };
        let port = match master.next() {
            Some(Value::Int(port)) => u16::try_from(port).map_err(|_| malformed())?,
            _ => return Err(malformed()),
        };
        let node = Node::Master { host, port };
        if !nodes.contains(&node) {
            nodes.push(node);
        }
    }
    Ok(nodes)
}

/// One multiplexed connection, taken from the pool for good and shared by every call of a
/// repository and its clones. The driver writes the commands of concurrent calls on it
/// together and matches the answers in order, so a call costs exactly one round trip (a
/// checkout from the pool costs a `PING` round trip more, every time) and many calls share
/// each system call. After a connection error it is dropped, and the next call takes a fresh
/// one from the pool.
struct Shared {
    slot: Mutex<Option<Connection>>,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            slot: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared connection, taking one from `pool` when there is none.
    async fn get(&self, pool: &Pool) -> Result<Connection, RepositoryError> {
        if let Some(connection) = self.lock().as_ref() {
            return Ok(connection.clone());
        }
        // Boxed: taking a connection (and making one) is a future of about 7 KB, and only
        // the first call and the one after a broken connection need it; inline, every claim
        // and finish would carry it.
        let connection = Box::pin(pool.take()).await?;
        // A concurrent call may have installed one meanwhile: keep that one.
        Ok(self.lock().get_or_insert(connection).clone())
    }

    /// Runs `command` on the shared connection; drops the connection when it broke.
    async fn run<T, Fut>(
        &self,
        pool: &Pool,
        command: impl FnOnce(Connection) -> Fut,
    ) -> Result<T, RepositoryError>
    where
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let connection = self.get(pool).await?;
        command(connection).await.map_err(|error| {
            if error.is_io_error()
                || error.is_connection_dropped()
                || error.is_unrecoverable_error()
            {
                *self.lock() = None;
            }
            redis_error(error)
        })
    }
}

/// An [`IdempotencyRepository`] on Redis (or Redis Cluster) through a deadpool-redis pool.
///
/// See the [crate documentation](crate) for the data layout, the scripts and the retention
/// rules. Clones share the pool.
#[derive(Clone)]
pub struct RedisRepository {
    pool: Pool,
    shared: Arc<Shared>,
    wake: Arc<Subscriber>,
    prefix: Arc<str>,
    after_expiration: Duration,
    without_expiration: Duration,
}

impl fmt::Debug for RedisRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRepository")
            .field("pool", &self.pool)
            .field("prefix", &self.prefix)
            .field("wake", &self.wake)
            .field("retention_after_expiration", &self.after_expiration)
            .field("retention_without_expiration", &self.without_expiration)
            .finish()
    }
}

impl RedisRepository {
    fn with_pool(pool: Pool) -> Self {
        Self {
            pool,
            shared: Shared::new(),
            wake: Arc::new(Subscriber::new(DEFAULT_PREFIX, None)),
            prefix: DEFAULT_PREFIX.into(),
            after_expiration: DEFAULT_RETENTION_AFTER_EXPIRATION,
            without_expiration: DEFAULT_RETENTION_WITHOUT_EXPIRATION,
        }
    }

    /// A store on a single Redis server (or a primary behind a proxy) through `pool`.
    ///
    /// Its finishes publish wake-ups, but its own waiting calls poll unless it is given a
    /// client to subscribe with ([`with_subscriber`](Self::with_subscriber)): a pool does not
    /// hand out its client. [`from_url`](Self::from_url) does both.
    pub fn new(pool: deadpool_redis::Pool) -> Self {
        Self::with_pool(Pool::Single(pool))
    }

    /// A store on a Redis Cluster through `pool`. Every script touches one key, so records
    /// spread over all the cluster's slots. Its waiting calls poll: a cluster store neither
    /// publishes nor subscribes (see [Wake-ups](crate#wake-ups)).
    #[cfg(feature = "cluster")]
    pub fn cluster(pool: deadpool_redis::cluster::Pool) -> Self {
        Self::with_pool(Pool::Cluster(pool))
    }

    /// A store on the Redis server at `url` (`redis://[user:password@]host:port[/db]`,
    /// `rediss://` with a TLS feature of the driver), with deadpool-redis's default pool
    /// settings, whose waiting calls are woken through a subscriber on the same server (see
    /// [Wake-ups](crate#wake-ups); [`with_subscriber`](Self::with_subscriber) gives it other
    /// credentials). No connection is made until the first call, and no subscription until
    /// the first waiting call.
    ///
    /// # Errors
    ///
    /// When the URL cannot be parsed.
    pub fn from_url(url: impl Into<String>) -> Result<Self, deadpool_redis::CreatePoolError> {
        let url = url.into();
        let pool = deadpool_redis::Config::from_url(url.clone())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
        let store = Self::new(pool);
        // The pool parsed the same URL: this only fails where the pool did.
        Ok(match redis::Client::open(url) {
            Ok(client) => store.with_subscriber(client),
            Err(_) => store,
        })
    }

    /// Sets the client the store subscribes to wake-ups with, on its own connection: for a
    /// Redis user (ACL) that may `SUBSCRIBE` to the channel `<prefix>wake`, or another
    /// address of the same server. The connection speaks RESP3 whatever the client says, so
    /// the server must be Redis 6 or later; on an older server, or while the client cannot
    /// connect or subscribe, waiting calls poll. No effect on a cluster store.
    ///
    /// ```no_run
    /// use ana_redis::{redis, RedisRepository};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisRepository::from_url("redis://app:secret@127.0.0.1:6379")?
    ///     .with_subscriber(redis::Client::open("redis://waiter:secret@127.0.0.1:6379")?);
    /// # let _ = store;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn with_subscriber(mut self, client: redis::Client) -> Self {
        if let Pool::Single(_) = self.pool
            && let Ok(client) = wake::resp3(&client)
        {
            self.wake = Arc::new(Subscriber::new(&self.prefix, Some(client)));
        }
        self
    }

    /// A store on the Redis Cluster reached through any of `urls` (the other nodes are
    /// discovered), with deadpool-redis's default pool settings. No connection is made until
    /// the first call.
    ///
    /// # Errors
    ///
    /// When a URL cannot be parsed.
    #[cfg(feature = "cluster")]
    pub fn from_cluster_urls<I, S>(
        urls: I,
    ) -> Result<Self, deadpool_redis::cluster::CreatePoolError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let urls: Vec<String> = urls.into_iter().map(Into::into).collect();
        let pool = deadpool_redis::cluster::Config::from_urls(urls)
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))?;
        Ok(Self::cluster(pool))
    }

    /// Sets the prefix of every key this store writes (default [`DEFAULT_PREFIX`], `ana:`).
    /// Stores with different prefixes never see each other's records. A prefix holding a
    /// `{…}` hash tag would put every record in one cluster slot: leave braces out of it
    /// unless that is what you want.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into();
        self.wake = Arc::new(self.wake.with_prefix(&self.prefix));
        self
    }

    /// Sets how long a record is kept after its expiration (default one hour), so that a
    /// Finished record still replays for late retries of calls that began before it expired.
    /// Zero deletes a record as soon as it expires.
    #[must_use]
    pub fn with_retention_after_expiration(mut self, retention: Duration) -> Self {
        self.after_expiration = retention;
        self
    }

    /// Sets how long a record without an expiration is kept after its last write (default
    /// seven days), so that Redis never grows without bound. A Running record is also kept
    /// until its timeout, or for this long when it has none.
    #[must_use]
    pub fn with_retention_without_expiration(mut self, retention: Duration) -> Self {
        self.without_expiration = retention;
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of the record `(target, key)`: the prefix, the target's length in bytes,
    /// `:`, the target, `:`, the key. The length makes the layout unambiguous whatever the
    /// target holds. Useful to inspect a record (`GET`, `PTTL`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // No connection is made until the store is used.
    /// let store = ana_redis::RedisRepository::from_url("redis://127.0.0.1:6379")?;
    /// assert_eq!(store.record_key("[POST]/pay", "k1"), "ana:10:[POST]/pay:k1");
    /// # Ok(()) }
    /// ```
    pub fn record_key(&self, target: &str, key: &str) -> String {
        // Made on every call: pieces pushed into one allocation, not `format!`.
        let mut length = itoa::Buffer::new();
        let length = length.format(target.len());
        let pieces = [&*self.prefix, length, ":", target, ":", key];
        let mut name = String::with_capacity(pieces.iter().map(|piece| piece.len()).sum());
        for piece in pieces {
            name.push_str(piece);
        }
        name
    }

    /// Stores `record` as it is, replacing any record with its identity, with the TTL the
    /// store would give it: for tests that need a record in a given state, and for loading
    /// records kept elsewhere.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or fails.
    pub async fn restore(&self, record: &TrackedOperation) -> Result<(), RepositoryError> {
        let mut invocation = self.invocation(&RESTORE, &record.target, &record.key);
        invocation
            .arg(
                record
                    .expiration
                    .map(|at| micros(at).to_string())
                    .unwrap_or_default(),
            )
            .arg(if record.status == Status::Running {
                "1"
            } else {
                "0"
            })
            .arg(
                record
                    .timeout
                    .map(|at| micros(at).to_string())
                    .unwrap_or_default(),
            )
            .arg(layout::encode(record));
        let _: Value = self.invoke(&invocation).await?;
        Ok(())
    }

    /// A call of `script` on the record's key with the retention arguments every script
    /// starts with.
    pub(crate) fn invocation(&self, script: &'static Lua, target: &str, key: &str) -> Call {
        self.invocation_on(script, self.record_key(target, key))
    }

    /// A call of `script` on the Redis key `name`, with the retention arguments.
    pub(crate) fn invocation_on(&self, script: &'static Lua, name: String) -> Call {
        let mut invocation = script.call(name);
        invocation
            .arg(duration_micros(self.after_expiration))
            .arg(duration_micros(self.without_expiration));
        invocation
    }

    /// Runs `invocation` (`EVALSHA`, or `EVAL` when the server does not know the script).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        invocation: &Call,
    ) -> Result<T, RepositoryError> {
        self.shared
            .run(&self.pool, |mut connection| async move {
                invocation.query(&mut connection).await
            })
            .await
    }

    /// Runs `invocation`, a step that may end the record held by waiting calls (finish, time
    /// out, forget), with `PUBLISH <prefix>wake <digest of name>` pipelined behind it.
    ///
    /// Published from here rather than from the scripts: the pipeline costs no round trip
    /// more, the scripts keep touching their one key and nothing else, and a store that
    /// cannot publish (a cluster, an ACL without the channel) runs the same scripts. The
    /// price is that the message goes out whatever the script answered (a finish that lost
    /// its lease publishes too), which is harmless: a waiting call woken for nothing reads
    /// its record and waits on. A `PUBLISH` the server refuses is dropped: waiting calls then
    /// poll. A cluster store does not publish: a `PUBLISH` there travels to every node (see
    /// [Wake-ups](crate#wake-ups)).
    pub(crate) async fn invoke_and_wake<T: FromRedisValue>(
        &self,
        invocation: Call,
        name: &str,
    ) -> Result<T, RepositoryError> {
        if !matches!(self.pool, Pool::Single(_)) {
            return self.invoke(&invocation).await;
        }
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.wake.channel()).arg(wake::message(name));
        self.shared
            .run(&self.pool, |mut connection| async move {
                invocation.query_then(&mut connection, publish).await
            })
            .await
    }

    /// Runs `command` on the shared connection (see [`Shared::run`]).
    pub(crate) async fn run<T, Fut>(
        &self,
        command: impl FnOnce(Connection) -> Fut,
    ) -> Result<T, RepositoryError>
    where
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.shared.run(&self.pool, command).await
    }

    async fn query<T: FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, RepositoryError> {
        self.shared
            .run(&self.pool, |mut connection| async move {
                command.query_async(&mut connection).await
            })
            .await
    }

    /// Runs `command`, a command on a string; `None` when the server answers `WRONGTYPE`:
    /// the key holds another type of value, such as a record of the hash layout.
    async fn query_string(&self, command: &redis::Cmd) -> Result<Option<Value>, RepositoryError> {
        self.shared
            .run(&self.pool, |mut connection| async move {
                match command.query_async(&mut connection).await {
                    Err(error) if error.code() == Some("WRONGTYPE") => Ok(None),
                    answer => answer.map(Some),
                }
            })
            .await
    }

    /// The finish script: `step` is `complete` (`data` the result, `detail` `1`, or `0` when
    /// there is none) or `fail` (`data` the message, `detail` the failure kind).
    async fn finish(
        &self,
        id: RecordId<'_>,
        lease: Lease,
        step: &str,
        data: &[u8],
        detail: &str,
    ) -> Result<FinishAnswer, RepositoryError> {
        let name = self.record_key(id.target, id.key);
        let mut invocation = self.invocation_on(&FINISH, name.clone());
        invocation
            .arg(step)
            .arg(layout::lease_field(lease.attempt, lease.claim))
            .arg(data)
            .arg(detail)
            .arg(FailureKind::Expired.message())
            .arg(FailureKind::Expired.as_str());
        match self.invoke_and_wake::<i64>(invocation, &name).await? {
            0 => Ok(FinishAnswer::Done),
            1 => Ok(FinishAnswer::Superseded),
            2 => Ok(FinishAnswer::Expired),
            3 => Ok(FinishAnswer::Gone),
            4 => Err(corrupt(&name, "a stored time is not an integer")),
            other => Err(corrupt(
                &name,
                &format!("the finish script answered {other}"),
            )),
        }
    }
}

impl RedisRepository {
    /// The claim script, on the server's clock: takes over a record for which
    /// [`TrackedOperation::is_claimable_at`] holds, or creates it when it is gone, or answers
    /// with the record as it stands.
    async fn claim_by_script(
        &self,
        request: &ClaimRequest<'_>,
        name: &str,
    ) -> Result<Claim<RedisSession>, RepositoryError> {
        let mut invocation = self.invocation_on(&CLAIM, name.to_owned());
        invocation
            .arg(layout::hex(&request.fingerprint))
            .arg(micros(request.reference_time))
            .arg(
                request
                    .timeout
                    .map(|timeout| duration_micros(timeout).to_string())
                    .unwrap_or_default(),
            )
            .arg(
                request
                    .expiration
                    .map(|at| micros(at).to_string())
                    .unwrap_or_default(),
            );
        let reply: Vec<Value> = self.invoke(&invocation).await?;
        let mut reply = reply.into_iter();
        match (reply.next(), reply.next(), reply.next(), reply.next()) {
            (
                Some(Value::Int(1)),
                Some(Value::Int(attempt)),
                Some(Value::Int(claim)),
                Some(Value::BulkString(previous)),
            ) => {
                let attempt =
                    u64::try_from(attempt).map_err(|_| corrupt(name, "negative attempt"))?;
                // The server's time in microseconds: positive on any clock Redis runs on.
                let claim =
                    u64::try_from(claim).map_err(|_| corrupt(name, "negative claim number"))?;
                let previous = std::str::from_utf8(&previous)
                    .ok()
                    .and_then(|status| status.parse().ok());
                Ok(Claim::Acquired {
                    lease: Lease { attempt, claim },
                    session: RedisSession { attempt },
                    previous,
                })
            }
            (Some(Value::Int(0)), Some(Value::BulkString(now)), Some(record), None) => {
                let now = std::str::from_utf8(&now)
                    .ok()
                    .and_then(|now| now.parse::<i64>().ok())
                    .and_then(DateTime::<Utc>::from_timestamp_micros)
                    .ok_or_else(|| corrupt(name, "the server time is malformed"))?;
                let record = match record {
                    Value::BulkString(value) => {
                        layout::decode(request.target, request.key, name, value)?
                    }
                    hash => record::decode(request.target, request.key, name, hash)?
                        .ok_or_else(|| corrupt(name, "the claim returned an empty record"))?,
                };
                Ok(Claim::Existing { record, now })
            }
            _ => Err(corrupt(name, "unexpected reply from the claim script")),
        }
    }

    /// The TTL of a new Running record, as the scripts' `retain_at` computes it: its
    /// expiration plus the retention after it (or the retention from `now` without one), and
    /// at least its timeout (or a full retention when it has none). Milliseconds since the
    /// Unix epoch, for `PXAT`.
    fn retain_at(&self, now: i64, expiration: Option<i64>, timeout: Option<i64>) -> i64 {
        let without = now.saturating_add(duration_micros(self.without_expiration));
        let at = expiration.map_or(without, |at| {
            at.saturating_add(duration_micros(self.after_expiration))
        });
        at.max(timeout.unwrap_or(without)).div_euclid(1000).max(1)
    }
}

/// This machine's time in microseconds since the Unix epoch, as stored.
fn now_micros() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros());
    i64::try_from(since).map_or(record::MAX_MICROS, |us| us.min(record::MAX_MICROS))
}

/// The claim number of a new record: 64 random bits. A new record's claim is made without a
/// script, so no server time numbers it; random bits keep two claims of one key (a record
/// that vanished and was created again) from sharing a number, whichever machines made them.
fn claim_number() -> u64 {
    static CLAIMS: AtomicU64 = AtomicU64::new(0);
    // Each `RandomState` has its own keys, seeded from the operating system's randomness.
    RandomState::new().hash_one(CLAIMS.fetch_add(1, Ordering::Relaxed))
}

enum FinishAnswer {
    Done,
    Superseded,
    Expired,
    /// The record's retention ran out while the attempt ran.
    Gone,
}

fn unavailable<E: std::error::Error + Send + Sync + 'static>(error: E) -> RepositoryError {
    RepositoryError::Unavailable(Box::new(error))
}

/// A driver error: unreachable or not serving (I/O, timeouts, cluster reconfiguration, a
/// loading or read-only replica) is [`RepositoryError::Unavailable`]; an error answered by a
/// working server (a script error, a wrong type) is [`RepositoryError::Backend`].
fn redis_error(error: RedisError) -> RepositoryError {
    let unreachable = error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_cluster_error()
        || error.is_unrecoverable_error()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
    if unreachable {
        RepositoryError::Unavailable(Box::new(error))
    } else {
        RepositoryError::Backend(Box::new(error))
    }
}

impl IdempotencyRepository for RedisRepository {
    type Session = RedisSession;

    fn name(&self) -> &'static str {
        "redis"
    }

    /// A new key is claimed by one `SET … NX GET` (no script), which also answers with the
    /// record when there is one; only a record that may be taken over (and a record of the
    /// hash layout) goes through the claim script, which decides on the server's clock.
    async fn claim(
        &self,
        request: &ClaimRequest<'_>,
    ) -> Result<Claim<RedisSession>, RepositoryError> {
        let name = self.record_key(request.target, request.key);
        let now = now_micros();
        let claim = claim_number();
        let timeout = request
            .timeout
            .map(|timeout| now + duration_micros(timeout));
        let expiration = request.expiration.map(micros);
        let header = Header {
            status: Status::Running,
            has_data: false,
            fingerprint: request.fingerprint,
            attempt: 1,
            claim,
            reference_time: micros(request.reference_time),
            started_at: Some(now),
            timeout,
            expiration,
            finished_at: None,
            error_count: 0,
        };
        let mut value = Vec::with_capacity(layout::HEADER);
        header.write("", &mut value);
        let mut set = redis::cmd("SET");
        set.arg(&name)
            .arg(value)
            .arg("NX")
            .arg("GET")
            .arg("PXAT")
            .arg(self.retain_at(now, expiration, timeout));
        match self.query_string(&set).await? {
            Some(Value::Nil) => Ok(Claim::Acquired {
                lease: Lease { attempt: 1, claim },
                session: RedisSession { attempt: 1 },
                previous: None,
            }),
            Some(Value::BulkString(value)) => {
                let record = layout::decode(request.target, request.key, &name, value)?;
                let now = DateTime::from_timestamp_micros(now)
                    .ok_or_else(|| corrupt(&name, "the clock is out of range"))?;
                if record.is_claimable_at(request.fingerprint, now) {
                    self.claim_by_script(request, &name).await
                } else {
                    Ok(Claim::Existing { record, now })
                }
            }
            Some(other) => Err(corrupt(&name, &format!("unexpected SET reply {other:?}"))),
            // Not a string: a record of the hash layout of earlier versions.
            None => self.claim_by_script(request, &name).await,
        }
    }

    async fn complete(
        &self,
        _session: RedisSession,
        id: RecordId<'_>,
        lease: Lease,
        result: Option<&[u8]>,
    ) -> Result<Completion, RepositoryError> {
        let (data, has_result) = match result {
            Some(result) => (result, "1"),
            None => (&[][..], "0"),
        };
        Ok(
            match self.finish(id, lease, "complete", data, has_result).await? {
                FinishAnswer::Done => Completion::Done,
                FinishAnswer::Superseded => Completion::Superseded,
                // Gone: the record outlived its retention (its expiration plus the retention
                // after it, or its timeout) while the attempt ran. Nothing was written.
                FinishAnswer::Expired | FinishAnswer::Gone => Completion::Expired,
            },
        )
    }

    async fn fail(
        &self,
        _session: RedisSession,
        id: RecordId<'_>,
        lease: Lease,
        failure: Failure<'_>,
    ) -> Result<Completion, RepositoryError> {
        let (message, kind) = (failure.message.as_bytes(), failure.kind.as_str());
        Ok(match self.finish(id, lease, "fail", message, kind).await? {
            FinishAnswer::Done | FinishAnswer::Expired => Completion::Done,
            // A record gone under its attempt has nothing left to mark Failed.
            FinishAnswer::Superseded | FinishAnswer::Gone => Completion::Superseded,
        })
    }

    /// One script on the server's clock: a compare-and-set on the lease that also keeps the
    /// record's TTL past its new timeout.
    async fn renew(
        &self,
        id: RecordId<'_>,
        lease: Lease,
        lease_for: Duration,
    ) -> Result<Renewal, RepositoryError> {
        let mut invocation = self.invocation(&RENEW, id.target, id.key);
        invocation
            .arg(layout::lease_field(lease.attempt, lease.claim))
            .arg(duration_micros(lease_for));
        match self.invoke::<i64>(&invocation).await? {
            -1 => Ok(Renewal::Lost),
            until => DateTime::from_timestamp_micros(until)
                .filter(|_| until >= 0)
                .map(|until| Renewal::Renewed { until })
                .ok_or_else(|| {
                    let name = self.record_key(id.target, id.key);
                    corrupt(&name, "a stored time is not an integer")
                }),
        }
    }

    /// A watch woken by the messages of the repository's subscriber (see
    /// [Wake-ups](crate#wake-ups)); [`Watch::polling`] on a cluster or without a subscriber.
    fn watch(&self, id: RecordId<'_>) -> Watch {
        self.wake.watch(&self.record_key(id.target, id.key))
    }

    async fn get(
        &self,
        target: &str,
        key: &str,
    ) -> Result<Option<TrackedOperation>, RepositoryError> {
        let name = self.record_key(target, key);
        match self.query_string(redis::cmd("GET").arg(&name)).await? {
            Some(Value::Nil) => Ok(None),
            Some(Value::BulkString(value)) => layout::decode(target, key, &name, value).map(Some),
            Some(other) => Err(corrupt(&name, &format!("unexpected GET reply {other:?}"))),
            // Not a string: a record of the hash layout of earlier versions.
            None => {
                let hash: Value = self.query(redis::cmd("HGETALL").arg(&name)).await?;
                record::decode(target, key, &name, hash)
            }
        }
    }
}
