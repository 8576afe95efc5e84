//! [`Idempotency`] (the `Transform`) → [`IdempotencyMiddleware`] (the `Service`).

use std::any::Any;
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
use http::request::Parts;
use http::{Response, StatusCode};
use tokio::sync::oneshot;

use ana_http::{
    IdempotencyConfig, IdempotencyContext, IdempotencyService, Plan, Prepared, Rejection,
    ResponseBody, is_grpc, is_grpc_content_type,
};
use ana_core::{IdempotencyRepository, MemorySession};

use crate::body::{ReadBody, read_payload, read_response};
use crate::convert::{request_parts, response_headers, status, to_actix};

/// The idempotency middleware for actix-web: `App::new().wrap(Idempotency::new(store))`.
/// See the [crate docs](crate).
///
/// Clones share the store; the value is `Send + Clone`, so build it once, outside
/// `HttpServer::new`, and clone it into the app factory. Give a scope or resource its own
/// settings by wrapping it with [`with_config`](Self::with_config) of the same value.
pub struct Idempotency<Ctx = MemorySession> {
    service: IdempotencyService<Ctx>,
}

impl<Ctx> Clone for Idempotency<Ctx> {
    fn clone(&self) -> Self {
        Self {
            service: self.service.clone(),
        }
    }
}

impl<Ctx> fmt::Debug for Idempotency<Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("service", &self.service)
            .finish()
    }
}

impl<Ctx: Clone + Send + Sync + 'static> Idempotency<Ctx> {
    /// The middleware over `repository` with the default [`IdempotencyConfig`].
    pub fn new<R>(repository: R) -> Self
    where
        R: IdempotencyRepository<Session = Ctx>,
    {
        Self::from_service(IdempotencyService::new(repository))
    }

    /// The middleware over an [`IdempotencyService`] (a shared manager, a custom clock).
    pub fn from_service(service: IdempotencyService<Ctx>) -> Self {
        Self { service }
    }

    /// The same store with another configuration.
    #[must_use]
    pub fn with_config(&self, config: IdempotencyConfig) -> Self {
        Self {
            service: self.service.clone().with_config(config),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &IdempotencyConfig {
        self.service.config()
    }

    /// The driver, for inspection (its manager reads records).
    pub fn service(&self) -> &IdempotencyService<Ctx> {
        &self.service
    }
}

impl<S, B, Ctx> Transform<S, ServiceRequest> for Idempotency<Ctx>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
    Ctx: Clone + Send + Sync + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = IdempotencyMiddleware<S, Ctx>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(IdempotencyMiddleware {
            service: Rc::new(service),
            idempotency: Rc::new(self.service.clone()),
        }))
    }
}

/// The middleware service built by [`Idempotency`] around the wrapped service.
///
/// Responses of routes it passes through keep their body (`EitherBody::Left`); everything it
/// answers itself (replays, problems, and the handler's response, whose body it read to
/// record it) is `EitherBody::Right`.
pub struct IdempotencyMiddleware<S, Ctx = MemorySession> {
    service: Rc<S>,
    idempotency: Rc<IdempotencyService<Ctx>>,
}

impl<S, Ctx> fmt::Debug for IdempotencyMiddleware<S, Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyMiddleware")
            .field("idempotency", &self.idempotency)
            .finish_non_exhaustive()
    }
}

impl<S, B, Ctx> Service<ServiceRequest> for IdempotencyMiddleware<S, Ctx>
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
        let idempotency = Rc::clone(&self.idempotency);
        Box::pin(respond(service, idempotency, request))
    }
}

/// Set on a request inside an attempt: an inner (nested) middleware passes it through, so a
/// request is one attempt, under the outermost middleware's settings.
#[derive(Clone, Copy, Debug)]
struct InsideAttempt;

/// Marks the response built from the handler's own (`http` 1 copy sent to the rules).
#[derive(Clone, Copy, Debug)]
struct FromHandler;

/// Stands for a response body over the stored-response limit, which stays on this thread.
#[derive(Debug)]
struct HeldBody;

