//! The HTTP conformance suite of ana-http, driving the tower layer with `oneshot` (no socket).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ana_axum::IdempotencyLayer;
use ana_http::Engine;
use ana_http::conformance::{Adapter, App, Routes};
use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Builds the suite's app as an axum router with the layer in front of every route.
struct Axum;

struct AxumApp(Router);

impl Adapter for Axum {
    fn app<Ctx>(&self, service: Engine<Ctx>, routes: Routes<Ctx>) -> impl App
    where
        Ctx: Clone + Send + Sync + 'static,
    {
        let router = Router::new()
            .fallback(move |request: Request<Body>| {
                let routes = routes.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    routes
                        .handle(Request::from_parts(parts, body))
                        .await
                        .map(Body::from)
                }
            })
            .layer(IdempotencyLayer::from_engine(service));
        AxumApp(router)
    }
}

impl App for AxumApp {
    async fn send(&self, request: Request<Bytes>) -> Response<Bytes> {
        let response = self
            .0
            .clone()
            .oneshot(request.map(Body::from))
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
    }
}

ana_http::http_conformance_tests!(Axum);
