//! The shared transaction on the real Postgres: a handler takes `Attempt<PgSession>` and
//! writes its row in the transaction that records the response, so the row commits once with
//! the Finished record, and rolls back when the handler fails (5xx) or panics.
//!
//! Postgres comes from `DATABASE_URL` (read at run time), else the local default
//! `postgres://postgres@127.0.0.1:5432/test` if it answers, else a container if Docker runs;
//! otherwise the tests fail saying what to set. Each test has its own schema.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, test, web};
use ana_actix::{Attempt, IdempotencyMiddleware};
use ana_core::{IdempotencyRepository, Status};
use ana_http::scoped_key;
use ana_pg::sqlx::postgres::{PgPool, PgPoolOptions};
use ana_pg::sqlx::{self, AssertSqlSafe, Connection, PgConnection};
use ana_pg::{PgRepository, PgSession};

const LOCAL_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

async fn database_url() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL")
        && !url.is_empty()
    {
        return url;
    }
    let local =
        tokio::time::timeout(Duration::from_secs(3), PgConnection::connect(LOCAL_URL)).await;
    let local_error = match local {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            return LOCAL_URL.to_owned();
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => "no answer within 3s".to_owned(),
    };
    match start_container().await {
        Ok(url) => url,
        Err(container_error) => panic!(
            "no PostgreSQL for the ana-actix tests: DATABASE_URL is unset, the local server \
             {LOCAL_URL} is unreachable ({local_error}), and no container could be started \
             ({container_error}). Set DATABASE_URL=postgres://user@host:port/db, start the \
             local server (`make services`), or start Docker."
        ),
    }
}

async fn start_container() -> Result<String, String> {
    use testcontainers::core::{IntoContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt, ReuseDirective};

    let container = GenericImage::new("postgres", "16-alpine")
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_env_var("POSTGRES_DB", "test")
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .map_err(|error| error.to_string())?;
    let port = container
        .get_host_port_ipv4(5432.tcp())
        .await
        .map_err(|error| error.to_string())?;
    drop(container);
    Ok(format!("postgres://postgres@127.0.0.1:{port}/test"))
}

static SCHEMAS: AtomicU32 = AtomicU32::new(0);

/// A fresh schema with the store's tables and an `orders` table.
struct Db {
    pool: PgPool,
    schema: String,
    repository: PgRepository,
}

impl Db {
    async fn new() -> Self {
        let url = database_url().await;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to {url}: {error}"));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "ana_actix_{}_{}_{}",
            std::process::id(),
            SCHEMAS.fetch_add(1, Ordering::Relaxed),
            nanos % 1_000_000
        );
        let repository = PgRepository::with_schema(pool.clone(), &schema).unwrap();
        repository.migrate().await.unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {schema}.orders (id bigserial PRIMARY KEY, idempotency_key text NOT NULL, item text NOT NULL, attempt bigint NOT NULL)"
        )))
        .execute(&pool)
        .await
        .unwrap();
        Self {
            pool,
            schema,
            repository,
        }
    }

    async fn orders(&self, key: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {}.orders WHERE idempotency_key = $1",
            self.schema
        )))
        .bind(key)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn record(&self, key: &str) -> ana_core::TrackedOperation {
        self.repository
            .get("[POST]/orders", &scoped_key(None, key))
            .await
            .unwrap()
            .expect("a record")
    }

    async fn drop_schema(self) {
        sqlx::query(AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(&self.pool)
        .await
        .unwrap();
    }
}

/// Writes the order in the session's transaction; a body containing `fail` then answers 500,
/// `panic` panics.
async fn create_order(
    attempt: Attempt<PgSession>,
    item: String,
    schema: web::Data<String>,
) -> HttpResponse {
    let mut tx = attempt.session().transaction().await.unwrap();
    let id: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "INSERT INTO {}.orders (idempotency_key, item, attempt) VALUES ($1, $2, $3) RETURNING id",
        schema.as_str()
    )))
    .bind(attempt.key())
    .bind(&item)
    .bind(i64::try_from(attempt.session().attempt()).unwrap())
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    drop(tx);
    if item.contains("panic") {
        panic!("the payment provider exploded after order {id}");
    }
    if item.contains("fail") {
        return HttpResponse::InternalServerError().body(format!("order {id} failed"));
    }
    HttpResponse::Created().body(format!("order {id} for {}", attempt.key()))
}

/// Sends `POST /orders` with `$key` and `$body` through `$app` (actix's test utilities) and
/// returns the status, whether it was a replay, and the body. An error is rendered as actix's
/// dispatcher would.
macro_rules! post {
    ($app:expr, $key:expr, $body:expr) => {{
        let request = test::TestRequest::post()
            .uri("/orders")
            .insert_header(("x-idempotency-key", $key))
            .set_payload($body)
            .to_request();
        match test::try_call_service(&$app, request).await {
            Ok(response) => {
                let status = response.status();
                let replayed = response.headers().contains_key("idempotent-replayed");
                let body = test::read_body(response).await;
                (
                    status,
                    replayed,
                    String::from_utf8_lossy(&body).into_owned(),
                )
            }
            Err(error) => {
                let response = error.error_response();
                let status = response.status();
                let body = actix_web::body::to_bytes(response.into_body())
                    .await
                    .unwrap();
                (status, false, String::from_utf8_lossy(&body).into_owned())
            }
        }
    }};
}

/// The app: `/orders` behind the middleware over the test's schema.
macro_rules! app {
    ($db:expr) => {
        test::init_service(
            App::new()
                .app_data(web::Data::new($db.schema.clone()))
                .wrap(IdempotencyMiddleware::new($db.repository.clone()))
                .route("/orders", web::post().to(create_order)),
        )
        .await
    };
}

#[actix_web::test]
async fn the_order_row_commits_once_with_the_record() {
    let db = Db::new().await;
    let app = app!(db);
    let (status, replayed, first) = post!(app, "o-1", "book");
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert!(!replayed);
    assert!(first.ends_with("for o-1"));
    for _ in 0..3 {
        let (status, replayed, again) = post!(app, "o-1", "book");
        assert_eq!(status, StatusCode::CREATED);
        assert!(replayed);
        assert_eq!(again, first);
    }
    assert_eq!(db.orders("o-1").await, 1, "the row committed once");
    let record = db.record("o-1").await;
    assert_eq!(record.status, Status::Finished);
    assert_eq!(record.attempt, 1);
    db.drop_schema().await;
}

#[actix_web::test]
async fn a_failing_handler_rolls_its_row_back() {
    let db = Db::new().await;
    let app = app!(db);
    for attempt in 1..=2 {
        let (status, replayed, body) = post!(app, "o-2", "fail me");
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!replayed, "a 5xx is not recorded, a retry runs again");
        assert!(body.starts_with("order "), "the handler's own 500: {body}");
        assert_eq!(db.orders("o-2").await, 0, "the row rolled back");
        let record = db.record("o-2").await;
        assert_eq!(record.status, Status::Failed);
        assert_eq!(record.error_count, attempt);
    }
    db.drop_schema().await;
}

#[actix_web::test]
async fn a_panicking_handler_rolls_its_row_back() {
    let db = Db::new().await;
    let app = app!(db);
    let (status, _, body) = post!(app, "o-3", "panic");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body.contains("https://ana.dev/problems/handler-panicked"),
        "{body}"
    );
    assert!(!body.contains("exploded"));
    assert_eq!(db.orders("o-3").await, 0, "the row rolled back");
    let record = db.record("o-3").await;
    assert_eq!(record.status, Status::Failed);
    assert!(record.error.unwrap().contains("exploded"));
    db.drop_schema().await;
}
