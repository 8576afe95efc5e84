//! Reading bodies with limits, and putting a partly read body back together.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use ana_core::BoxError;
use ana_http::{Rejection, ResponseBody};

/// The data frames read so far. A body of one frame (the usual case) is kept as it came,
/// without a copy.
#[derive(Default)]
struct Read {
    first: Option<Bytes>,
    joined: BytesMut,
}

impl Read {
    fn len(&self) -> usize {
        self.first.as_ref().map_or(self.joined.len(), Bytes::len)
    }

    fn push(&mut self, data: Bytes) {
        if self.first.is_none() && self.joined.is_empty() {
            self.first = Some(data);
        } else {
            if let Some(first) = self.first.take() {
                self.joined.extend_from_slice(&first);
            }
            self.joined.extend_from_slice(&data);
        }
    }

    fn into_bytes(self) -> Bytes {
        self.first.unwrap_or_else(|| self.joined.freeze())
    }
}

/// Reads a request body of at most `limit` bytes.
pub(crate) async fn read_request<B>(body: B, limit: usize) -> Result<Bytes, Rejection>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let unreadable = |error: B::Error| Rejection::UnreadableBody {
        source: std::sync::Arc::new(error.into()),
    };
    let mut body = std::pin::pin!(body);
    let mut read = Read::default();
    while let Some(frame) = body.frame().await {
        // Trailers of a request are not part of its payload.
        let Ok(data) = frame.map_err(unreadable)?.into_data() else {
            continue;
        };
        if read.len() + data.len() > limit {
            return Err(Rejection::PayloadTooLarge { limit });
        }
        read.push(data);
    }
    Ok(read.into_bytes())
}

/// Reads a response body up to `limit` bytes: the whole body when it fits (with its trailers,
/// when it ends with some: gRPC puts its status there), else the body itself, what was read
/// put back in front of the rest. `Err` when the body fails.
pub(crate) async fn read_response<B>(body: B, limit: usize) -> Result<ResponseBody<Body>, BoxError>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // No allocation when it already is an axum body (a router's answer).
    let mut body = Body::new(body);
    let mut read = Read::default();
    while let Some(frame) = body.frame().await {
        let data = match frame?.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers end the body.
                if let Ok(trailers) = frame.into_trailers() {
                    let data = read.into_bytes();
                    return Ok(ResponseBody::WithTrailers { data, trailers });
                }
                continue;
            }
        };
        read.push(data);
        if read.len() > limit {
            return Ok(ResponseBody::Streaming(Body::new(Prefixed {
                prefix: Some(read.into_bytes()),
                trailers: None,
                rest: body,
            })));
        }
    }
    Ok(ResponseBody::Full(read.into_bytes()))
}

/// A body of `data` then `trailers`.
pub(crate) fn with_trailers(data: Bytes, trailers: http::HeaderMap) -> Body {
    Body::new(Prefixed {
        prefix: Some(data),
        trailers: Some(trailers),
        rest: Body::empty(),
    })
}

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
