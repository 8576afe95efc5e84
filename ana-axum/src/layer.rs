//! [`IdempotencyLayer`] → [`Idempotency`] → [`ResponseFuture`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{MatchedPath, OriginalUri};
use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body::Body as HttpBody;
use tower_layer::Layer;
use tower_service::Service;

use ana_core::{BoxError, IdempotencyRepository, MemorySession};
use ana_http::{Engine, IdempotencyConfig, Plan, Rejection, ResponseBody, RouteLabel};

use crate::body::{read_request, read_response, with_trailers};

/// Applies [`Idempotency`] to a service: see the [crate docs](crate).
///
/// Clones share the store. Give a route its own settings by layering it with a layer built by
/// [`with_config`](Self::with_config) from the same one.
pub struct IdempotencyLayer<Ctx = MemorySession> {
    engine: Engine<Ctx>,
}

impl<Ctx> Clone for IdempotencyLayer<Ctx> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
        }
    }
}

impl<Ctx> fmt::Debug for IdempotencyLayer<Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("engine", &self.engine)
            .finish()
    }
}

impl<Ctx: Clone + Send + Sync + 'static> IdempotencyLayer<Ctx> {
    /// A layer over `repository` with the default [`IdempotencyConfig`].
    pub fn new<R>(repository: R) -> Self
    where
        R: IdempotencyRepository<Session = Ctx>,
    {
        Self::from_engine(Engine::new(repository))
    }

    /// A layer over an [`Engine`] (a shared manager, a custom clock).
    pub fn from_engine(engine: Engine<Ctx>) -> Self {
        Self { engine }
    }

    /// The same store with another configuration.
    #[must_use]
    pub fn with_config(&self, config: IdempotencyConfig) -> Self {
        Self {
            engine: self.engine.clone().with_config(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &IdempotencyConfig {
        self.engine.config()
    }

    /// The driver, for inspection (its manager reads records).
    pub fn engine(&self) -> &Engine<Ctx> {
        &self.engine
    }
}

impl<S, Ctx> Layer<S> for IdempotencyLayer<Ctx> {
    type Service = Idempotency<S, Ctx>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            engine: self.engine.clone(),
        }
    }
}

/// Middleware that makes the inner service idempotent per request key: built by
/// [`IdempotencyLayer`].
///
/// The inner service receives `Request<axum::body::Body>` and may answer any body with
/// `Bytes` data. Every rejection is a response (`application/problem+json`, the typed
/// [`Rejection`](ana_http::Rejection) in its extensions); an error of the inner service
/// is returned as is (and its attempt recorded Failed).
pub struct Idempotency<S, Ctx = MemorySession> {
    inner: S,
    engine: Engine<Ctx>,
}

impl<S: Clone, Ctx> Clone for Idempotency<S, Ctx> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            engine: self.engine.clone(),
        }
    }
}

impl<S: fmt::Debug, Ctx> fmt::Debug for Idempotency<S, Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("engine", &self.engine)
            .finish()
    }
}

impl<S, Ctx> Idempotency<S, Ctx> {
    /// Wraps `inner`.
    pub fn new(inner: S, engine: Engine<Ctx>) -> Self {
        Self { inner, engine }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, by value.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Ctx, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S, Ctx>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    Ctx: Clone + Send + Sync + 'static,
    ReqBody: HttpBody<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The ready service goes into the future; `self` keeps a clone that will be polled
        // ready before its own call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let engine = self.engine.clone();
        ResponseFuture {
            inner: Box::pin(respond(engine, inner, request)),
        }
    }
}

