//! # ana-http
//!
//! The HTTP rules of idempotency, written once for every web framework.
//!
//! `ana-axum` (a tower layer) and `ana-actix` are thin adapters over [`Engine`];
//! this crate holds everything they share: reading the headers, the configuration, the
//! recorded response and its codec, the problem responses, and (with `test-utils`) the HTTP
//! [`conformance`] suite every adapter passes.
//!
//! ## Request headers
//!
//! | header | format | absent | bad |
//! |---|---|---|---|
//! | `X-Idempotency-Key` (or IETF `Idempotency-Key: "…"`) | 1–255 visible ASCII | 400 `missing-key` (or pass-through) | 400 `invalid-header` |
//! | `X-Idempotency-Reference-Time` | RFC 3339, at most 5 min ahead | now | 400 |
//! | `X-Idempotency-Timeout` | Go duration (`10s`, `1h30m`, `500ms`) or humantime (`2 hours`) | 60s | 400, also below the min (1s) or above the max (1h) |
//! | `X-Idempotency-Expiration` | same | 24h | 400, also above the max (7 days) |
//!
//! A repeated key header, or the two key headers with different keys, is a 400.
//!
//! ## Responses
//!
//! | case | status | problem `type` (`https://ana.dev/problems/…`) |
//! |---|---|---|
//! | first run | the handler's response, all its headers; recorded | |
//! | replay | recorded status, allow-listed headers, body, `Idempotent-Replayed: true` | |
//! | missing key | 400 | `missing-key` |
//! | malformed, repeated or conflicting header | 400, `header` member names it | `invalid-header` |
//! | same key, different payload | 422 | `payload-mismatch` |
//! | same key still running | 409 + `Retry-After` (time left before the holder's timeout, at most 5s) | `still-running` |
//! | expired (reference time + expiration passed) | 422; handler not run | `expired` |
//! | request body unreadable (client gone mid-body) | 400 | `unreadable-body` |
//! | request body over the limit | 413; handler not run, nothing recorded | `payload-too-large` |
//! | store unreachable | 503 + `Retry-After`; handler not run | `store-unavailable` |
//! | handler 5xx (or 408, 409, 425, 429) | returned as is; recorded Failed, a retry runs again | |
//! | handler panic | 500; recorded Failed, a retry runs again | `handler-panicked` |
//! | handler outlived its timeout and was taken over | 500; result discarded | `superseded` |
//! | retry of a response too large to store | 500; the handler never runs twice | `response-not-stored` |
//! | record unreadable, or its response does not decrypt (`ana_core::encryption`) | 500; the handler does not run again | `internal` |
//!
//! A gRPC call (`Content-Type: application/grpc`) gets each rejection as a gRPC status
//! ([`Rejection::to_grpc_response`]), its answer is recorded or not by its `grpc-status`
//! ([`default_grpc_recordable`]), and trailers are recorded and replayed.
//!
//! 5xx problem bodies carry a fixed `detail`; the typed [`Rejection`] (with its source) is in
//! the response extensions for logging.
//!
//! ## Keys are scoped
//!
//! A record's identity is `(target, "<scope hash>:<key>")`: the target defaults to
//! `[METHOD]path` and the scope to a hash of the `Authorization` header, so the same key sent
//! by another client, or to another route, is another operation.
//!
//! ## Secrets at rest (feature `encryption`)
//!
//! Wrap the store in `ana_core::encryption::Encrypted` to keep recorded responses encrypted,
//! and give [`IdempotencyConfig::with_fingerprint_key`] a key to make payload fingerprints
//! and scope hashes HMAC-SHA256 under it. Changing that key changes the stored keys: a retry
//! across the change runs again (see the method's docs).

mod config;
#[cfg(feature = "test-utils")]
pub mod conformance;
mod duration;
mod engine;
mod grpc;
mod headers;
mod problem;
mod recorded;

pub use config::{
    EXPIRATION_HEADER, IETF_KEY_HEADER, IdempotencyConfig, KEY_HEADER, NEVER_REPLAYED,
    REFERENCE_TIME_HEADER, RequestValue, TIMEOUT_HEADER, default_payload, default_recordable,
    default_replay_headers, default_scope, default_target, scoped_key, value,
};
#[cfg(feature = "encryption")]
pub use config::{keyed_payload, keyed_scoped_key};
pub use duration::{DurationError, parse_duration};
pub use engine::{
    Attempt, Claimed, Engine, HttpManager, InsideAttempt, Outcome, Plan, Prepared, ResponseBody,
    RouteLabel,
};
pub use grpc::{
    GRPC_ENCODING, GRPC_MESSAGE, GRPC_STATUS, GRPC_STATUS_DETAILS, is_grpc, is_grpc_content_type,
};
#[cfg(feature = "grpc")]
pub use grpc::{GRPC_RETRY_PUSHBACK, code as grpc_code, default_grpc_recordable, grpc_status};
pub use headers::{MAX_KEY_LEN, is_valid_key};
pub use problem::{PROBLEM_BASE, PROBLEM_JSON, PROBLEM_TYPE_HEADER, Rejection};
pub use recorded::{
    IDEMPOTENT_REPLAYED, RecordedResponse, RecordedResponseCodec, RecordedResponseError,
};

#[cfg(test)]
mod proptests;

// This crate's README runs as doc tests, so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
