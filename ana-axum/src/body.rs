//! Reading bodies with limits, and putting a partly read body back together.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use ana_core::BoxError;
use ana_core::http::{Rejection, ResponseBody};

/// Reads a request body of at most `limit` bytes. A body of one frame (the usual case) is kept
/// as it came, without a copy.
pub(crate) async fn read_request<B>(body: B, limit: usize) -> Result<Bytes, Rejection>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let unreadable = |error: B::Error| Rejection::UnreadableBody {
        source: std::sync::Arc::new(error.into()),
    };
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        // Trailers of a request are not part of its payload.
        let Ok(data) = frame.map_err(unreadable)?.into_data() else {
            continue;
        };
        let length = first.as_ref().map_or(read.len(), Bytes::len) + data.len();
        if length > limit {
            return Err(Rejection::PayloadTooLarge { limit });
        }
        if first.is_none() && read.is_empty() {
            first = Some(data);
        } else {
            if let Some(first) = first.take() {
                read.extend_from_slice(&first);
            }
            read.extend_from_slice(&data);
        }
    }
    Ok(first.unwrap_or_else(|| read.freeze()))
}

/// Reads a response body up to `limit` bytes: the whole body when it fits (with its trailers,
/// when it ends with some: gRPC puts its status there), else the body itself, what was read
/// put back in front of the rest. `Err` when the body fails.
pub(crate) async fn read_response<B>(body: B, limit: usize) -> Result<ResponseBody<Body>, BoxError>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut body: BoxBody = Box::pin(body.map_err(Into::into));
    // A body of one frame (the usual case) is kept as it came, without a copy.
    let mut first: Option<Bytes> = None;
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let data = match frame?.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers end the body.
                if let Ok(trailers) = frame.into_trailers() {
                    let data = first.unwrap_or_else(|| read.freeze());
                    return Ok(ResponseBody::WithTrailers { data, trailers });
                }
                continue;
            }
        };
        if first.is_none() && read.is_empty() {
            first = Some(data);
        } else {
            if let Some(first) = first.take() {
                read.extend_from_slice(&first);
            }
            read.extend_from_slice(&data);
        }
        let length = first.as_ref().map_or(read.len(), Bytes::len);
        if length > limit {
            let prefix = first.take().unwrap_or_else(|| read.split().freeze());
            return Ok(ResponseBody::Streaming(Body::new(Prefixed {
                prefix: Some(prefix),
                trailers: None,
                rest: Body::new(body),
            })));
        }
    }
    Ok(ResponseBody::Full(first.unwrap_or_else(|| read.freeze())))
}

/// A body of `data` then `trailers`.
pub(crate) fn with_trailers(data: Bytes, trailers: http::HeaderMap) -> Body {
    Body::new(Prefixed {
        prefix: Some(data),
        trailers: Some(trailers),
        rest: Body::empty(),
    })
}

type BoxBody = Pin<Box<dyn HttpBody<Data = Bytes, Error = BoxError> + Send>>;

/// The bytes read so far, the trailers read, then the rest of the body.
struct Prefixed {
    prefix: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(prefix) = self.prefix.take()
            && !prefix.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        if self.trailers.is_some() {
            // Not exact: a body with a known length gets a `Content-Length`, and an HTTP/1.1
            // body sent by length has no room for trailers.
            hint = SizeHint::new();
        }
        if let Some(prefix) = &self.prefix {
            let len = prefix.len() as u64;
            // Raise the upper bound first: a lower bound above it is refused.
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(len));
            }
            hint.set_lower(hint.lower().saturating_add(len));
        }
        hint
    }
}
