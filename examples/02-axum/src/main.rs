//! # Example 02: an idempotent axum server
//!
//! Run it with `make example-02` (or `cargo run -p example-02-axum`). It listens on
//! 127.0.0.1:3000 (`PORT` overrides; `PORT=0` picks a free port) with the idempotency layer on
//! every path and method, like the Go original's `app.Get("/*", …)`: any path answers
//! `Hello <key>!`. The store is the memory store, or the database `DATABASE_URL` names:
//! `postgres://…`, `sqlite://ana.db` (a file, created if missing; records survive a restart),
//! `sqlite::memory:` or `mysql://…` (MySQL or MariaDB); Redis when `REDIS_URL` is set
//! (`DATABASE_URL` wins when both are). `SLOW_MS=5000` makes the handlers take five seconds,
//! so you can see the 409 for yourself. The `/orders` route, whose SQL commits with the
//! record, is served on Postgres only (its SQL is Postgres's); every other path works on
//! every store.
//!
//! ```text
//! # the Go original's call: the handler runs and prints "Not persisted!"; again: replayed
//! curl -i -H "X-Idempotency-Key: some-key-as-string" \
//!   -H "X-Idempotency-Reference-Time: $(date -u +%Y-%m-%dT%H:%M:%SZ)" \
//!   -H "X-Idempotency-Timeout: 10s" -H "X-Idempotency-Expiration: 24h" \
//!   http://localhost:3000/whatever-you-may-like
//! # first call: the handler runs and prints "Not persisted!"
//! curl -i -X POST localhost:3000/hello -H 'X-Idempotency-Key: abc' -d '{"amount":10}'
//! # the same call again: replayed, the handler does not run
//! curl -i -X POST localhost:3000/hello -H 'X-Idempotency-Key: abc' -d '{"amount":10}'
//! # the key reused with another body: 422
//! curl -i -X POST localhost:3000/hello -H 'X-Idempotency-Key: abc' -d '{"amount":99}'
//! # a bad header: 400
//! curl -i -X POST localhost:3000/hello -H 'X-Idempotency-Key: def' -H 'X-Idempotency-Timeout: soon'
//! # in flight (start the server with SLOW_MS=5000): the second call gets 409
//! curl -s -X POST localhost:3000/hello -H 'X-Idempotency-Key: slow' & sleep 1; \
//!   curl -i -X POST localhost:3000/hello -H 'X-Idempotency-Key: slow'
//! # ...or waits for the first call's answer with `Prefer: wait=5` (up to 10 s allowed)
//! curl -s -X POST localhost:3000/hello -H 'X-Idempotency-Key: slow2' & sleep 1; \
//!   curl -i -X POST localhost:3000/hello -H 'X-Idempotency-Key: slow2' -H 'Prefer: wait=5'
//! # what the calls above did, for Prometheus (outside the layer: no key needed)
//! curl localhost:3000/metrics
//! # with DATABASE_URL=postgres://…: the order row commits with the record, exactly once
//! curl -i -X POST localhost:3000/orders -H 'X-Idempotency-Key: order-1' -d 'book'
//! # ...and is rolled back when the handler fails (a body containing "fail")
//! curl -i -X POST localhost:3000/orders -H 'X-Idempotency-Key: order-2' -d 'fail me'
//! ```

use std::error::Error;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use ana_axum::{Attempt, IdempotencyLayer, MemoryRepository};
use ana_mysql::MySqlRepository;
use ana_pg::{PgRepository, PgSession, sqlx};
use ana_redis::RedisRepository;
use ana_sqlite::SqliteRepository;
use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use ana_core::encryption::{Encrypted, FingerprintKey, Keyring};
use ana_core::{IdempotencyRepository, RepositoryError};
use ana_http::{IdempotencyConfig, Rejection};

type BoxError = Box<dyn Error + Send + Sync>;

/// The secrets at rest the example reads: `ANA_ENCRYPTION_KEYS` (`id:base64,…`, the current
/// key first) encrypts the stored responses, `ANA_FINGERPRINT_KEY` (base64, at least 32
/// bytes) keys the payload fingerprints and scope hashes. Either may be unset.
struct Secrets {
    keyring: Option<Arc<Keyring>>,
    fingerprint_key: Option<FingerprintKey>,
}

