//! The HTTP routes and their OpenAPI description (utoipa): payments, health, admin.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, ETAG, IF_MATCH, LOCATION};
use http::{HeaderMap, HeaderValue, StatusCode};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, IntoResponses, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use crate::model::{Invalid, Payment, PaymentInput, Replacement};
use crate::problem::{ApiError, Problem};
use crate::store::{MaybeSession, Replace, Store};

/// How long `GET /health` waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The payments.
    pub store: Store,
    /// The largest page served.
    pub max_results: u32,
    /// The API's prefix, for `Location`.
    pub api_version: Arc<str>,
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// What wraps the write handlers (ana's layer): applied to the handlers of each method, not
/// to the path's router, so that another method on their paths gets the router's 405 before
/// any idempotency header is read.
pub type WriteLayer = Box<dyn Fn(MethodRouter<AppState>) -> MethodRouter<AppState> + Send + Sync>;

/// `POST`, `PUT` and `DELETE` of payments, their handlers wrapped in `layer`.
pub fn payment_writes(layer: &WriteLayer) -> OpenApiRouter<AppState> {
    let wrapped =
        |(schemas, paths, methods): UtoipaMethodRouter<AppState>| (schemas, paths, layer(methods));
    OpenApiRouter::new()
        .routes(wrapped(routes!(create_payment)))
        .routes(wrapped(routes!(replace_payment, delete_payment)))
}

/// The reads of payments.
pub fn payment_reads() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_payments))
        .routes(routes!(get_payment))
}

/// `GET /health`.
pub fn health() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(health_check))
}

/// `GET /openapi.json`: serves the document in the request's `Extension<OpenApiJson>`.
pub fn openapi() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

/// `GET /metrics`: renders the `Extension<PrometheusHandle>` of the request.
pub fn metrics() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(prometheus_metrics))
}

/// `GET` and `DELETE /admin/repo`.
pub fn admin() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(count_payments, clear_payments))
}

/// A payment answer: the payment, its ETag, and (on create) its location.
fn payment_response(status: StatusCode, payment: &Payment, location: Option<String>) -> Response {
    let mut response = (status, Json(payment)).into_response();
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", payment.version)) {
        headers.insert(ETAG, etag);
    }
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        headers.insert(LOCATION, location);
    }
    response
}

/// The body as a `T`: JSON (`application/json` or `application/*+json`).
fn read_json<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T> {
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .is_some_and(|essence| {
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        });
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    serde_json::from_slice(body)
        .map_err(|error| ApiError::Invalid(format!("the body is not a payment: {error}")))
}

/// The answers every payments route may give besides its own: the rate limit's and the
/// server's.
#[derive(IntoResponses)]
#[allow(dead_code)]
enum ServiceErrors {
    /// Over the rate limit (`--limit`).
    #[response(
        status = 429,
        content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds to wait"))
    )]
    RateLimited(Problem),
    /// The database does not answer, or the request took longer than `--timeout`.
    #[response(
        status = 503,
        content_type = "application/problem+json",
        headers(("Retry-After" = u64, description = "Seconds to wait"))
    )]
    Unavailable(Problem),
}

fn path_id(path: std::result::Result<Path<String>, PathRejection>) -> Result<String> {
    path.map(|Path(id)| id)
        .map_err(|rejection| ApiError::Invalid(rejection.body_text()))
}

/// Create a payment (version 0).
#[utoipa::path(
    post, path = "/payments", tag = "payments",
    request_body(content = PaymentInput, content_type = "application/json"),
    params(IdempotencyHeaders),
    responses(
        (status = 201, description = "Created", body = Payment,
            headers(("ETag" = String, description = "The version, quoted"), ("Location" = String))),
        (status = 400, description = "Invalid payment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The id exists, or the same key is in flight", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was used for another request", body = Problem, content_type = "application/problem+json"),
        ServiceErrors,
    )
)]
async fn create_payment(
    State(app): State<AppState>,
    MaybeSession(session): MaybeSession,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let input: PaymentInput = read_json(&headers, &body)?;
    input.validate()?;
    let payment = input.into_payment(0);
    app.store.create(session.as_ref(), &payment).await?;
    let location = format!("/{}/payments/{}", app.api_version, payment.id);
    Ok(payment_response(
        StatusCode::CREATED,
        &payment,
        Some(location),
    ))
}

