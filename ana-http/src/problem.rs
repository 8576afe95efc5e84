//! RFC 9457 problem responses: [`Rejection`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use super::grpc::is_grpc;
#[cfg(feature = "grpc")]
use super::grpc::{GRPC_MESSAGE, GRPC_RETRY_PUSHBACK, GRPC_STATUS, code, encode_message};
use super::headers::display_name;
use ana_core::{BoxError, RepositoryError};

/// The header naming a gRPC rejection's problem `type` (gRPC answers carry no problem body).
pub const PROBLEM_TYPE_HEADER: HeaderName = HeaderName::from_static("idempotency-problem");

/// The media type of every problem body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Prefix of every problem `type` URI.
pub const PROBLEM_BASE: &str = "https://ana.dev/problems/";

/// Why the idempotency layer answered instead of the handler (or instead of the handler's
/// response). Each case renders as an RFC 9457 `application/problem+json` response with its own
/// `type` (see [`type_uri`](Self::type_uri)); adapters put the `Rejection` itself in the
/// response extensions so logging middleware can see the typed cause, sources included. No
/// internal error text is ever written into a body.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// 400: no idempotency key and the configuration requires one.
    #[error("the {} header is required", display_name(header))]
    MissingKey {
        /// The key header's name.
        header: HeaderName,
    },
    /// 400: a header is malformed, repeated, over a maximum, or the two key headers disagree.
    #[error("the {} header {reason}", display_name(header))]
    InvalidHeader {
        /// The offending header.
        header: HeaderName,
        /// What is wrong with it, completing "The header ...".
        reason: Cow<'static, str>,
    },
    /// 400: the request body could not be read (the client went away mid-body).
    #[error("the request body could not be read")]
    UnreadableBody {
        /// The body's error.
        #[source]
        source: Arc<BoxError>,
    },
    /// 413: the request body is larger than the configured limit; the handler did not run and
    /// nothing was recorded.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 422: the key was first used for a different request (method, path, query or body).
    #[error("Operation {target} was called for key {key} with a different payload.")]
    PayloadMismatch {
        /// The operation's target.
        target: String,
        /// The client's key.
        key: String,
    },
    /// 409: another request with this key is being processed; retry after `retry_after`.
    #[error("Operation {target} still running for key {key}.")]
    StillRunning {
        /// The operation's target.
        target: String,
        /// The client's key.
        key: String,
        /// When to retry (at least a second).
        retry_after: Duration,
    },
    /// 422: the request's reference time plus its expiration has passed, or the record's
    /// expiration has; the handler did not run (or its work was rolled back at commit).
    #[error("Operation {target} expired for key {key}.")]
    Expired {
        /// The operation's target.
        target: String,
        /// The client's key.
        key: String,
    },
    /// 503: the idempotency store could not be used; the handler did not run, or its result
    /// could not be recorded.
    #[error("the idempotency store is unavailable")]
    StoreUnavailable {
        /// When to retry.
        retry_after: Duration,
        /// The store's error.
        #[source]
        source: Arc<RepositoryError>,
    },
    /// 500: the handler panicked; the attempt is recorded Failed and a retry runs it again.
    #[error("{message}")]
    HandlerPanicked {
        /// `Got panic "<value>"` (logged, never sent).
        message: String,
    },
    /// 500: the handler ran past its timeout and another request took the record over: this
    /// attempt's result was discarded (its transaction rolled back with the Postgres store).
    #[error("Operation {target} was superseded for key {key}.")]
    Superseded {
        /// The operation's target.
        target: String,
        /// The client's key.
        key: String,
    },
    /// 500: the first response for this key was too large to store. The handler ran and will
    /// not run again for this key; its response cannot be replayed.
    #[error("the response recorded for key {key} was too large to store")]
    ResponseNotStored {
        /// The client's key.
        key: String,
    },
    /// 500: a stored record or response could not be read or written.
    #[error("the idempotency record could not be processed")]
    Internal {
        /// The cause.
        #[source]
        source: Arc<BoxError>,
    },
}

