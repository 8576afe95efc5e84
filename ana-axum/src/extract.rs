//! [`Attempt`]: the axum extractor of the request's attempt.

use std::ops::{Deref, DerefMut};

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use ana_http::Rejection;

/// The attempt the request runs as: the store's session (for `ana-pg`, the transaction that
/// records the response, so the handler's own SQL commits with it), the client's key and the
/// target.
///
/// Take `Option<Attempt<Ctx>>` on routes where keys are optional. Without the layer in front
/// of the route, extraction fails with a 500 problem ([`MissingLayer`]).
///
/// ```
/// use ana_axum::Attempt;
/// use ana_core::MemorySession;
///
/// async fn hello(attempt: Attempt<MemorySession>) -> String {
///     format!("Hello {}! (attempt {})", attempt.key(), attempt.session().attempt())
/// }
/// # let _: axum::routing::MethodRouter = axum::routing::post(hello);
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

/// The rejection of [`Attempt`] when no idempotency layer (with that session type) ran
/// before the handler: a 500 problem, since it is a server misconfiguration.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the idempotency layer is missing in front of this route (or has another store type)")]
pub struct MissingLayer;

impl IntoResponse for MissingLayer {
    fn into_response(self) -> Response {
        let source: ana_core::BoxError = Box::new(self);
        let rejection = Rejection::Internal {
            source: std::sync::Arc::new(source),
        };
        rejection.to_response().map(axum::body::Body::from)
    }
}

impl<S, Ctx> FromRequestParts<S> for Attempt<Ctx>
where
    S: Send + Sync,
    Ctx: Clone + Send + Sync + 'static,
{
    type Rejection = MissingLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<ana_http::Attempt<Ctx>>()
            .cloned()
            .map(Attempt)
            .ok_or(MissingLayer)
    }
}

impl<S, Ctx> OptionalFromRequestParts<S> for Attempt<Ctx>
where
    S: Send + Sync,
    Ctx: Clone + Send + Sync + 'static,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ana_http::Attempt<Ctx>>()
            .cloned()
            .map(Attempt))
    }
}