/// Read a payment.
#[utoipa::path(
    get, path = "/payments/{id}", tag = "payments",
    params(("id" = String, Path, min_length = 1, max_length = 255, pattern = r"^[A-Za-z0-9._~-]*[A-Za-z0-9_~-][A-Za-z0-9._~-]*$", description = "The payment's id")),
    responses(
        (status = 200, description = "The payment", body = Payment,
            headers(("ETag" = String, description = "The version, quoted"))),
        (status = 400, description = "The id is not UTF-8", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment", body = Problem, content_type = "application/problem+json"),
        ServiceErrors,
    )
)]
async fn get_payment(
    State(app): State<AppState>,
    id: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let id = path_id(id)?;
    let payment = app.store.get(&id).await?.ok_or(ApiError::NotFound(id))?;
    Ok(payment_response(StatusCode::OK, &payment, None))
}

/// The version an `If-Match` header names: `"3"` (or `W/"3"`); `*` names any.
fn if_match(headers: &HeaderMap) -> Result<Option<i64>> {
    let Some(value) = headers.get(IF_MATCH) else {
        return Ok(None);
    };
    let bad = || ApiError::Invalid("If-Match must be an ETag of this service (\"3\") or *".into());
    let value = value.to_str().map_err(|_| bad())?.trim();
    if value == "*" {
        return Ok(None);
    }
    let tag = value.strip_prefix("W/").unwrap_or(value);
    let version = tag
        .strip_prefix('"')
        .and_then(|tag| tag.strip_suffix('"'))
        .and_then(|version| version.parse::<i64>().ok())
        .ok_or_else(bad)?;
    Ok(Some(version))
}

/// Replace a payment: `version` is the version read; the answer has the next one.
#[utoipa::path(
    put, path = "/payments/{id}", tag = "payments",
    request_body(content = Replacement, content_type = "application/json"),
    params(
        ("id" = String, Path, min_length = 1, max_length = 255, pattern = r"^[A-Za-z0-9._~-]*[A-Za-z0-9_~-][A-Za-z0-9._~-]*$", description = "The payment's id (the body's `id` must be the same)"),
        IfMatchHeader,
        IdempotencyHeaders,
    ),
    responses(
        (status = 200, description = "Replaced", body = Payment,
            headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 400, description = "Invalid payment", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The version read is not current", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match does not match", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was used for another request", body = Problem, content_type = "application/problem+json"),
        ServiceErrors,
    )
)]
async fn replace_payment(
    State(app): State<AppState>,
    MaybeSession(session): MaybeSession,
    id: std::result::Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let id = path_id(id)?;
    let replacement: Replacement = read_json(&headers, &body)?;
    let read = replacement.version;
    let input = PaymentInput::from(replacement);
    input.validate()?;
    if input.id != id {
        return Err(Invalid::IdMismatch.into());
    }
    let payment = input.into_payment(read.saturating_add(1));
    let replace = Replace {
        payment: &payment,
        read,
        if_match: if_match(&headers)?,
    };
    app.store.replace(session.as_ref(), &replace).await?;
    Ok(payment_response(StatusCode::OK, &payment, None))
}

/// `?version=N` of a deletion.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct VersionQuery {
    /// The version read.
    #[param(value_type = i64, required = true, minimum = 0)]
    version: Option<String>,
}

