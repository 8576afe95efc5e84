//! Shared test support: a fresh Postgres schema, a fresh JetStream stream, a NATS server of
//! the test's own.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ana_core::{Fingerprint, Manager};
use ana_nats::async_nats::jetstream::{self, consumer::PullConsumer, consumer::pull, stream};
use ana_nats::async_nats::{self, HeaderMap};
use ana_pg::sqlx::postgres::PgPoolOptions;
use ana_pg::sqlx::{self, AssertSqlSafe, Connection, PgConnection, PgPool};
use ana_pg::{PgRepository, PgSession};

/// Bounds every wait of a test: what should happen within it, or the test fails.
pub const LIMIT: Duration = Duration::from_secs(60);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test (in this or another process) uses: `<prefix>_<pid>_<n>_<nanos>`.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000
    )
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn nats_url() -> String {
    std::env::var("NATS_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned())
}

/// Awaits `future` within [`LIMIT`], or fails the test naming `what`.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {LIMIT:?}"))
}

/// A fresh, migrated schema with an `effects` table (dropped with this value).
pub struct Db {
    pub url: String,
    pub schema: String,
    pub pool: PgPool,
    pub repository: PgRepository,
}

impl Db {
    pub async fn new() -> Self {
        Self::with_schema(unique("ana_nats")).await
    }

    /// The schema `schema`, created if missing (a child process joins its parent's).
    pub async fn with_schema(schema: String) -> Self {
        let url = database_url();
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .unwrap_or_else(|error| panic!("no PostgreSQL at {url} (set DATABASE_URL): {error}"));
        let repository = PgRepository::with_schema(pool.clone(), &schema).unwrap();
        repository.migrate().await.unwrap();
        let db = Self {
            url,
            schema,
            pool,
            repository,
        };
        db.exec("CREATE TABLE IF NOT EXISTS {s}.effects (key text NOT NULL, note text NOT NULL)")
            .await;
        db
    }

    pub fn sql(&self, sql: &str) -> String {
        sql.replace("{s}", &format!("\"{}\"", self.schema))
    }

    pub async fn exec(&self, sql: &str) -> u64 {
        sqlx::query(AssertSqlSafe(self.sql(sql)))
            .execute(&self.pool)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
            .rows_affected()
    }

    /// The effects' keys, sorted.
    pub async fn effects(&self) -> Vec<String> {
        sqlx::query_scalar(AssertSqlSafe(
            self.sql("SELECT key FROM {s}.effects ORDER BY key, note"),
        ))
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }

    pub fn manager(&self) -> Manager<Fingerprint, String, PgSession> {
        Manager::new(self.repository.clone())
    }
}

/// Writes an effect for `key` in the session's transaction.
pub async fn write_effect(
    schema: &str,
    session: &PgSession,
    key: &str,
    note: &str,
) -> Result<(), ana_core::BoxError> {
    let mut tx = session.transaction().await?;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO \"{schema}\".effects (key, note) VALUES ($1, $2)"
    )))
    .bind(key)
    .bind(note)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl Drop for Db {
    fn drop(&mut self) {
        let url = self.url.clone();
        let schema = self.schema.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let Ok(mut conn) = PgConnection::connect(&url).await else {
                    return;
                };
                let _ = sqlx::raw_sql(AssertSqlSafe(format!(
                    "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                )))
                .execute(&mut conn)
                .await;
                let _ = conn.close().await;
            });
        })
        .join();
    }
}

/// A stream of the test's own: name `ANA_…`, subjects `<prefix>.>`.
pub struct Stream {
    pub js: jetstream::Context,
    pub name: String,
    pub prefix: String,
}

impl Stream {
    pub async fn new(url: &str) -> Self {
        Self::with(url, |config| config).await
    }

    /// A stream whose config `edit` may change.
    pub async fn with(url: &str, edit: impl FnOnce(stream::Config) -> stream::Config) -> Self {
        let name = unique("ANA").to_uppercase();
        let prefix = name.to_lowercase().replace('_', "-");
        let client = connect(url).await;
        let js = jetstream::new(client);
        let config = edit(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            max_age: Duration::from_secs(3600),
            ..Default::default()
        });
        js.create_stream(config).await.unwrap();
        Self { js, name, prefix }
    }

    pub fn subject(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// A durable pull consumer of `filter` (a subject name under the prefix; all if empty).
    pub async fn consumer(&self, durable: &str, filter: &str, ack_wait: Duration) -> PullConsumer {
        let stream = self.js.get_stream(&self.name).await.unwrap();
        let filter_subject = if filter.is_empty() {
            String::new()
        } else {
            self.subject(filter)
        };
        stream
            .get_or_create_consumer(
                durable,
                pull::Config {
                    durable_name: Some(durable.to_owned()),
                    filter_subject,
                    ack_wait,
                    ..Default::default()
                },
            )
            .await
            .unwrap()
    }

    /// Publishes `body` to `subject` (under the prefix) with headers `(name, value)`, and
    /// waits for JetStream's confirmation: whether it was a duplicate.
    pub async fn publish(&self, subject: &str, headers: &[(&str, &str)], body: &str) -> bool {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        self.js
            .publish_with_headers(self.subject(subject), map, body.to_owned().into())
            .await
            .unwrap()
            .await
            .unwrap()
            .duplicate
    }

    /// The number of messages in the stream on `subject` (under the prefix).
    pub async fn count(&self, subject: &str) -> u64 {
        let stream = self.js.get_stream(&self.name).await.unwrap();
        let info = stream
            .info_with_subjects(self.subject(subject))
            .await
            .unwrap();
        let mut total = 0;
        let mut info = info;
        while let Some(Ok((_, n))) = futures_util::StreamExt::next(&mut info).await {
            total += n as u64;
        }
        total
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Deleted from a helper thread with its own runtime (no async drop); best effort.
        let (js, name) = (self.js.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), js.delete_stream(&name)).await;
            });
        })
        .join();
    }
}

pub async fn connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap_or_else(|error| panic!("no NATS at {url} (set NATS_URL): {error}"))
}

/// A `nats-server -js` of the test's own on a free loopback port, its store in a temporary
/// directory; stopped (and the directory removed) on drop.
pub struct NatsServer {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<std::process::Child>,
}

pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

impl NatsServer {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(unique("ana-nats-server"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port,
            dir,
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and store), and waits until it listens.
    pub fn restart(&mut self) {
        let child = std::process::Command::new(NATS_SERVER)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {NATS_SERVER}: {error}"));
        self.child = Some(child);
        let deadline = std::time::Instant::now() + LIMIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
