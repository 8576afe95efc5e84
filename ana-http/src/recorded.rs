//! The stored response: [`RecordedResponse`] and its binary [`RecordedResponseCodec`].

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue, TRAILER};
use http::{Response, StatusCode};

use ana_core::BoxError;
use ana_core::Codec;

/// Header added to every replayed response.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// A handler's response as stored for replay: status, allow-listed headers, body and
/// allow-listed trailers (gRPC sends its status in trailers).
///
/// A response whose body was larger than the configured limit is stored without its body
/// ([`is_body_stored`](Self::is_body_stored) is false): it still marks the operation as done,
/// so the handler never runs twice, and retries get
/// [`Rejection::ResponseNotStored`](super::Rejection::ResponseNotStored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    body_stored: bool,
    trailers: Option<HeaderMap>,
}

impl RecordedResponse {
    /// A response to store, keeping only the `allowed` headers.
    pub fn new(
        status: StatusCode,
        headers: &HeaderMap,
        allowed: &[HeaderName],
        body: Bytes,
    ) -> Self {
        Self {
            status,
            headers: filter(headers, allowed),
            body,
            body_stored: true,
            trailers: None,
        }
    }

    /// A response to store whose `headers` are all to replay: kept as they are, no copy.
    pub(crate) fn with_allowed_headers(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    ) -> Self {
        Self {
            status,
            headers,
            body,
            body_stored: true,
            trailers: None,
        }
    }

    /// The recorded headers, by value.
    pub(crate) fn into_headers(self) -> HeaderMap {
        self.headers
    }

    /// The same response with trailers, keeping only the `allowed` ones.
    #[must_use]
    pub fn with_trailers(mut self, trailers: &HeaderMap, allowed: &[HeaderName]) -> Self {
        self.trailers = Some(filter(trailers, allowed));
        self
    }

    /// The record of a response whose body was too large to store.
    pub fn without_body(status: StatusCode, headers: &HeaderMap, allowed: &[HeaderName]) -> Self {
        Self {
            status,
            headers: filter(headers, allowed),
            body: Bytes::new(),
            body_stored: false,
            trailers: None,
        }
    }

    /// The recorded status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The recorded headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The recorded body (empty when it was not stored).
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether the body was stored (false when it was over the limit).
    pub fn is_body_stored(&self) -> bool {
        self.body_stored
    }

    /// The recorded trailers, when the response ended with trailers.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// The replay: the recorded status, headers and body, `Idempotent-Replayed: true`, and a
    /// recomputed `Content-Length` unless the response has trailers (they follow the body in
    /// a chunked or HTTP/2 stream, announced in `Trailer` as HTTP/1.1 requires); then the
    /// trailers to send after the body.
    pub fn into_replay(self) -> (Response<Bytes>, Option<HeaderMap>) {
        let Self {
            status,
            mut headers,
            body,
            trailers,
            ..
        } = self;
        match &trailers {
            None => {
                headers.insert(CONTENT_LENGTH, decimal(body.len()));
            }
            // HTTP/1.1 sends trailers only when the response announces them.
            Some(trailers) if !trailers.is_empty() => {
                let mut names = String::new();
                for name in trailers.keys() {
                    if !names.is_empty() {
                        names.push_str(", ");
                    }
                    names.push_str(name.as_str());
                }
                if let Ok(names) = HeaderValue::try_from(names) {
                    headers.insert(TRAILER, names);
                }
            }
            Some(_) => {}
        }
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        (response, trailers)
    }
}

/// `n` as a header value, in one allocation (`HeaderValue::from(n)` takes two).
pub(crate) fn decimal(n: usize) -> HeaderValue {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&digits[start..]).unwrap_or_else(|_| HeaderValue::from(n))
}

fn filter(headers: &HeaderMap, allowed: &[HeaderName]) -> HeaderMap {
    let mut kept = HeaderMap::new();
    // Walk the shorter list: a response has a handful of headers, the allow-list a dozen
    // or more names, and a lookup by name costs a hash.
    if headers.len() <= allowed.len() {
        for (name, value) in headers {
            if allowed.contains(name) {
                kept.append(name.clone(), value.clone());
            }
        }
    } else {
        for name in allowed {
            for value in headers.get_all(name) {
                kept.append(name.clone(), value.clone());
            }
        }
    }
    kept
}

