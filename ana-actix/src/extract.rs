//! [`Attempt`]: the actix extractor of the request's attempt.

use std::future::{Ready, ready};
use std::ops::{Deref, DerefMut};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest, HttpResponse, ResponseError};

use ana_http::Rejection;

use crate::convert::to_actix;

/// The attempt the request runs as: the store's session (for `ana-pg`, the transaction that
/// records the response, so the handler's own SQL commits with it), the client's key and the
/// target.
///
/// Take `Option<Attempt<Ctx>>` on routes where keys are optional. Without the
/// [`IdempotencyMiddleware`](crate::IdempotencyMiddleware) (with that session type) in front
/// of the route, extraction fails with a 500 problem ([`MissingMiddleware`]).
///
/// ```
/// use ana_actix::Attempt;
/// use ana_core::MemorySession;
///
/// async fn hello(attempt: Attempt<MemorySession>) -> String {
///     format!("Hello {}! (attempt {})", attempt.key(), attempt.session().attempt())
/// }
/// # let _ = actix_web::web::post().to(hello);
/// ```
#[derive(Clone, Debug)]
pub struct Attempt<Ctx>(pub ana_http::Attempt<Ctx>);

impl<Ctx> Attempt<Ctx> {
    /// The framework-neutral attempt.
    pub fn into_inner(self) -> ana_http::Attempt<Ctx> {
        self.0
    }
}

impl<Ctx> Deref for Attempt<Ctx> {
    type Target = ana_http::Attempt<Ctx>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<Ctx> DerefMut for Attempt<Ctx> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<Ctx: Clone + Send + Sync + 'static> FromRequest for Attempt<Ctx> {
    type Error = MissingMiddleware;
    type Future = Ready<Result<Self, MissingMiddleware>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(
            request
                .extensions()
                .get::<ana_http::Attempt<Ctx>>()
                .cloned()
                .map(Attempt)
                .ok_or(MissingMiddleware),
        )
    }
}

/// The error of [`Attempt`] when no idempotency middleware (with that session type) ran
/// before the handler: a 500 problem, since it is a server misconfiguration.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the idempotency middleware is missing in front of this route (or has another store type)")]
pub struct MissingMiddleware;

impl ResponseError for MissingMiddleware {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::INTERNAL_SERVER_ERROR
    }

    fn error_response(&self) -> HttpResponse {
        let source: ana_core::BoxError = Box::new(*self);
        let rejection = Rejection::Internal {
            source: std::sync::Arc::new(source),
        };
        to_actix(&rejection.to_response())
    }
}
