//! [`IdempotencyMiddleware`] (the `Transform`) → [`IdempotencyMiddlewareService`] (the
//! `Service`).

use std::fmt;
use std::future::{Ready, ready};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Payload, Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::LocalBoxFuture;
use http::{Response, StatusCode};

use ana_core::{IdempotencyRepository, MemorySession};
use ana_http::{
    Engine, IdempotencyConfig, Outcome, Plan, Rejection, ResponseBody, RouteLabel, is_grpc,
    is_grpc_content_type,
};

use crate::body::{ReadBody, read_payload, read_response};
use crate::convert::{request_parts, response_headers, status, to_actix};

/// The idempotency middleware for actix-web:
/// `App::new().wrap(IdempotencyMiddleware::new(store))`. See the [crate docs](crate).
///
/// Clones share the store; the value is `Send + Clone`, so build it once, outside
/// `HttpServer::new`, and clone it into the app factory. Give a scope or resource its own
/// settings by wrapping it with [`with_config`](Self::with_config) of the same value.
pub struct IdempotencyMiddleware<Ctx = MemorySession> {
    engine: Engine<Ctx>,
}

impl<Ctx> Clone for IdempotencyMiddleware<Ctx> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
        }
    }
}

impl<Ctx> fmt::Debug for IdempotencyMiddleware<Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyMiddleware")
            .field("engine", &self.engine)
            .finish()
    }
}

impl<Ctx: Clone + Send + Sync + 'static> IdempotencyMiddleware<Ctx> {
    /// The middleware over `repository` with the default [`IdempotencyConfig`].
    pub fn new<R>(repository: R) -> Self
    where
        R: IdempotencyRepository<Session = Ctx>,
    {
        Self::from_engine(Engine::new(repository))
    }

    /// The middleware over an [`Engine`] (a shared manager, a custom clock).
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

    /// The engine, for inspection (its manager reads records).
    pub fn engine(&self) -> &Engine<Ctx> {
        &self.engine
    }
}

impl<S, B, Ctx> Transform<S, ServiceRequest> for IdempotencyMiddleware<Ctx>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
    Ctx: Clone + Send + Sync + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = IdempotencyMiddlewareService<S, Ctx>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(IdempotencyMiddlewareService {
            service: Rc::new(service),
            engine: Rc::new(self.engine.clone()),
        }))
    }
}

/// The service built by [`IdempotencyMiddleware`] around the wrapped service.
///
/// Responses of routes it passes through keep their body (`EitherBody::Left`); everything it
/// answers itself (replays, problems, and the handler's response, whose body it read to
/// record it) is `EitherBody::Right`.
pub struct IdempotencyMiddlewareService<S, Ctx = MemorySession> {
    service: Rc<S>,
    engine: Rc<Engine<Ctx>>,
}

impl<S, Ctx> fmt::Debug for IdempotencyMiddlewareService<S, Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyMiddlewareService")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl<S, B, Ctx> Service<ServiceRequest> for IdempotencyMiddlewareService<S, Ctx>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
    Ctx: Clone + Send + Sync + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let service = Rc::clone(&self.service);
        let engine = Rc::clone(&self.engine);
        Box::pin(respond(service, engine, request))
    }
}

/// Set on a request inside an attempt: an inner (nested) middleware passes it through, so a
/// request is one attempt, under the outermost middleware's settings. (actix keeps request
/// extensions of its own type, apart from the `http` ones the engine marks.)
#[derive(Clone, Copy, Debug)]
struct InsideAttempt;

type Answer<B> = ServiceResponse<EitherBody<B>>;

async fn respond<S, B, Ctx>(
    service: Rc<S>,
    engine: Rc<Engine<Ctx>>,
    mut request: ServiceRequest,
) -> Result<Answer<B>, actix_web::Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
    Ctx: Clone + Send + Sync + 'static,
{
    if request.extensions().contains::<InsideAttempt>() {
        return pass_through(&service, request).await;
    }
    let plan = request_parts(&request).and_then(|mut parts| {
        if engine.reports_labels() {
            let route = request.match_pattern();
            let label = RouteLabel::new(&parts.method, route.as_deref().unwrap_or("*"));
            parts.extensions.insert(label);
        }
        let plan = engine.plan(&parts)?;
        Ok((parts, plan))
    });
    let (parts, prepared) = match plan {
        Err(rejection) => return Ok(problem(request, &rejection)),
        Ok((_, Plan::PassThrough)) => return pass_through(&service, request).await,
        Ok((parts, Plan::Idempotent(prepared))) => (parts, prepared),
    };
    let limit = engine.config().max_request_body();
    let body = match read_payload(&mut request.take_payload(), limit).await {
        Ok(body) => body,
        Err(rejection) => return Ok(problem(request, &rejection)),
    };
    let claimed = match engine.begin(prepared, &parts, &body).await {
        Ok(claimed) => claimed,
        Err(outcome) => return answer(request.into_parts().0, outcome, is_grpc(&parts.headers)),
    };
    request.extensions_mut().insert(claimed.attempt().clone());
    request.extensions_mut().insert(InsideAttempt);
    request.set_payload(Payload::from(body));
    // The handler runs here, in the request's own task: actix handlers are not `Send`, and the
    // engine's steps around it are plain futures this task awaits.
    let called = AssertUnwindSafe(service.call(request)).catch_unwind().await;
    let stored_limit = engine.config().max_stored_response();
    match called {
        Ok(Ok(response)) => {
            let (request, response) = response.into_parts();
            let (head, body) = response.into_parts();
            let body = read_response(body, stored_limit).await;
            match claimed.finish(recorded_copy(&head, &body)).await {
                Outcome::Executed(_) => Ok(handler_response(request, head, body)),
                outcome => answer(request, outcome, is_grpc(&parts.headers)),
            }
        }
        Ok(Err(error)) => {
            // Recorded as what actix will send for it: its error response.
            let (head, body) = error.error_response().into_parts();
            let body = read_response(body, stored_limit).await;
            match claimed.finish(recorded_copy(&head, &body)).await {
                Outcome::Executed(_) => Err(error),
                outcome => Err(Rejected::from(outcome).into()),
            }
        }
        Err(panic) => Err(Rejected::from(claimed.panicked(panic).await).into()),
    }
}