/// The compact binary form of a [`RecordedResponse`] (big-endian):
/// `version, flags, status u16, headers, body len u32, body`, then, in version 2 only,
/// `trailers`; a header list is `count u16, (name len u16, name, value len u32, value)*`.
/// Flag bit 0: the body was not stored. A response without trailers is written as version 1,
/// which every reader knows; one with trailers as version 2, which a reader that does not know
/// trailers refuses rather than replays incomplete.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordedResponseCodec;

/// A stored response could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordedResponseError {
    /// The bytes are not a recorded response of a known version.
    #[error("unknown recorded-response format version {0}")]
    UnknownVersion(u8),
    /// The bytes end early or carry trailing data.
    #[error("truncated or oversized recorded response")]
    Malformed,
    /// A part that is too large to encode (a header over 4 GiB, more than 65535 headers).
    #[error("the response has a part too large to record")]
    TooLarge,
    /// A stored status, header name or value is not valid.
    #[error("invalid {0} in recorded response")]
    Invalid(&'static str),
}

const VERSION: u8 = 1;
const VERSION_WITH_TRAILERS: u8 = 2;
const BODY_NOT_STORED: u8 = 1;

impl Codec<RecordedResponse> for RecordedResponseCodec {
    fn encode(&self, value: &RecordedResponse) -> Result<Vec<u8>, BoxError> {
        // The exact size: one allocation.
        let list = |headers: &HeaderMap| {
            2 + headers
                .iter()
                .map(|(name, value)| 6 + name.as_str().len() + value.len())
                .sum::<usize>()
        };
        let size =
            8 + list(&value.headers) + value.body.len() + value.trailers.as_ref().map_or(0, list);
        let mut out = Vec::with_capacity(size);
        out.push(if value.trailers.is_some() {
            VERSION_WITH_TRAILERS
        } else {
            VERSION
        });
        out.push(if value.body_stored {
            0
        } else {
            BODY_NOT_STORED
        });
        out.extend_from_slice(&value.status.as_u16().to_be_bytes());
        put_headers(&mut out, &value.headers)?;
        put_bytes(&mut out, &value.body)?;
        if let Some(trailers) = &value.trailers {
            put_headers(&mut out, trailers)?;
        }
        debug_assert_eq!(out.len(), size);
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<RecordedResponse, BoxError> {
        Ok(decode(bytes)?)
    }
}

fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) -> Result<(), RecordedResponseError> {
    let count = u16::try_from(headers.len()).map_err(|_| RecordedResponseError::TooLarge)?;
    out.extend_from_slice(&count.to_be_bytes());
    for (name, value) in headers {
        let name_len =
            u16::try_from(name.as_str().len()).map_err(|_| RecordedResponseError::TooLarge)?;
        out.extend_from_slice(&name_len.to_be_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
        put_bytes(out, value.as_bytes())?;
    }
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), RecordedResponseError> {
    let len = u32::try_from(bytes.len()).map_err(|_| RecordedResponseError::TooLarge)?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordedResponseError> {
        if self.0.len() < n {
            return Err(RecordedResponseError::Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, RecordedResponseError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordedResponseError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<usize, RecordedResponseError> {
        let bytes = self.take(4)?;
        usize::try_from(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            .map_err(|_| RecordedResponseError::Malformed)
    }

    fn headers(&mut self) -> Result<HeaderMap, RecordedResponseError> {
        let count = self.u16()?;
        // No capacity from the input: a forged count must not allocate, nor panic the map.
        let mut headers = HeaderMap::new();
        for _ in 0..count {
            let name_len = usize::from(self.u16()?);
            let name = HeaderName::from_bytes(self.take(name_len)?)
                .map_err(|_| RecordedResponseError::Invalid("header name"))?;
            let value_len = self.u32()?;
            let value = HeaderValue::from_bytes(self.take(value_len)?)
                .map_err(|_| RecordedResponseError::Invalid("header value"))?;
            headers
                .try_append(name, value)
                .map_err(|_| RecordedResponseError::Malformed)?;
        }
        Ok(headers)
    }
}

fn decode(bytes: &[u8]) -> Result<RecordedResponse, RecordedResponseError> {
    let mut reader = Reader(bytes);
    let version = reader.u8()?;
    if version != VERSION && version != VERSION_WITH_TRAILERS {
        return Err(RecordedResponseError::UnknownVersion(version));
    }
    let flags = reader.u8()?;
    let status = StatusCode::from_u16(reader.u16()?)
        .map_err(|_| RecordedResponseError::Invalid("status"))?;
    let headers = reader.headers()?;
    let body_len = reader.u32()?;
    let body = Bytes::copy_from_slice(reader.take(body_len)?);
    let trailers = if version == VERSION_WITH_TRAILERS {
        Some(reader.headers()?)
    } else {
        None
    };
    if !reader.0.is_empty() {
        return Err(RecordedResponseError::Malformed);
    }
    Ok(RecordedResponse {
        status,
        headers,
        body,
        body_stored: flags & BODY_NOT_STORED == 0,
        trailers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_TYPE, LOCATION, SET_COOKIE};

    fn sample() -> RecordedResponse {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(SET_COOKIE, HeaderValue::from_static("session=secret"));
        headers.append(LOCATION, HeaderValue::from_static("/a"));
        RecordedResponse::new(
            StatusCode::CREATED,
            &headers,
            &[CONTENT_TYPE, LOCATION],
            Bytes::from_static(b"{\"ok\":true}"),
        )
    }

    #[test]
    fn round_trips_and_drops_unlisted_headers() {
        let recorded = sample();
        assert!(recorded.headers().get(SET_COOKIE).is_none());
        let bytes = RecordedResponseCodec.encode(&recorded).unwrap();
        assert_eq!(RecordedResponseCodec.decode(&bytes).unwrap(), recorded);
        let unstored = RecordedResponse::without_body(StatusCode::OK, &HeaderMap::new(), &[]);
        let bytes = RecordedResponseCodec.encode(&unstored).unwrap();
        assert!(
            !RecordedResponseCodec
                .decode(&bytes)
                .unwrap()
                .is_body_stored()
        );
    }

    fn grpc_sample() -> RecordedResponse {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("x-secret", HeaderValue::from_static("token"));
        let allowed = [CONTENT_TYPE, HeaderName::from_static("grpc-status")];
        RecordedResponse::new(
            StatusCode::OK,
            &headers,
            &allowed,
            Bytes::from_static(b"\0\0\0\0\x02\x08\x01"),
        )
        .with_trailers(&trailers, &allowed)
    }

    #[test]
    fn trailers_round_trip_in_version_2_and_only_there() {
        let recorded = grpc_sample();
        let trailers = recorded.trailers().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert!(trailers.get("x-secret").is_none());
        let bytes = RecordedResponseCodec.encode(&recorded).unwrap();
        assert_eq!(bytes[0], VERSION_WITH_TRAILERS);
        assert_eq!(RecordedResponseCodec.decode(&bytes).unwrap(), recorded);
        // Without trailers the bytes are version 1, which readers without trailers know.
        assert_eq!(RecordedResponseCodec.encode(&sample()).unwrap()[0], VERSION);
        // Empty trailers are still trailers.
        let empty = sample().with_trailers(&HeaderMap::new(), &[]);
        let bytes = RecordedResponseCodec.encode(&empty).unwrap();
        assert_eq!(RecordedResponseCodec.decode(&bytes).unwrap(), empty);
    }

    #[test]
    fn a_replay_with_trailers_has_no_content_length() {
        let (replay, trailers) = grpc_sample().into_replay();
        assert!(replay.headers().get(CONTENT_LENGTH).is_none());
        assert_eq!(replay.headers()[TRAILER], "grpc-status");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert_eq!(replay.headers()[IDEMPOTENT_REPLAYED], "true");
    }

    #[test]
    fn every_truncation_is_an_error() {
        for sample in [sample(), grpc_sample()] {
            let bytes = RecordedResponseCodec.encode(&sample).unwrap();
            for len in 0..bytes.len() {
                assert!(
                    RecordedResponseCodec.decode(&bytes[..len]).is_err(),
                    "{len}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(RecordedResponseCodec.decode(&longer).is_err());
        }
    }

    #[test]
    fn a_forged_header_count_is_an_error_not_a_panic() {
        // A count of 65535 headers with no bytes behind it: nothing is reserved for it.
        let forged = [VERSION, 0, 0, 200, 0xff, 0xff];
        assert!(RecordedResponseCodec.decode(&forged).is_err());
    }

    #[test]
    fn decimals_are_written_in_full() {
        for n in [0, 7, 10, 211, 1 << 20, usize::MAX] {
            assert_eq!(decimal(n), n.to_string().as_str());
        }
    }

    #[test]
    fn replay_recomputes_content_length_and_marks_itself() {
        let (replay, trailers) = sample().into_replay();
        assert!(trailers.is_none());
        assert_eq!(replay.headers()[CONTENT_LENGTH], "11");
        assert_eq!(replay.headers()[IDEMPOTENT_REPLAYED], "true");
        assert_eq!(replay.status(), StatusCode::CREATED);
    }
}
