//! Reading bodies with limits, and putting a partly read response body back together.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::Payload;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use ana_core::BoxError;
use ana_http::Rejection;

/// Reads a request payload of at most `limit` bytes: 413 above it (nothing more is read),
/// 400 when the payload fails (the client went away mid-body).
pub(crate) async fn read_payload(payload: &mut Payload, limit: usize) -> Result<Bytes, Rejection> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|error| {
            let source: BoxError = Box::new(error);
            Rejection::UnreadableBody {
                source: Arc::new(source),
            }
        })?;
        if body.len().saturating_add(chunk.len()) > limit {
            return Err(Rejection::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A handler's response body after [`read_response`].
pub(crate) enum ReadBody<B> {
    /// The whole body, at most the limit.
    Full(Bytes),
    /// Over the limit: the body itself, what was read put back in front.
    TooLarge(Prefixed<B>),
    /// The body failed while being read.
    Failed,
}

/// Reads a response body up to `limit` bytes. A body that says it is larger is not read at
/// all; a body already in memory is taken as is.
pub(crate) async fn read_response<B: MessageBody>(body: B, limit: usize) -> ReadBody<B> {
    if let BodySize::Sized(size) = body.size()
        && size > limit as u64
    {
        return ReadBody::TooLarge(Prefixed::new(Bytes::new(), Some(Box::pin(body))));
    }
    let mut body = match body.try_into_bytes() {
        Ok(bytes) if bytes.len() > limit => {
            return ReadBody::TooLarge(Prefixed::new(bytes, None));
        }
        Ok(bytes) => return ReadBody::Full(bytes),
        Err(body) => Box::pin(body),
    };
    let mut read = BytesMut::new();
    loop {
        match std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
            None => return ReadBody::Full(read.freeze()),
            Some(Err(_)) => return ReadBody::Failed,
            Some(Ok(chunk)) => {
                read.extend_from_slice(&chunk);
                if read.len() > limit {
                    return ReadBody::TooLarge(Prefixed::new(read.freeze(), Some(body)));
                }
            }
        }
    }
}

/// The bytes read so far, then the rest of the body.
pub(crate) struct Prefixed<B> {
    prefix: Bytes,
    rest: Option<Pin<Box<B>>>,
}

impl<B> Prefixed<B> {
    fn new(prefix: Bytes, rest: Option<Pin<Box<B>>>) -> Self {
        Self { prefix, rest }
    }
}

impl<B: MessageBody> MessageBody for Prefixed<B> {
    type Error = Box<dyn StdError>;

    fn size(&self) -> BodySize {
        let prefix = self.prefix.len() as u64;
        match self.rest.as_ref().map(|rest| rest.size()) {
            None | Some(BodySize::None) => BodySize::Sized(prefix),
            Some(BodySize::Sized(rest)) => BodySize::Sized(rest.saturating_add(prefix)),
            Some(BodySize::Stream) => BodySize::Stream,
        }
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = &mut *self;
        if !this.prefix.is_empty() {
            return Poll::Ready(Some(Ok(std::mem::take(&mut this.prefix))));
        }
        match this.rest.as_mut() {
            Some(rest) => rest.as_mut().poll_next(cx).map_err(Into::into),
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use actix_web::body::{self, BodyStream};
    use futures_util::stream;

    fn chunks(
        parts: &[&'static str],
    ) -> BodyStream<impl futures_util::Stream<Item = Result<Bytes, std::io::Error>>> {
        let items: Vec<Result<Bytes, std::io::Error>> = parts
            .iter()
            .map(|part| Ok(Bytes::from_static(part.as_bytes())))
            .collect();
        BodyStream::new(stream::iter(items))
    }

    #[actix_web::test]
    async fn a_stream_within_the_limit_is_read_whole() {
        match read_response(chunks(&["ab", "cd"]), 4).await {
            ReadBody::Full(bytes) => assert_eq!(bytes, "abcd"),
            _ => panic!("expected the whole body"),
        }
    }

    #[actix_web::test]
    async fn a_stream_over_the_limit_is_put_back_together() {
        let ReadBody::TooLarge(prefixed) = read_response(chunks(&["ab", "cd", "ef"]), 3).await
        else {
            panic!("expected a body over the limit");
        };
        assert_eq!(body::to_bytes(prefixed).await.unwrap(), "abcdef");
    }

    #[actix_web::test]
    async fn a_sized_body_over_the_limit_is_not_read() {
        let ReadBody::TooLarge(prefixed) = read_response(String::from("abcdef"), 3).await else {
            panic!("expected a body over the limit");
        };
        assert_eq!(prefixed.size(), BodySize::Sized(6));
        assert_eq!(body::to_bytes(prefixed).await.unwrap(), "abcdef");
    }

    #[actix_web::test]
    async fn a_failing_stream_is_reported() {
        let items: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"ab")),
            Err(std::io::Error::other("gone")),
        ];
        let failing = BodyStream::new(stream::iter(items));
        assert!(matches!(read_response(failing, 10).await, ReadBody::Failed));
    }

    #[actix_web::test]
    async fn a_payload_over_the_limit_is_413() {
        let mut payload = Payload::from(Bytes::from_static(b"12345"));
        let error = read_payload(&mut payload, 4).await.unwrap_err();
        assert!(matches!(error, Rejection::PayloadTooLarge { limit: 4 }));
        let mut payload = Payload::from(Bytes::from_static(b"1234"));
        assert_eq!(read_payload(&mut payload, 4).await.unwrap(), "1234");
    }
}