async fn respond<S, Ctx, ReqBody, ResBody>(
    engine: Engine<Ctx>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    Ctx: Clone + Send + Sync + 'static,
    ReqBody: HttpBody<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (mut parts, body) = request.into_parts();
    // Under `Router::nest` the route sees its URI without the nesting prefix, and every nested
    // router's routes would share targets and payloads: the record is made on the URI the
    // client sent (axum's `OriginalUri`), and the route is called with its own.
    let routed = original_uri(&mut parts);
    if engine.reports_labels() {
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or("*", MatchedPath::as_str);
        let label = RouteLabel::new(&parts.method, route);
        parts.extensions.insert(label);
    }
    let prepared = match engine.plan(&parts) {
        Err(rejection) => return Ok(problem(&rejection, &parts)),
        Ok(Plan::PassThrough) => {
            restore_uri(&mut parts, routed);
            let response = inner
                .call(Request::from_parts(parts, Body::new(body)))
                .await?;
            return Ok(response.map(Body::new));
        }
        Ok(Plan::Idempotent(prepared)) => prepared,
    };
    let body = match read_request(body, engine.config().max_request_body()).await {
        Ok(body) => body,
        Err(rejection) => return Ok(problem(&rejection, &parts)),
    };
    let outcome = match engine.begin(prepared, &parts, &body).await {
        Ok(claimed) => {
            let limit = engine.config().max_stored_response();
            let next = move |mut parts, body: Bytes| {
                restore_uri(&mut parts, routed);
                let request = Request::from_parts(parts, Body::from(body));
                inner
                    .call(request)
                    .then(move |answer| read_answer(answer, limit))
            };
            // Boxed: the handler's future and the recording live on the heap only for the
            // calls that run the handler; replays and rejections keep a small future.
            Box::pin(claimed.run(parts, body, next)).await?
        }
        Err(outcome) => outcome,
    };
    Ok(outcome.into_response().map(into_body))
}

/// The inner service's answer with its body read up to `limit` bytes for the record.
async fn read_answer<B, E>(
    answer: Result<Response<B>, E>,
    limit: usize,
) -> Result<Response<ResponseBody<Body>>, E>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (head, body) = answer?.into_parts();
    Ok(match read_response(body, limit).await {
        Ok(body) => Response::from_parts(head, body),
        // The handler's body failed mid-way: nothing usable to record or send.
        Err(_) => {
            let mut response = Response::new(ResponseBody::Full(Bytes::new()));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    })
}

fn into_body(body: ResponseBody<Body>) -> Body {
    match body {
        ResponseBody::Full(bytes) => Body::from(bytes),
        ResponseBody::WithTrailers { data, trailers } => with_trailers(data, trailers),
        ResponseBody::Streaming(body) => body,
    }
}

fn problem(rejection: &Rejection, parts: &http::request::Parts) -> Response<Body> {
    rejection.to_response_for(&parts.headers).map(Body::from)
}

/// Puts the URI the client sent (axum's [`OriginalUri`], when a router set one that differs)
/// in `parts`; returns the routed URI it replaced.
fn original_uri(parts: &mut http::request::Parts) -> Option<http::Uri> {
    let original = parts.extensions.get::<OriginalUri>()?;
    if original.0 == parts.uri {
        return None;
    }
    let original = original.0.clone();
    Some(std::mem::replace(&mut parts.uri, original))
}

/// Gives the route back the URI it was routed with.
fn restore_uri(parts: &mut http::request::Parts, routed: Option<http::Uri>) {
    if let Some(routed) = routed {
        parts.uri = routed;
    }
}

/// The future of [`Idempotency`].
pub struct ResponseFuture<E> {
    inner: Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>,
}

impl<E> fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<E> Future for ResponseFuture<E> {
    type Output = Result<Response<Body>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ana_core::MemoryRepository;
    use axum::Router;
    use axum::routing::post;

    /// An inner service that panics in `call` itself, before it has a future, is answered
    /// like a handler that panics while running: a 500 problem.
    #[tokio::test]
    async fn a_service_panicking_in_call_is_a_500() {
        use tower::ServiceExt;
        let inner = tower::service_fn(
            |_: Request<Body>| -> std::future::Ready<Result<Response<Body>, std::convert::Infallible>> {
                panic!("in call")
            },
        );
        let request = Request::post("/")
            .header("x-idempotency-key", "k")
            .body(Body::from("{}"))
            .unwrap_or_else(|error| panic!("{error}"));
        let response = IdempotencyLayer::new(MemoryRepository::new())
            .layer(inner)
            .oneshot(request)
            .await
            .unwrap_or_else(|error| match error {});
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    /// The future of one request, as boxed by the layer: every byte of it is copied into the
    /// heap per request, and a large one leaves glibc's per-thread cache for its slower paths.
    #[test]
    fn the_response_future_stays_small() {
        let mut service = IdempotencyLayer::new(MemoryRepository::new()).layer(
            Router::new()
                .route("/", post(|| async { "ok" }))
                .into_service::<Body>(),
        );
        let request = Request::post("/")
            .header("x-idempotency-key", "k")
            .body(Body::from("{}"))
            .unwrap_or_else(|error| panic!("{error}"));
        let future = service.call(request);
        let size = std::mem::size_of_val(&*future.inner);
        eprintln!("response future: {size} bytes");
        assert!(size <= 2560, "{size} bytes");
    }
}
