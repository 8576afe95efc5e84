//! The stores under test and their outages: a TCP proxy in front of the shared Postgres (cut
//! and restored), a private Redis on a spare port (SIGKILLed and restarted on its
//! append-only file).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ana_pg::sqlx::PgPool;
use ana_redis::redis;
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A store the servers share.
#[derive(Debug)]
pub(crate) enum Store {
    /// Each server's own memory store (one server).
    Memory,
    /// The shared Postgres behind a proxy this run cuts.
    Postgres { proxy: Proxy, pool: PgPool },
    /// A private Redis this run restarts.
    Redis(PrivateRedis),
}

impl Store {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Postgres { .. } => "postgres",
            Self::Redis(_) => "redis",
        }
    }

    /// The environment that points a server at the store.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Memory => Vec::new(),
            Self::Postgres { proxy, .. } => vec![(
                "DATABASE_URL",
                format!("postgres://postgres@{}/test", proxy.address),
            )],
            Self::Redis(redis) => vec![("REDIS_URL", redis.url())],
        }
    }

    /// Whether the store outlives its servers (memory does not).
    pub(crate) fn is_shared(&self) -> bool {
        !matches!(self, Self::Memory)
    }

    /// Takes the store away for `down`, then back.
    pub(crate) async fn outage(&mut self, down: Duration) -> Result<(), String> {
        match self {
            Self::Memory => Ok(()),
            Self::Postgres { proxy, .. } => {
                proxy.cut();
                tokio::time::sleep(down).await;
                proxy.restore();
                Ok(())
            }
            Self::Redis(redis) => redis.restart(down).await,
        }
    }

    /// Committed order rows for `key` (Postgres only).
    pub(crate) async fn orders(&self, key: &str) -> Result<Option<i64>, String> {
        let Self::Postgres { pool, .. } = self else {
            return Ok(None);
        };
        ana_pg::sqlx::query_scalar(
            "SELECT count(*) FROM example_02_orders WHERE idempotency_key = $1",
        )
        .bind(key)
        .fetch_one(pool)
        .await
        .map(Some)
        .map_err(|error| format!("counting orders: {error}"))
    }

    /// Stops what the store started.
    pub(crate) async fn stop(self) {
        match self {
            Self::Memory => {}
            Self::Postgres { proxy, pool } => {
                pool.close().await;
                proxy.accept.abort();
            }
            Self::Redis(mut redis) => redis.stop().await,
        }
    }
}

/// A TCP proxy on a loopback port to `upstream`; [`cut`](Self::cut) closes every connection
/// and refuses new ones until [`restore`](Self::restore).
#[derive(Debug)]
pub(crate) struct Proxy {
    address: String,
    up: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

type Links = Arc<Mutex<Vec<JoinHandle<()>>>>;

impl Proxy {
    pub(crate) async fn start(upstream: String) -> Result<Self, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|error| error.to_string())?;
        let address = listener
            .local_addr()
            .map_err(|error| error.to_string())?
            .to_string();
        let up = watch::Sender::new(true);
        let links = Links::default();
        let accept = tokio::spawn(accept(listener, upstream, up.subscribe(), links));
        Ok(Self {
            address,
            up,
            accept,
        })
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

async fn accept(listener: TcpListener, upstream: String, up: watch::Receiver<bool>, links: Links) {
    let cutter = {
        let (mut up, links) = (up.clone(), Arc::clone(&links));
        tokio::spawn(async move {
            while up.changed().await.is_ok() {
                if !*up.borrow_and_update() {
                    let mut links = links.lock().unwrap_or_else(PoisonError::into_inner);
                    links.drain(..).for_each(|link| link.abort());
                }
            }
        })
    };
    while let Ok((mut client, _)) = listener.accept().await {
        if !*up.borrow() {
            // Closed at once: the server is down.
            continue;
        }
        let upstream = upstream.clone();
        let link = tokio::spawn(async move {
            if let Ok(mut server) = TcpStream::connect(&upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
        let mut links = links.lock().unwrap_or_else(PoisonError::into_inner);
        links.retain(|link| !link.is_finished());
        links.push(link);
    }
    cutter.abort();
}

/// A `redis-server` of this run on a spare loopback port, its data in an append-only file
/// written at every command, so a SIGKILL loses nothing committed.
#[derive(Debug)]
pub(crate) struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    pub(crate) async fn start() -> Result<Self, String> {
        let port = spare_port().await?;
        let dir =
            std::env::temp_dir().join(format!("ana-chaos-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        let mut redis = Self {
            port,
            dir,
            child: None,
        };
        redis.spawn().await?;
        Ok(redis)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| format!("redis-server: {error} (is it installed?)"))?;
        self.child = Some(child);
        for _ in 0..100 {
            if self.ping().await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "redis-server on port {} did not answer within 5s",
            self.port
        ))
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
            return false;
        };
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .is_ok()
    }

    /// SIGKILL, `down` without a server, then the same server again on its data.
    async fn restart(&mut self, down: Duration) -> Result<(), String> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        tokio::time::sleep(down).await;
        self.spawn().await
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on now.
async fn spare_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|error| error.to_string())?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|error| error.to_string())
}
