//! gRPC over the same rules: a call is an HTTP/2 `POST` whose outcome is in `grpc-status`
//! (a trailer, or a header in a trailers-only response), so recording and rejecting read and
//! write that status rather than the HTTP one.

#[cfg(feature = "grpc")]
use http::header::HeaderValue;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName};

/// The gRPC status header (or trailer).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The gRPC status message (percent-encoded).
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// The gRPC rich error details (`google.rpc.Status`, base64).
pub const GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");
/// The gRPC response compression: replayed with the body it describes.
pub const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
/// How long a gRPC client with a retry policy waits before it retries, in milliseconds.
#[cfg(feature = "grpc")]
pub const GRPC_RETRY_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// gRPC status codes, as `grpc-status` carries them.
#[cfg(feature = "grpc")]
pub mod code {
    /// Success.
    pub const OK: i32 = 0;
    /// The caller cancelled.
    pub const CANCELLED: i32 = 1;
    /// Unknown error.
    pub const UNKNOWN: i32 = 2;
    /// The request is invalid whatever the system's state.
    pub const INVALID_ARGUMENT: i32 = 3;
    /// The deadline passed before the operation completed.
    pub const DEADLINE_EXCEEDED: i32 = 4;
    /// An entity was not found.
    pub const NOT_FOUND: i32 = 5;
    /// The entity a client tried to create exists.
    pub const ALREADY_EXISTS: i32 = 6;
    /// The caller may not run the operation.
    pub const PERMISSION_DENIED: i32 = 7;
    /// A resource (a quota, a size limit) is exhausted.
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    /// The system is not in the state the operation needs.
    pub const FAILED_PRECONDITION: i32 = 9;
    /// Aborted by a concurrency conflict; retry at a higher level.
    pub const ABORTED: i32 = 10;
    /// Past the valid range.
    pub const OUT_OF_RANGE: i32 = 11;
    /// Not implemented.
    pub const UNIMPLEMENTED: i32 = 12;
    /// Internal error.
    pub const INTERNAL: i32 = 13;
    /// Unavailable for now; retry with a backoff.
    pub const UNAVAILABLE: i32 = 14;
    /// Unrecoverable data loss.
    pub const DATA_LOSS: i32 = 15;
    /// No valid credentials.
    pub const UNAUTHENTICATED: i32 = 16;
}

/// Whether a request is a gRPC call (`Content-Type: application/grpc`, `application/grpc+proto`
/// and the like). gRPC-Web (`application/grpc-web`) is not: it carries its trailers in the
/// body, and is answered like any HTTP request. Always `false` without the `grpc` feature: a
/// gRPC call then gets problem responses and is recorded by its HTTP status.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    cfg!(feature = "grpc")
        && headers
            .get(CONTENT_TYPE)
            .is_some_and(|value| is_grpc_content_type(value.as_bytes()))
}

/// Whether a `Content-Type` value is gRPC's (see [`is_grpc`]).
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    value
        .get(..16)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"application/grpc"))
        && matches!(value.get(16), None | Some(b'+' | b';'))
}

/// The `grpc-status` of a response: from its trailers, else from its headers (a trailers-only
/// response). `None` when neither has one: the response is not a gRPC answer, or it is one
/// whose trailers have not been read. A status that is not a number reads as `UNKNOWN`.
#[cfg(feature = "grpc")]
pub fn grpc_status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<i32> {
    let value = trailers
        .and_then(|trailers| trailers.get(GRPC_STATUS))
        .or_else(|| headers.get(GRPC_STATUS))?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(code::UNKNOWN),
    )
}

/// The default recordable-status rule for gRPC, the counterpart of
/// [`default_recordable`](super::default_recordable): a call that succeeded, or that failed
/// for a reason a retry will not change (`INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`,
/// `PERMISSION_DENIED`, `FAILED_PRECONDITION`, `OUT_OF_RANGE`, `UNIMPLEMENTED`,
/// `UNAUTHENTICATED`) is recorded; `CANCELLED`, `UNKNOWN`, `DEADLINE_EXCEEDED`,
/// `RESOURCE_EXHAUSTED`, `ABORTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS` and codes gRPC does
/// not define are recorded Failed, so a retry runs again.
#[cfg(feature = "grpc")]
pub fn default_grpc_recordable(status: i32) -> bool {
    matches!(
        status,
        code::OK
            | code::INVALID_ARGUMENT
            | code::NOT_FOUND
            | code::ALREADY_EXISTS
            | code::PERMISSION_DENIED
            | code::FAILED_PRECONDITION
            | code::OUT_OF_RANGE
            | code::UNIMPLEMENTED
            | code::UNAUTHENTICATED
    )
}

/// A `grpc-message` value: the text, percent-encoded as the gRPC protocol asks (every byte
/// outside printable ASCII, and `%`).
#[cfg(feature = "grpc")]
pub(crate) fn encode_message(text: &str) -> HeaderValue {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
    // Only printable ASCII is left, which every header value accepts.
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(""))
}

#[cfg(feature = "grpc")]
const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(all(test, feature = "grpc"))]
mod tests {
    use super::*;

    fn content_type(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn grpc_requests_are_told_by_their_content_type() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(&content_type(grpc)), "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/json",
            "application/grp",
        ] {
            assert!(!is_grpc(&content_type(other)), "{other}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn the_status_is_read_from_trailers_first() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers, None), None);
        headers.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&headers, None), Some(code::NOT_FOUND));
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&headers, Some(&trailers)), Some(code::OK));
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("zero"));
        assert_eq!(grpc_status(&headers, Some(&trailers)), Some(code::UNKNOWN));
    }

    #[test]
    fn recorded_codes_are_the_final_ones() {
        let recorded: Vec<i32> = (-1..=20).filter(|c| default_grpc_recordable(*c)).collect();
        assert_eq!(recorded, [0, 3, 5, 6, 7, 9, 11, 12, 16]);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("Key k1 reused."), "Key k1 reused.");
        assert_eq!(encode_message("100% déjà\n"), "100%25 d%C3%A9j%C3%A0%0A");
    }
}
