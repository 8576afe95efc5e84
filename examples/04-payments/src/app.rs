//! The service assembled: the database, ana's layer on the writes, and the ecosystem's layers
//! (rate limit, timeout, CORS, compression, tracing, metrics).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ana_axum::IdempotencyLayer;
use ana_core::IdempotencyRepository;
use ana_http::IdempotencyConfig;
use ana_mysql::MySqlRepository;
use ana_pg::PgRepository;
use ana_sqlite::SqliteRepository;
use axum::Extension;
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::middleware::NoOpMiddleware;
use http::HeaderValue;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::PeerIpKeyExtractor;
use tower_http::compression::CompressionLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::config::{Config, RateLimit, RepoKind};
use crate::problem::ApiError;
use crate::routes::{self, AppState, OpenApiJson, WriteLayer};
use crate::store::Store;

/// The OpenAPI document's fixed parts; the paths come from the routes.
#[derive(OpenApi)]
#[openapi(info(
    title = "Payments",
    description = "A versioned payments resource whose writes are idempotent (ana)."
))]
struct ApiDoc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The database, connected and migrated, and ana's layer on it.
pub struct Database {
    /// The payments.
    pub store: Store,
    writes: WriteLayer,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// ana's layer: keys optional (requests without one pass through).
fn idempotency<R: IdempotencyRepository>(repository: R) -> IdempotencyLayer<R::Session> {
    IdempotencyLayer::new(repository)
        .with_config(IdempotencyConfig::default().with_key_required(false))
}

/// Puts ana's layer on `repository` around the write handlers.
fn layered<R: IdempotencyRepository>(repository: R) -> WriteLayer {
    let layer = idempotency(repository);
    Box::new(move |methods| methods.route_layer(layer.clone()))
}

impl Database {
    /// Connects to the database `config` names and creates the tables (ana's and the
    /// payments') if missing.
    ///
    /// # Errors
    ///
    /// A URL that does not fit the kind, or a database that does not answer.
    pub async fn connect(config: &Config) -> Result<Self, BoxError> {
        let uri = config.repo_uri()?;
        let database = match config.repo {
            RepoKind::Sqlite => {
                let repository = SqliteRepository::connect(&uri).await?;
                repository.migrate().await?;
                let store = Store::Sqlite(repository.pool().clone());
                Self {
                    store,
                    writes: layered(repository),
                }
            }
            RepoKind::Postgres => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect(&uri)
                    .await?;
                let repository = PgRepository::new(pool.clone());
                repository.migrate().await?;
                Self {
                    store: Store::Postgres(pool),
                    writes: layered(repository),
                }
            }
            RepoKind::Mysql => {
                let pool = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect(&uri)
                    .await?;
                let repository = MySqlRepository::new(pool.clone());
                repository.migrate().await?;
                Self {
                    store: Store::MySql(pool),
                    writes: layered(repository),
                }
            }
        };
        database.store.migrate().await?;
        Ok(database)
    }
}

/// The whole service.
///
/// # Errors
///
/// A CORS origin that is not a header value.
pub fn app(
    config: &Config,
    database: Database,
    metrics: Option<PrometheusHandle>,
) -> Result<Router, BoxError> {
    let state = AppState {
        store: database.store,
        max_results: config.max_results,
        api_version: Arc::from(config.api_version.as_str()),
    };
    let mut api = routes::payment_reads().merge(routes::payment_writes(&database.writes));
    if let Some(limit) = config.limit {
        api = api.layer(rate_limit(limit)?);
    }
    let mut routes = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest(&format!("/{}", config.api_version), api)
        .merge(routes::health())
        .merge(routes::openapi());
    if config.admin {
        routes = routes.merge(routes::admin());
    }
    if metrics.is_some() {
        routes = routes.merge(routes::metrics());
    }
    let (mut router, openapi) = routes.with_state(state).split_for_parts();
    let mut document = serde_json::to_value(&openapi)?;
    document_page_size(&mut document, &config.api_version, config.max_results);
    router = router.layer(Extension(OpenApiJson(
        serde_json::to_string(&document)?.into(),
    )));
    if let Some(metrics) = metrics {
        router = router.layer(Extension(metrics));
    }
    let router = router
        .fallback(|| std::future::ready(ApiError::NoRoute))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| {
                    std::future::ready(ApiError::Timeout)
                }))
                .timeout(config.timeout),
        );
    let router = match &config.cors {
        Some(origins) => router.layer(cors(origins)?),
        None => router,
    };
    let router = if config.compress {
        router.layer(CompressionLayer::new())
    } else {
        router
    };
    Ok(router
        .layer(axum::middleware::from_fn(http_metrics))
        .layer(TraceLayer::new_for_http()))
}

/// Sets the document's largest `size` of a listing to the server's (`--max-results`).
fn document_page_size(document: &mut serde_json::Value, api_version: &str, max: u32) {
    // The version is a path segment without `/` or `~`: nothing to escape in the pointer.
    let pointer = format!("/paths/~1{api_version}~1payments/get/parameters");
    let parameters = document
        .pointer_mut(&pointer)
        .and_then(serde_json::Value::as_array_mut);
    for parameter in parameters.into_iter().flatten() {
        if parameter["name"] == "size" {
            parameter["schema"]["maximum"] = max.into();
        }
    }
}