impl Secrets {
    /// Reads both variables; a bad value ends the process with a one-line error.
    fn from_env() -> Self {
        let fail = |error: &dyn Error| -> ! {
            eprintln!("error: {error}");
            std::process::exit(2);
        };
        let keyring = Keyring::from_env().unwrap_or_else(|error| fail(&error));
        let fingerprint_key = FingerprintKey::from_env().unwrap_or_else(|error| fail(&error));
        Self {
            keyring: keyring.map(Arc::new),
            fingerprint_key,
        }
    }

    /// `(…, encrypted, keyed fingerprints)` for the start-up line.
    fn describe(&self) -> String {
        let mut out = String::new();
        if let Some(keyring) = &self.keyring {
            out.push_str(&format!(", encrypted under key {}", keyring.current_id()));
        }
        if self.fingerprint_key.is_some() {
            out.push_str(", keyed fingerprints");
        }
        out
    }

    /// The idempotency configuration: the default one, letting a duplicate in flight wait
    /// up to 10 s (`Prefer: wait=N`), with the fingerprint key if set.
    fn config(&self) -> IdempotencyConfig {
        let config = IdempotencyConfig::default().with_wait(Duration::from_secs(10));
        match &self.fingerprint_key {
            Some(key) => config.with_fingerprint_key(key.clone()),
            None => config,
        }
    }
}

/// The layer over `repository`, encrypted and keyed as `secrets` say.
fn idempotency<R: IdempotencyRepository>(
    repository: R,
    secrets: &Secrets,
) -> IdempotencyLayer<R::Session> {
    let layer = match &secrets.keyring {
        Some(keyring) => IdempotencyLayer::new(Encrypted::new(repository, Arc::clone(keyring))),
        None => IdempotencyLayer::new(repository),
    };
    layer.with_config(secrets.config())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let secrets = Secrets::from_env();
    let metrics = observability()?;
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port} is not a port"))?,
        Err(_) => 3000,
    };
    let slow = Duration::from_millis(match std::env::var("SLOW_MS") {
        Ok(ms) => ms
            .parse()
            .map_err(|_| format!("SLOW_MS={ms} is not a number"))?,
        Err(_) => 0,
    });
    let database_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty());
    let redis_url = std::env::var("REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty());

    let (app, store) = if let Some(url) = database_url {
        database_app(&url, slow, &secrets).await?
    } else if let Some(url) = redis_url {
        (
            app(idempotency(RedisRepository::from_url(url)?, &secrets), slow),
            "redis",
        )
    } else {
        (
            app(idempotency(MemoryRepository::new(), &secrets), slow),
            "memory",
        )
    };

    // Outside the idempotency layer: a scrape needs no key.
    let app = app.route(
        "/metrics",
        get(move || std::future::ready(metrics.render())),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let address = listener.local_addr()?;
    // Tests read this line to find the port.
    let secrets = secrets.describe();
    say(&format!(
        "Listening on http://{address} (store: {store}{secrets})"
    ))
    .await;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Logs to stderr (JSON lines with `LOG_FORMAT=json`; `RUST_LOG` filters, default `info`), and
/// the Prometheus recorder whose text `GET /metrics` serves.
fn observability() -> Result<PrometheusHandle, BoxError> {
    let json = match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") | Err(_) => false,
        Ok(other) => return Err(format!("LOG_FORMAT={other} is not json or text").into()),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json().try_init()?;
    } else {
        logs.try_init()?;
    }
    let metrics = PrometheusBuilder::new().install_recorder()?;
    ana_core::describe_metrics();
    Ok(metrics)
}

/// The app on the database `url` names, and the store's name.
async fn database_app(
    url: &str,
    slow: Duration,
    secrets: &Secrets,
) -> Result<(Router, &'static str), BoxError> {
    if url.starts_with("sqlite:") {
        let repository = SqliteRepository::connect(url).await?;
        repository.migrate().await?;
        return Ok((app(idempotency(repository, secrets), slow), "sqlite"));
    }
    if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        let pool = ana_mysql::sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&url.replacen("mariadb:", "mysql:", 1))
            .await?;
        let repository = MySqlRepository::new(pool);
        repository.migrate().await?;
        return Ok((app(idempotency(repository, secrets), slow), "mysql"));
    }
    if !(url.starts_with("postgres:") || url.starts_with("postgresql:")) {
        return Err(format!(
            "DATABASE_URL={url}: expected postgres://…, sqlite://file.db, sqlite::memory: or mysql://…"
        )
        .into());
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await?;
    let repository = PgRepository::new(pool.clone());
    repository.migrate().await?;
    create_orders_table(&pool).await?;
    let layer = idempotency(repository, secrets);
    let app = Router::new()
        .route("/orders", post(move |a, b| create_order(a, b, slow)))
        .fallback(move |attempt: Attempt<PgSession>| hello(attempt, slow))
        .layer(layer);
    Ok((app, "postgres"))
}