impl Rejection {
    /// The response status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingKey { .. } | Self::InvalidHeader { .. } | Self::UnreadableBody { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::PayloadMismatch { .. } | Self::Expired { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::StillRunning { .. } => StatusCode::CONFLICT,
            Self::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::HandlerPanicked { .. }
            | Self::Superseded { .. }
            | Self::ResponseNotStored { .. }
            | Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The last segment of the problem `type` URI, e.g. `still-running`.
    pub fn slug(&self) -> &'static str {
        match self {
            Self::MissingKey { .. } => "missing-key",
            Self::InvalidHeader { .. } => "invalid-header",
            Self::UnreadableBody { .. } => "unreadable-body",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::PayloadMismatch { .. } => "payload-mismatch",
            Self::StillRunning { .. } => "still-running",
            Self::Expired { .. } => "expired",
            Self::StoreUnavailable { .. } => "store-unavailable",
            Self::HandlerPanicked { .. } => "handler-panicked",
            Self::Superseded { .. } => "superseded",
            Self::ResponseNotStored { .. } => "response-not-stored",
            Self::Internal { .. } => "internal",
        }
    }

    /// The problem `type` URI, e.g. `https://ana.dev/problems/still-running`.
    pub fn type_uri(&self) -> String {
        format!("{PROBLEM_BASE}{}", self.slug())
    }

    /// The problem `title`: the same for every occurrence of the case.
    pub fn title(&self) -> &'static str {
        match self {
            Self::MissingKey { .. } => "Idempotency key missing",
            Self::InvalidHeader { .. } => "Invalid idempotency header",
            Self::UnreadableBody { .. } => "Request body unreadable",
            Self::PayloadTooLarge { .. } => "Request body too large",
            Self::PayloadMismatch { .. } => "Idempotency key reused with a different request",
            Self::StillRunning { .. } => "Request still running",
            Self::Expired { .. } => "Idempotency key expired",
            Self::StoreUnavailable { .. } => "Idempotency store unavailable",
            Self::HandlerPanicked { .. } => "Internal server error",
            Self::Superseded { .. } => "Request superseded",
            Self::ResponseNotStored { .. } => "Response not stored",
            Self::Internal { .. } => "Internal server error",
        }
    }

    /// The problem `detail`. For 5xx cases it is a fixed text: internal errors are never
    /// disclosed.
    pub fn detail(&self) -> String {
        match self {
            Self::MissingKey { .. }
            | Self::InvalidHeader { .. }
            | Self::UnreadableBody { .. }
            | Self::PayloadTooLarge { .. }
            | Self::PayloadMismatch { .. }
            | Self::StillRunning { .. }
            | Self::Expired { .. }
            | Self::ResponseNotStored { .. } => {
                let text = self.to_string();
                let mut chars = text.chars();
                let detail = chars.next().map_or_else(String::new, |first| {
                    first.to_uppercase().collect::<String>() + chars.as_str()
                });
                if detail.ends_with('.') {
                    detail
                } else {
                    detail + "."
                }
            }
            Self::StoreUnavailable { .. } => {
                "The idempotency store is unavailable; retry later.".to_owned()
            }
            Self::HandlerPanicked { .. } | Self::Internal { .. } => {
                "The server failed to process the request.".to_owned()
            }
            Self::Superseded { .. } => {
                "The request took longer than its timeout and another attempt took over; its result was discarded.".to_owned()
            }
        }
    }

    /// The `Retry-After` delay, for 409 and 503.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::StillRunning { retry_after, .. } | Self::StoreUnavailable { retry_after, .. } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// The problem document as JSON.
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(self.document()).unwrap_or_default()
    }

    fn document(&self) -> ProblemDocument {
        ProblemDocument {
            kind: self.type_uri(),
            title: self.title(),
            status: self.status().as_u16(),
            detail: self.detail(),
            header: match self {
                Self::MissingKey { header } | Self::InvalidHeader { header, .. } => {
                    Some(display_name(header))
                }
                _ => None,
            },
        }
    }

    /// The gRPC status code of the rejection, for gRPC calls: `INVALID_ARGUMENT` (400s, 422
    /// payload mismatch), `RESOURCE_EXHAUSTED` (413), `FAILED_PRECONDITION` (422 expired),
    /// `ABORTED` (409 still running, superseded), `UNAVAILABLE` (503), `INTERNAL` (other 500s).
    #[cfg(feature = "grpc")]
    pub fn grpc_code(&self) -> i32 {
        match self {
            Self::MissingKey { .. }
            | Self::InvalidHeader { .. }
            | Self::UnreadableBody { .. }
            | Self::PayloadMismatch { .. } => code::INVALID_ARGUMENT,
            Self::PayloadTooLarge { .. } => code::RESOURCE_EXHAUSTED,
            Self::Expired { .. } => code::FAILED_PRECONDITION,
            Self::StillRunning { .. } | Self::Superseded { .. } => code::ABORTED,
            Self::StoreUnavailable { .. } => code::UNAVAILABLE,
            Self::HandlerPanicked { .. }
            | Self::ResponseNotStored { .. }
            | Self::Internal { .. } => code::INTERNAL,
        }
    }

    /// The rejection as a gRPC trailers-only response: HTTP 200, `Content-Type:
    /// application/grpc`, [`grpc_code`](Self::grpc_code) in `grpc-status`, the problem
    /// `detail` in `grpc-message`, its `type` in `idempotency-problem`, and the `Retry-After`
    /// delay in `grpc-retry-pushback-ms` (what gRPC retry policies wait for). The `Rejection`
    /// is in the extensions.
    #[cfg(feature = "grpc")]
    pub fn to_grpc_response(&self) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(GRPC_STATUS, HeaderValue::from(self.grpc_code()));
        headers.insert(GRPC_MESSAGE, encode_message(&self.detail()));
        if let Ok(kind) = HeaderValue::try_from(self.type_uri()) {
            headers.insert(PROBLEM_TYPE_HEADER, kind);
        }
        if let Some(after) = self.retry_after() {
            let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            headers.insert(GRPC_RETRY_PUSHBACK, HeaderValue::from(millis));
        }
        response.extensions_mut().insert(self.clone());
        response
    }

    /// The response for a request with these headers: a gRPC status for a gRPC call (feature
    /// `grpc`), else [`to_response`](Self::to_response).
    pub fn to_response_for(&self, request: &HeaderMap) -> Response<Bytes> {
        self.to_response_as(is_grpc(request))
    }

    /// A gRPC status when `grpc` (and the `grpc` feature is on), else
    /// [`to_response`](Self::to_response): for adapters that tell a gRPC call themselves
    /// (with [`is_grpc_content_type`](super::is_grpc_content_type)).
    pub fn to_response_as(&self, grpc: bool) -> Response<Bytes> {
        #[cfg(feature = "grpc")]
        if grpc {
            return self.to_grpc_response();
        }
        let _ = grpc;
        self.to_response()
    }

    /// The problem response, with the `Rejection` in its extensions.
    pub fn to_response(&self) -> Response<Bytes> {
        // Serializing a struct of strings and a number cannot fail.
        let body = Bytes::from(serde_json::to_vec(&self.document()).unwrap_or_default());
        let length = body.len();
        let mut response = Response::new(body);
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(CONTENT_LENGTH, super::recorded::decimal(length));
        if let Some(after) = self.retry_after() {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_seconds(after)));
        }
        response.extensions_mut().insert(self.clone());
        response
    }
}