/// Per client address: `count` a period, in bursts of up to `count`; over it, a 429 problem
/// with `Retry-After`.
fn rate_limit(
    limit: RateLimit,
) -> Result<
    GovernorLayer<
        PeerIpKeyExtractor,
        NoOpMiddleware<governor::clock::QuantaInstant>,
        axum::body::Body,
    >,
    BoxError,
> {
    let config = GovernorConfigBuilder::default()
        .period(limit.replenish_every())
        .burst_size(limit.count.get())
        .finish()
        .ok_or("the rate limit is out of range")?;
    Ok(GovernorLayer::new(config).error_handler(|error| {
        let wait = match error {
            tower_governor::GovernorError::TooManyRequests { wait_time, .. } => {
                Duration::from_secs(wait_time)
            }
            _ => Duration::from_secs(1),
        };
        ApiError::RateLimited(wait).into_response()
    }))
}

fn cors(origins: &[String]) -> Result<CorsLayer, BoxError> {
    let allow = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let origins = origins
            .iter()
            .map(|origin| HeaderValue::from_str(origin))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| "--cors: an origin is not a header value")?;
        AllowOrigin::list(origins)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods(Any)
        .allow_headers(Any)
        .expose_headers(Any))
}

/// `http_requests_total` and `http_request_duration_seconds`, by method, route and status.
async fn http_metrics(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(start.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tower::ServiceExt;

    /// Every route the service serves, with everything on.
    const ROUTES: &[(&str, &str)] = &[
        ("get", "/v1/payments"),
        ("post", "/v1/payments"),
        ("get", "/v1/payments/{id}"),
        ("put", "/v1/payments/{id}"),
        ("delete", "/v1/payments/{id}"),
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/admin/repo"),
        ("delete", "/admin/repo"),
    ];

    async fn send(app: &Router, method: &str, path: &str) -> Response {
        let request = http::Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(path.replace("{id}", "p1"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from("{}"))
            .unwrap_or_else(|error| panic!("{error}"));
        app.clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|error| match error {})
    }

    /// The document `app` serves at `/openapi.json`.
    async fn served_document(app: &Router) -> serde_json::Value {
        let response = send(app, "get", "/openapi.json").await;
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        serde_json::from_slice(&body).unwrap_or_else(|error| panic!("{error}"))
    }

    /// The document lists exactly the routes served, and each one is routed (not the
    /// fallback's 404, not a 405).
    #[tokio::test]
    async fn the_openapi_document_lists_every_route() {
        let config = Config::parse_from(["x", "--repo-uri", "sqlite::memory:", "--admin"]);
        let database = Database::connect(&config)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle();
        let app = app(&config, database, Some(metrics)).unwrap_or_else(|error| panic!("{error}"));

        let document = served_document(&app).await;
        assert_eq!(document["openapi"], "3.1.0");
        let mut listed: Vec<(String, String)> = document["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(path, item)| {
                item.as_object()
                    .into_iter()
                    .flatten()
                    .map(move |(method, _)| (method.clone(), path.clone()))
            })
            .collect();
        let mut expected: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
            .collect();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected);

        for (method, path) in ROUTES {
            let response = send(&app, method, path).await;
            assert_ne!(
                response.status(),
                http::StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap_or_else(|error| panic!("{error}"));
            let text = String::from_utf8_lossy(&body);
            assert!(!text.contains("no route"), "{method} {path}: {text}");
        }
        let response = send(&app, "get", "/v2/payments").await;
        assert_eq!(response.status(), http::StatusCode::NOT_FOUND);

        // Another method on a write route is the router's 405, even with a key ana refuses.
        let request = http::Request::builder()
            .method("TRACE")
            .uri("/v1/payments/p1")
            .header("idempotency-key", "not a string")
            .body(axum::body::Body::empty())
            .unwrap_or_else(|error| panic!("{error}"));
        let response = app
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|error| match error {});
        assert_eq!(response.status(), http::StatusCode::METHOD_NOT_ALLOWED);
    }

    /// The document's largest page is the server's `--max-results`, under its `--api-version`.
    #[tokio::test]
    async fn the_document_says_the_servers_page_size() {
        let config = Config::parse_from([
            "x",
            "--repo-uri",
            "sqlite::memory:",
            "--max-results",
            "7",
            "--api-version",
            "v2",
        ]);
        let database = Database::connect(&config)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let app = app(&config, database, None).unwrap_or_else(|error| panic!("{error}"));
        let document = served_document(&app).await;
        let parameters = &document["paths"]["/v2/payments"]["get"]["parameters"];
        let size = parameters
            .as_array()
            .into_iter()
            .flatten()
            .find(|parameter| parameter["name"] == "size")
            .unwrap_or_else(|| panic!("no size in {parameters}"));
        assert_eq!(size["schema"]["maximum"], 7);
        let response = send(&app, "get", "/v2/payments?size=8").await;
        assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
    }
}
