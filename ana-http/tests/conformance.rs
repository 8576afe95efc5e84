//! The HTTP conformance suite on the framework-neutral driver itself
//! ([`Engine::handle`]), with no web framework in between.

use ana_http::conformance::{Adapter, App, Routes};
use ana_http::{Engine, ResponseBody};
use bytes::Bytes;

struct Direct;

struct DirectApp<Ctx> {
    service: Engine<Ctx>,
    routes: Routes<Ctx>,
}

impl Adapter for Direct {
    fn app<Ctx>(&self, service: Engine<Ctx>, routes: Routes<Ctx>) -> impl App
    where
        Ctx: Clone + Send + Sync + 'static,
    {
        DirectApp { service, routes }
    }
}

impl<Ctx: Clone + Send + Sync + 'static> App for DirectApp<Ctx> {
    async fn send(&self, request: http::Request<Bytes>) -> http::Response<Bytes> {
        let routes = self.routes.clone();
        let next = move |parts, body| async move {
            let response = routes.handle(http::Request::from_parts(parts, body)).await;
            response.map(ResponseBody::<()>::Full)
        };
        self.service
            .handle(request, next)
            .await
            .map(|body| match body {
                ResponseBody::Full(bytes) => bytes,
                ResponseBody::WithTrailers { data, .. } => data,
                ResponseBody::Streaming(()) => Bytes::new(),
            })
    }
}

ana_http::http_conformance_tests!(Direct);