/// Every path and method answers `hello`, behind the layer (the fallback is layered too).
fn app<Ctx: Clone + Send + Sync + 'static>(layer: IdempotencyLayer<Ctx>, slow: Duration) -> Router {
    Router::new()
        .fallback(move |attempt: Attempt<Ctx>| hello(attempt, slow))
        .layer(layer)
}

/// The Go original's handler: prints `Not persisted!` each time it really runs.
async fn hello<Ctx>(attempt: Attempt<Ctx>, slow: Duration) -> String {
    ran(attempt.key()).await;
    tokio::time::sleep(slow).await;
    format!("Hello {}!\n", attempt.key())
}

/// Writes an order in the transaction that records the response: the row and the record
/// commit together, or (on failure) neither does. A store that fails meanwhile (its `BEGIN`
/// or the insert) is answered like every other outage: the 503 problem.
async fn create_order(
    attempt: Attempt<PgSession>,
    item: String,
    slow: Duration,
) -> Result<(StatusCode, String), Response> {
    ran(attempt.key()).await;
    let mut tx = attempt.session().transaction().await.map_err(outage)?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO example_02_orders (idempotency_key, item, attempt) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(attempt.key())
    .bind(&item)
    .bind(i64::try_from(attempt.session().attempt()).unwrap_or(i64::MAX))
    .fetch_one(&mut *tx)
    .await
    .map_err(|error| outage(RepositoryError::Unavailable(Box::new(error))))?;
    drop(tx);
    tokio::time::sleep(slow).await;
    if item.contains("fail") {
        // A 5xx is recorded Failed: the order row above is rolled back with it.
        let failed = format!("payment failed after writing order {id}; rolled back\n");
        return Err((StatusCode::INTERNAL_SERVER_ERROR, failed).into_response());
    }
    Ok((
        StatusCode::CREATED,
        format!("Order {id} created for {}\n", attempt.key()),
    ))
}

/// The store failed under the handler: the 503 problem the layer answers for an outage (a
/// store error that is not one, a 500 problem), never the error's text.
fn outage(error: RepositoryError) -> Response {
    let rejection = if error.is_transient() {
        Rejection::StoreUnavailable {
            retry_after: Duration::from_secs(1),
            source: Arc::new(error),
        }
    } else {
        Rejection::Internal {
            source: Arc::new(Box::new(error)),
        }
    };
    rejection.to_response().map(Body::from)
}

async fn create_orders_table(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    // Several servers may start at once: one creates the table at a time.
    sqlx::query("SELECT pg_advisory_xact_lock(20202)")
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS example_02_orders (
            id bigserial PRIMARY KEY,
            idempotency_key text NOT NULL,
            item text NOT NULL,
            attempt bigint NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The Go original's `Not persisted!`, printed each time a handler really runs, and the same
/// as a log line naming the key (what a fault run counts runs per key by).
async fn ran(key: &str) {
    tracing::info!(key, "handler ran");
    say("Not persisted!").await;
}

/// Prints a line and flushes it at once (stdout may be a pipe).
async fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}