/// Delete a payment at the version read.
#[utoipa::path(
    delete, path = "/payments/{id}", tag = "payments",
    params(("id" = String, Path, min_length = 1, max_length = 255, pattern = r"^[A-Za-z0-9._~-]*[A-Za-z0-9_~-][A-Za-z0-9._~-]*$", description = "The payment's id"), VersionQuery, IdempotencyHeaders),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "No numeric version", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such payment", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The version read is not current", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The key was used for another request", body = Problem, content_type = "application/problem+json"),
        ServiceErrors,
    )
)]
async fn delete_payment(
    State(app): State<AppState>,
    MaybeSession(session): MaybeSession,
    id: std::result::Result<Path<String>, PathRejection>,
    query: std::result::Result<Query<VersionQuery>, QueryRejection>,
) -> Result<StatusCode> {
    let id = path_id(id)?;
    let Query(query) = query.map_err(|rejection| ApiError::Invalid(rejection.body_text()))?;
    let version = query
        .version
        .as_deref()
        .and_then(|version| version.parse::<i64>().ok())
        .filter(|version| *version >= 0)
        .ok_or_else(|| ApiError::Invalid("version must be the version read (0 or more)".into()))?;
    app.store.delete(session.as_ref(), &id, version).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?from=F&size=S` of a listing.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PageQuery {
    /// Items to skip (default 0).
    #[param(value_type = i64, required = false, minimum = 0)]
    from: Option<String>,
    /// Items to return (default 20, at most the server's `--max-results`: the document
    /// served says the server's).
    #[param(value_type = u32, required = false, minimum = 1, maximum = 100)]
    size: Option<String>,
}

/// A page of payments.
#[derive(Debug, Serialize, ToSchema)]
struct Page {
    data: Vec<Payment>,
}

/// The default page size.
const DEFAULT_SIZE: u32 = 20;

/// List payments, oldest first.
#[utoipa::path(
    get, path = "/payments", tag = "payments",
    params(PageQuery),
    responses(
        (status = 200, description = "A page", body = Page),
        (status = 400, description = "Bad from or size", body = Problem, content_type = "application/problem+json"),
        ServiceErrors,
    )
)]
async fn list_payments(
    State(app): State<AppState>,
    query: std::result::Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page>> {
    let Query(query) = query.map_err(|rejection| ApiError::Invalid(rejection.body_text()))?;
    let from = match query.from.as_deref() {
        None => 0,
        Some(from) => from
            .parse::<i64>()
            .ok()
            .and_then(|from| u64::try_from(from).ok())
            .ok_or_else(|| {
                ApiError::Invalid(format!("from must be a number from 0 to {}", i64::MAX))
            })?,
    };
    let max = app.max_results;
    let size = match query.size.as_deref() {
        None => DEFAULT_SIZE.min(max),
        Some(size) => size
            .parse::<u32>()
            .ok()
            .filter(|size| (1..=max).contains(size))
            .ok_or_else(|| ApiError::Invalid(format!("size must be a number from 1 to {max}")))?,
    };
    let data = app.store.list(from, size).await?;
    Ok(Json(Page { data }))
}

/// The health answer.
#[derive(Debug, Serialize, ToSchema)]
struct Health {
    /// `ok`.
    status: &'static str,
}

/// Readiness: whether the database answers.
#[utoipa::path(
    get, path = "/health", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "The database does not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn health_check(State(app): State<AppState>) -> Result<Json<Health>> {
    app.store.ping(HEALTH_TIMEOUT).await?;
    Ok(Json(Health { status: "ok" }))
}

/// How many payments there are.
#[derive(Debug, Serialize, ToSchema)]
struct Count {
    count: u64,
}

/// Count the payments.
#[utoipa::path(
    get, path = "/admin/repo", tag = "admin",
    responses((status = 200, description = "The count", body = Count))
)]
async fn count_payments(State(app): State<AppState>) -> Result<Json<Count>> {
    Ok(Json(Count {
        count: app.store.count().await?,
    }))
}

/// Delete every payment.
#[utoipa::path(
    delete, path = "/admin/repo", tag = "admin",
    responses((status = 204, description = "Emptied"))
)]
async fn clear_payments(State(app): State<AppState>) -> Result<StatusCode> {
    app.store.clear().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The idempotency headers the writes accept (documentation only: ana's layer reads them).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct IdempotencyHeaders {
    /// A key of 1 to 255 visible ASCII characters: a retry with it replays the first answer.
    #[param(
        rename = "X-Idempotency-Key",
        value_type = String,
        required = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$"
    )]
    x_idempotency_key: Option<String>,
    /// The same key as an RFC 8941 string (`"k"`, `\"` and `\\` escaped); when both headers
    /// are sent, their keys must be the same.
    #[param(
        rename = "Idempotency-Key",
        value_type = String,
        required = false,
        pattern = r#"^"([!#-\[\]-~]|\\["\\]){1,255}"$"#
    )]
    idempotency_key: Option<String>,
}

/// The `If-Match` header of a replacement (documentation only: [`if_match`] reads it).
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct IfMatchHeader {
    /// The ETag read (`"3"`), or `*` for any.
    #[param(
        rename = "If-Match",
        value_type = String,
        required = false,
        pattern = r#"^(\*|(W/)?"[0-9]{1,18}")$"#
    )]
    if_match: Option<String>,
}

/// The OpenAPI document, serialized once.
#[derive(Clone, Debug)]
pub struct OpenApiJson(pub Arc<str>);

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json"))
)]
async fn openapi_json(Extension(OpenApiJson(json)): Extension<OpenApiJson>) -> Response {
    ([(CONTENT_TYPE, "application/json")], json.to_string()).into_response()
}

/// ana's and the HTTP metrics, in Prometheus's text format.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain"))
)]
async fn prometheus_metrics(Extension(handle): Extension<PrometheusHandle>) -> String {
    handle.render()
}