/// RFC 9457 members in their usual order, plus `header` for 400s.
#[derive(serde::Serialize)]
struct ProblemDocument {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<String>,
}

/// Whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_seconds(delay: Duration) -> u64 {
    let seconds = delay
        .as_secs()
        .saturating_add(u64::from(delay.subsec_nanos() > 0));
    seconds.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_without_overflow() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(7)), 7);
        assert_eq!(retry_after_seconds(Duration::MAX), u64::MAX);
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::from_secs(30)), 30);
    }

    #[test]
    fn internal_text_never_reaches_the_body() {
        let source: BoxError = "password=hunter2 at db:5432".into();
        let rejections = [
            Rejection::Internal {
                source: Arc::new(source),
            },
            Rejection::HandlerPanicked {
                message: "Got panic \"secret\"".to_owned(),
            },
            Rejection::StoreUnavailable {
                retry_after: Duration::from_secs(1),
                source: Arc::new(RepositoryError::Unavailable("hunter2".into())),
            },
        ];
        for rejection in rejections {
            let response = rejection.to_response();
            let body = String::from_utf8_lossy(response.body()).into_owned();
            assert!(
                !body.contains("hunter2") && !body.contains("secret"),
                "{body}"
            );
            assert!(response.status().is_server_error());
            let grpc = rejection.to_grpc_response();
            let message = grpc.headers()[GRPC_MESSAGE].to_str().unwrap().to_owned();
            assert!(
                !message.contains("hunter2") && !message.contains("secret"),
                "{message}"
            );
        }
    }

    #[test]
    fn grpc_rejections_are_trailers_only_statuses() {
        let still_running = Rejection::StillRunning {
            target: "[POST]/pay.Payments/Pay".to_owned(),
            key: "k1".to_owned(),
            retry_after: Duration::from_millis(2500),
        };
        let response = still_running.to_grpc_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.body().is_empty());
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(headers[GRPC_STATUS], "10");
        assert_eq!(
            headers[GRPC_MESSAGE],
            "Operation [POST]/pay.Payments/Pay still running for key k1."
        );
        assert_eq!(headers[GRPC_RETRY_PUSHBACK], "2500");
        assert_eq!(
            headers[PROBLEM_TYPE_HEADER],
            "https://ana.dev/problems/still-running"
        );
        let missing = Rejection::MissingKey {
            header: HeaderName::from_static("x-idempotency-key"),
        };
        let mut grpc_request = HeaderMap::new();
        grpc_request.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        let response = missing.to_response_for(&grpc_request);
        assert_eq!(response.headers()[GRPC_STATUS], "3");
        assert!(response.headers().get(GRPC_RETRY_PUSHBACK).is_none());
        let response = missing.to_response_for(&HeaderMap::new());
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_JSON);
    }
}
