//! Between actix-web's `http` 0.2 types and the `http` 1 types of `ana_http`.
//!
//! Both crates validate methods, URIs, header names and header values with the same grammar,
//! so a value that one accepted the other accepts too; the conversions are still fallible and
//! never panic.

use std::sync::Arc;

use actix_web::HttpResponse;
use actix_web::dev::ServiceRequest;
use actix_web::http::header as actix_header;
use actix_web::http::{StatusCode as ActixStatus, Version as ActixVersion};
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::request::Parts;
use http::{Method, Response, StatusCode, Uri, Version};

use ana_core::BoxError;
use ana_http::Rejection;

/// The head of an actix request as `http` 1 [`Parts`] (method, URI, version, headers; the
/// actix extensions stay with the actix request).
pub(crate) fn request_parts(request: &ServiceRequest) -> Result<Parts, Rejection> {
    let method = Method::from_bytes(request.method().as_str().as_bytes()).map_err(internal)?;
    let uri = Uri::try_from(request.uri().to_string()).map_err(internal)?;
    let (mut parts, ()) = http::Request::builder()
        .method(method)
        .uri(uri)
        .version(version(request.version()))
        .body(())
        .map_err(internal)?
        .into_parts();
    for (name, value) in request.headers() {
        let name = HeaderName::from_bytes(name.as_str().as_bytes()).map_err(internal)?;
        let value = HeaderValue::from_bytes(value.as_bytes()).map_err(internal)?;
        // `append`: a repeated header stays repeated (a repeated key header is a 400).
        parts.headers.append(name, value);
    }
    Ok(parts)
}

fn version(version: ActixVersion) -> Version {
    match version {
        ActixVersion::HTTP_09 => Version::HTTP_09,
        ActixVersion::HTTP_10 => Version::HTTP_10,
        ActixVersion::HTTP_2 => Version::HTTP_2,
        ActixVersion::HTTP_3 => Version::HTTP_3,
        _ => Version::HTTP_11,
    }
}

fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Rejection {
    let source: BoxError = Box::new(error);
    Rejection::Internal {
        source: Arc::new(source),
    }
}

/// The status of an actix response in `http` 1 terms.
pub(crate) fn status(status: ActixStatus) -> StatusCode {
    StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The headers of an actix response in `http` 1 terms (what gets recorded for replay).
pub(crate) fn response_headers(headers: &actix_header::HeaderMap) -> HeaderMap {
    let mut converted = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            converted.append(name, value);
        }
    }
    converted
}

/// An `http` 1 response (a replay or a problem) as an actix response, the [`Rejection`] (if
/// any) in its extensions. Its `Content-Length` (the body's length) is kept, as ana-http set
/// it; on the wire actix writes its own from the body, the same value.
pub(crate) fn to_actix(response: &Response<Bytes>) -> HttpResponse {
    let status = ActixStatus::from_u16(response.status().as_u16())
        .unwrap_or(ActixStatus::INTERNAL_SERVER_ERROR);
    let mut actix = HttpResponse::with_body(status, response.body().clone());
    let headers = actix.headers_mut();
    for (name, value) in response.headers() {
        if name == TRANSFER_ENCODING {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            actix_header::HeaderName::from_bytes(name.as_str().as_bytes()),
            actix_header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    if let Some(rejection) = response.extensions().get::<Rejection>() {
        actix.extensions_mut().insert(rejection.clone());
    }
    actix.map_into_boxed_body()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn request_head_converts_with_repeated_headers() {
        let request = TestRequest::post()
            .uri("/pay?x=1")
            .append_header(("x-idempotency-key", "a"))
            .append_header(("x-idempotency-key", "b"))
            .to_srv_request();
        let parts = request_parts(&request).unwrap();
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.uri.path_and_query().unwrap().as_str(), "/pay?x=1");
        assert_eq!(parts.headers.get_all("x-idempotency-key").iter().count(), 2);
    }

    #[test]
    fn problem_converts_with_its_rejection() {
        let rejection = Rejection::PayloadTooLarge { limit: 4 };
        let actix = to_actix(&rejection.to_response());
        assert_eq!(actix.status(), ActixStatus::PAYLOAD_TOO_LARGE);
        assert_eq!(
            actix.headers().get(actix_header::CONTENT_TYPE).unwrap(),
            "application/problem+json"
        );
        let length = rejection.to_response().body().len().to_string();
        assert_eq!(
            actix.headers().get(actix_header::CONTENT_LENGTH).unwrap(),
            length.as_str()
        );
        assert!(actix.extensions().get::<Rejection>().is_some());
    }
}