type Answer = Response<ResponseBody<HeldBody>>;
type PanicPayload = Box<dyn Any + Send + 'static>;

/// What became of the handler, on this side of the rules.
enum Ran<B> {
    /// The rules did not call it (replay, rejection): the request is still here.
    NotCalled(ServiceRequest),
    /// It answered.
    Answered {
        request: HttpRequest,
        head: HttpResponse<()>,
        body: ReadBody<B>,
    },
    /// The inner service failed; actix renders the error as its response.
    Failed(actix_web::Error),
    /// It panicked (the panic was handed to the rules, which recorded it).
    Panicked,
}

async fn respond<S, B, Ctx>(
    service: Rc<S>,
    idempotency: Rc<IdempotencyService<Ctx>>,
    mut request: ServiceRequest,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
    Ctx: Clone + Send + Sync + 'static,
{
    if request.extensions().contains::<InsideAttempt>() {
        return pass_through(&service, request).await;
    }
    let plan = request_parts(&request).and_then(|parts| {
        let plan = idempotency.plan(&parts)?;
        Ok((parts, plan))
    });
    let (parts, prepared) = match plan {
        Err(rejection) => return Ok(problem(request, &rejection)),
        Ok((_, Plan::PassThrough)) => return pass_through(&service, request).await,
        Ok((parts, Plan::Idempotent(prepared))) => (parts, prepared),
    };
    let limit = idempotency.config().max_request_body();
    let body = match read_payload(&mut request.take_payload(), limit).await {
        Ok(body) => body,
        Err(rejection) => return Ok(problem(request, &rejection)),
    };
    let stored_limit = idempotency.config().max_stored_response();
    run(
        &service,
        &idempotency,
        request,
        prepared,
        parts,
        body,
        stored_limit,
    )
    .await
}

async fn pass_through<S, B>(
    service: &S,
    request: ServiceRequest,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    service
        .call(request)
        .await
        .map(ServiceResponse::map_into_left_body)
}

fn problem<B>(request: ServiceRequest, rejection: &Rejection) -> ServiceResponse<EitherBody<B>> {
    let grpc = request
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .is_some_and(|value| is_grpc_content_type(value.as_bytes()));
    request
        .into_response(to_actix(&rejection.to_response_as(grpc)))
        .map_into_right_body()
}

/// Runs the rules (their future is `Send`; they own the store calls) and, on this thread, the
/// handler (actix services are `!Send`): the rules' `next` hands the request over a channel
/// and waits for the handler's response (or its panic) on another. One task polls both.
async fn run<S, B, Ctx>(
    service: &S,
    idempotency: &IdempotencyService<Ctx>,
    request: ServiceRequest,
    prepared: Prepared,
    parts: Parts,
    body: Bytes,
    stored_limit: usize,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
    Ctx: Clone + Send + Sync + 'static,
{
    let grpc = is_grpc(&parts.headers);
    let (call_tx, call_rx) = oneshot::channel::<(Parts, Bytes)>();
    let (answer_tx, answer_rx) = oneshot::channel::<Result<Answer, PanicPayload>>();
    let next = move |parts: Parts, body: Bytes| async move {
        if call_tx.send((parts, body)).is_err() {
            return bare(StatusCode::INTERNAL_SERVER_ERROR);
        }
        match answer_rx.await {
            Ok(Ok(answer)) => answer,
            // The rules catch it, record the attempt Failed and answer 500.
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => bare(StatusCode::INTERNAL_SERVER_ERROR),
        }
    };
    let handler = async move {
        let Ok((mut parts, body)) = call_rx.await else {
            return Ran::NotCalled(request);
        };
        let mut request = request;
        if let Some(context) = parts.extensions.remove::<IdempotencyContext<Ctx>>() {
            request.extensions_mut().insert(context);
        }
        request.extensions_mut().insert(InsideAttempt);
        request.set_payload(Payload::from(body));
        let called = AssertUnwindSafe(async { service.call(request).await })
            .catch_unwind()
            .await;
        let (ran, answer) = match called {
            Err(panic) => (Ran::Panicked, Err(panic)),
            Ok(Ok(response)) => {
                let (request, response) = response.into_parts();
                let (head, body) = response.into_parts();
                let body = read_response(body, stored_limit).await;
                let answer = handler_answer(&head, &body);
                (
                    Ran::Answered {
                        request,
                        head,
                        body,
                    },
                    Ok(answer),
                )
            }
            Ok(Err(error)) => {
                // Recorded as what actix will send for it: its error response.
                let rendered = error.error_response();
                let (head, body) = rendered.into_parts();
                let answer = handler_answer(&head, &read_response(body, stored_limit).await);
                (Ran::Failed(error), Ok(answer))
            }
        };
        let _ = answer_tx.send(answer);
        ran
    };
    let (answer, ran) =
        futures_util::future::join(idempotency.execute(prepared, parts, body, next), handler).await;

    if answer.extensions().get::<FromHandler>().is_some() {
        match ran {
            Ran::Answered {
                request,
                head,
                body,
            } => {
                let response = match body {
                    ReadBody::Full(bytes) => head.set_body(BoxBody::new(bytes)),
                    ReadBody::TooLarge(body) => head.set_body(BoxBody::new(body)),
                    // Nothing usable to send: the attempt was recorded Failed (a bare 500).
                    ReadBody::Failed => HttpResponse::InternalServerError()
                        .finish()
                        .map_into_boxed_body(),
                };
                return Ok(ServiceResponse::new(request, response).map_into_right_body());
            }
            Ran::Failed(error) => return Err(error),
            Ran::NotCalled(_) | Ran::Panicked => {}
        }
    }
    // A replay or a problem.
    let (head, body) = answer.into_parts();
    let answer = match body {
        ResponseBody::Full(bytes) => Response::from_parts(head, bytes),
        ResponseBody::Streaming(HeldBody) => Response::from_parts(head, Bytes::new()),
        // actix-web cannot send trailers. Only a record made through another adapter on the
        // same store has them (a gRPC answer): never replay it without them.
        ResponseBody::WithTrailers { .. } => {
            let source: ana_core::BoxError =
                "a recorded response with trailers cannot be replayed by actix-web".into();
            Rejection::Internal {
                source: std::sync::Arc::new(source),
            }
            .to_response_as(grpc)
        }
    };
    let request = match ran {
        Ran::NotCalled(request) => Some(request.into_parts().0),
        Ran::Answered { request, .. } => Some(request),
        Ran::Failed(_) | Ran::Panicked => None,
    };
    match request {
        Some(request) => Ok(ServiceResponse::new(request, to_actix(&answer)).map_into_right_body()),
        // The request went into the handler and did not come back (it panicked or failed):
        // actix renders the answer from the error.
        None => Err(Rejected { response: answer }.into()),
    }
}

/// The `http` 1 copy of the handler's response that the rules record.
fn handler_answer<B>(head: &HttpResponse<()>, body: &ReadBody<B>) -> Answer {
    let body = match body {
        ReadBody::Full(bytes) => ResponseBody::Full(bytes.clone()),
        ReadBody::TooLarge(_) => ResponseBody::Streaming(HeldBody),
        ReadBody::Failed => return bare(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let mut answer = Response::new(body);
    *answer.status_mut() = status(head.status());
    *answer.headers_mut() = response_headers(head.headers());
    answer.extensions_mut().insert(FromHandler);
    answer
}

fn bare(status: StatusCode) -> Answer {
    let mut answer = Response::new(ResponseBody::Full(Bytes::new()));
    *answer.status_mut() = status;
    answer.extensions_mut().insert(FromHandler);
    answer
}

/// The middleware's answer as an actix error, used only when the request is gone: the
/// handler panicked, or the inner service failed and the attempt then could not be finished.
/// Its [`error_response`](ResponseError::error_response) is that answer (the problem
/// response; the [`Rejection`] is in its extensions and in [`rejection`](Self::rejection)).
#[derive(Debug)]
pub struct Rejected {
    response: Response<Bytes>,
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
