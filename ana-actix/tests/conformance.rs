//! The HTTP conformance suite of ana-http, driving the actix middleware with actix's test
//! utilities (`test::init_service` / `test::try_call_service`, no socket).
//!
//! The suite sends requests from a multi-threaded tokio runtime and needs `Send` futures;
//! actix services are `!Send`. So each app lives on its own thread, inside an actix `System`
//! (as one actix worker would), and requests reach it over a channel. Each request is its own
//! task there, so concurrent cases really are concurrent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::rc::Rc;

use actix_web::dev::Payload;
use actix_web::http::header as actix_header;
use actix_web::{App as ActixApp, HttpRequest, HttpResponse, test, web};
use ana_actix::{Attempt, IdempotencyMiddleware};
use ana_http::Engine;
use ana_http::conformance::{Adapter, App, Routes};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};

struct Actix;

type Job = (Request<Bytes>, oneshot::Sender<Response<Bytes>>);

/// A handle on an actix app running on its own thread.
struct ActixThread {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Adapter for Actix {
    fn app<Ctx>(&self, service: Engine<Ctx>, routes: Routes<Ctx>) -> impl App
    where
        Ctx: Clone + Send + Sync + 'static,
    {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let app = test::init_service(
                    ActixApp::new()
                        .wrap(IdempotencyMiddleware::from_engine(service))
                        .default_service(web::to(
                            move |request: HttpRequest,
                                  body: web::Bytes,
                                  session: Option<Attempt<Ctx>>| {
                                let routes = routes.clone();
                                async move { handle(&routes, &request, body, session).await }
                            },
                        )),
                )
                .await;
                let app = Rc::new(app);
                // Ends when the test drops its handle.
                while let Some((request, reply)) = queue.recv().await {
                    let app = Rc::clone(&app);
                    actix_web::rt::spawn(async move {
                        // The suite's request as an actix request: exactly its method, URI,
                        // headers and body (no `Content-Length` added when the suite left it
                        // out).
                        let (parts, body) = request.into_parts();
                        let method =
                            actix_web::http::Method::from_bytes(parts.method.as_str().as_bytes())
                                .unwrap();
                        let mut actix = test::TestRequest::default()
                            .method(method)
                            .uri(&parts.uri.to_string())
                            .to_request();
                        let headers = actix.headers_mut();
                        headers.clear();
                        for (name, value) in &parts.headers {
                            headers.append(
                                actix_header::HeaderName::from_bytes(name.as_str().as_bytes())
                                    .unwrap(),
                                actix_header::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
                            );
                        }
                        *actix.payload() = Payload::from(body);
                        let response = match test::try_call_service(&*app, actix).await {
                            Ok(response) => {
                                let status = response.status();
                                let headers = response.headers().clone();
                                let body = test::read_body(response).await;
                                from_actix(status, &headers, body)
                            }
                            // What actix's dispatcher would send for the error.
                            Err(error) => {
                                let response = error.error_response();
                                let status = response.status();
                                let headers = response.headers().clone();
                                let body = actix_web::body::to_bytes(response.into_body())
                                    .await
                                    .unwrap();
                                from_actix(status, &headers, body)
                            }
                        };
                        let _ = reply.send(response);
                    });
                }
            });
        });
        ActixThread { jobs }
    }
}

impl App for ActixThread {
    async fn send(&self, request: Request<Bytes>) -> Response<Bytes> {
        let (reply, response) = oneshot::channel();
        self.jobs
            .send((request, reply))
            .expect("the actix thread is running");
        response.await.expect("the actix app answered")
    }
}

fn from_actix(
    status: actix_web::http::StatusCode,
    headers: &actix_header::HeaderMap,
    body: Bytes,
) -> Response<Bytes> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(status.as_u16()).unwrap();
    for (name, value) in headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
            HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    response
}

/// The suite's handler behind an actix route; the attempt comes through the [`Attempt`]
/// extractor.
async fn handle<Ctx: Clone + Send + Sync + 'static>(
    routes: &Routes<Ctx>,
    request: &HttpRequest,
    body: web::Bytes,
    session: Option<Attempt<Ctx>>,
) -> HttpResponse {
    let mut builder = Request::builder()
        .method(request.method().as_str())
        .uri(request.uri().to_string());
    for (name, value) in request.headers() {
        builder = builder.header(name.as_str(), value.as_bytes());
    }
    let mut http_request = builder.body(body).unwrap();
    if let Some(session) = session {
        http_request.extensions_mut().insert(session.into_inner());
    }
    let response = routes.handle(http_request).await;
    let status = actix_web::http::StatusCode::from_u16(response.status().as_u16()).unwrap();
    let mut actix = HttpResponse::build(status);
    for (name, value) in response.headers() {
        actix.append_header((name.as_str(), value.as_bytes()));
    }
    actix.body(response.into_body())
}

ana_http::http_conformance_tests!(Actix);