async fn pass_through<S, B>(
    service: &S,
    request: ServiceRequest,
) -> Result<Answer<B>, actix_web::Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    service
        .call(request)
        .await
        .map(ServiceResponse::map_into_left_body)
}

fn problem<B>(request: ServiceRequest, rejection: &Rejection) -> Answer<B> {
    let grpc = request
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .is_some_and(|value| is_grpc_content_type(value.as_bytes()));
    request
        .into_response(to_actix(&rejection.to_response_as(grpc)))
        .map_into_right_body()
}

/// The handler's own response, sent as it came (the body read for the record put back).
fn handler_response<B: MessageBody + 'static>(
    request: HttpRequest,
    head: HttpResponse<()>,
    body: ReadBody<B>,
) -> Answer<B> {
    let response = match body {
        ReadBody::Full(bytes) => head.set_body(BoxBody::new(bytes)),
        ReadBody::TooLarge(body) => head.set_body(BoxBody::new(body)),
        // Nothing usable to send: the attempt was recorded Failed (a bare 500).
        ReadBody::Failed => HttpResponse::InternalServerError()
            .finish()
            .map_into_boxed_body(),
    };
    ServiceResponse::new(request, response).map_into_right_body()
}

/// A replay or a rejection, as an actix response.
fn answer<B>(
    request: HttpRequest,
    outcome: Outcome<()>,
    grpc: bool,
) -> Result<Answer<B>, actix_web::Error> {
    let response = match outcome {
        Outcome::Replayed(replay) => {
            let (head, body) = replay.into_parts();
            match body {
                ResponseBody::Full(bytes) => Response::from_parts(head, bytes),
                // actix-web cannot send trailers. Only a record made through another adapter
                // on the same store has them (a gRPC answer): never replay it without them.
                ResponseBody::WithTrailers { .. } | ResponseBody::Streaming(()) => {
                    let source: ana_core::BoxError =
                        "a recorded response with trailers cannot be replayed by actix-web".into();
                    Rejection::Internal {
                        source: std::sync::Arc::new(source),
                    }
                    .to_response_as(grpc)
                }
            }
        }
        Outcome::Rejected(response) => response,
        Outcome::Executed(executed) => executed.map(|_| Bytes::new()),
    };
    Ok(ServiceResponse::new(request, to_actix(&response)).map_into_right_body())
}

/// The `http` 1 copy of the handler's response that the engine records.
fn recorded_copy<B>(head: &HttpResponse<()>, body: &ReadBody<B>) -> Response<ResponseBody<()>> {
    let mut copy = Response::new(ResponseBody::Full(Bytes::new()));
    *copy.body_mut() = match body {
        ReadBody::Full(bytes) => ResponseBody::Full(bytes.clone()),
        ReadBody::TooLarge(_) => ResponseBody::Streaming(()),
        // The handler's body failed mid-way: recorded as a bare 500.
        ReadBody::Failed => {
            *copy.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return copy;
        }
    };
    *copy.status_mut() = status(head.status());
    *copy.headers_mut() = response_headers(head.headers());
    copy
}

/// The middleware's answer as an actix error, used only when the request is gone: the
/// handler panicked, or the inner service failed and the attempt then could not be finished.
/// Its [`error_response`](ResponseError::error_response) is that answer (the problem
/// response; the [`Rejection`] is in its extensions and in [`rejection`](Self::rejection)).
#[derive(Debug)]
pub struct Rejected {
    response: Response<Bytes>,
}

impl From<Outcome<()>> for Rejected {
    fn from(outcome: Outcome<()>) -> Self {
        let response = outcome.into_response().map(|body| match body {
            ResponseBody::Full(bytes) | ResponseBody::WithTrailers { data: bytes, .. } => bytes,
            ResponseBody::Streaming(()) => Bytes::new(),
        });
        Self { response }
    }
}

impl Rejected {
    /// The typed cause, for logging.
    pub fn rejection(&self) -> Option<&Rejection> {
        self.response.extensions().get::<Rejection>()
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rejection() {
            Some(rejection) => fmt::Display::fmt(rejection, f),
            None => write!(
                f,
                "idempotency middleware answered {}",
                self.response.status()
            ),
        }
    }
}

impl std::error::Error for Rejected {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.rejection()
            .map(|rejection| rejection as &(dyn std::error::Error + 'static))
    }
}

impl ResponseError for Rejected {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::from_u16(self.response.status().as_u16())
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        to_actix(&self.response)
    }
}
