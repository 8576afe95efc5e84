//! Errors as RFC 9457 `application/problem+json` responses: [`ApiError`].

use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use serde::Serialize;
use utoipa::ToSchema;

use crate::model::Invalid;
use crate::store::StoreError;

/// Prefix of this service's problem `type` URIs.
pub const PROBLEM_BASE: &str = "https://ana.dev/problems/payments/";

/// An RFC 9457 problem body.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
}

/// Everything a route can answer besides success. 5xx details are fixed texts: the cause is
/// logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the payment or a parameter is invalid.
    #[error("{0}")]
    Invalid(String),
    /// 415: the body is not JSON.
    #[error("the body must be application/json")]
    UnsupportedMediaType,
    /// 404: no such payment.
    #[error("payment {0} does not exist")]
    NotFound(String),
    /// 404: no such route.
    #[error("no route for this method and path")]
    NoRoute,
    /// 409: the id is taken.
    #[error("payment {0} already exists")]
    Exists(String),
    /// 409: the version sent is not the current one.
    #[error("payment {id} is not at version {sent}: read it again")]
    StaleVersion {
        /// The payment.
        id: String,
        /// The version the client sent.
        sent: i64,
    },
    /// 412: `If-Match` does not match the current ETag.
    #[error("If-Match does not match payment {0}'s current ETag")]
    PreconditionFailed(String),
    /// 429: over the rate limit.
    #[error("too many requests: retry in {} s", .0.as_secs())]
    RateLimited(Duration),
    /// 503: the database does not answer.
    #[error("the database is unavailable")]
    Unavailable,
    /// 503: the request took longer than the server's timeout.
    #[error("the request took longer than the server allows")]
    Timeout,
    /// 500: anything else (the cause is logged).
    #[error("internal error")]
    Internal,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound(_) | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::Exists(_) | Self::StaleVersion { .. } => StatusCode::CONFLICT,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable | Self::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::NotFound(_) | Self::NoRoute => "not-found",
            Self::Exists(_) => "exists",
            Self::StaleVersion { .. } => "stale-version",
            Self::PreconditionFailed(_) => "precondition-failed",
            Self::RateLimited(_) => "rate-limited",
            Self::Unavailable => "unavailable",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
        }
    }

    /// The problem body.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        Problem {
            kind: format!("{PROBLEM_BASE}{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited(wait) => Some((*wait).max(Duration::from_secs(1))),
            Self::Unavailable | Self::Timeout => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

impl From<Invalid> for ApiError {
    fn from(invalid: Invalid) -> Self {
        Self::Invalid(invalid.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(id) => Self::NotFound(id),
            StoreError::Exists(id) => Self::Exists(id),
            StoreError::Stale { id, sent } => Self::StaleVersion { id, sent },
            StoreError::PreconditionFailed(id) => Self::PreconditionFailed(id),
            StoreError::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                Self::Unavailable
            }
            StoreError::Backend(source) => {
                tracing::error!(error = %source, "database error");
                Self::Internal
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after();
        let mut response = (self.status(), Json(self.problem())).into_response();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(ana_http::PROBLEM_JSON),
        );
        if let Some(wait) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(wait.as_secs()));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_say_nothing_of_their_cause() {
        let error: ApiError = StoreError::Backend("password=hunter2 at db:5432".into()).into();
        let problem = error.problem();
        assert_eq!(problem.status, 500);
        assert_eq!(problem.detail, "internal error");
        let error: ApiError = StoreError::Unavailable("connection refused".into()).into();
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
    }
}
