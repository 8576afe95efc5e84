//! # ana-axum
//!
//! Idempotent HTTP endpoints for [axum], hyper and any tower service: a retried request runs
//! the handler once, and every retry with the same `X-Idempotency-Key` gets the first response
//! back, marked `Idempotent-Replayed: true`.
//!
//! [`IdempotencyLayer`] is thin glue over [`ana_http`], where the rules live (the same
//! ones `ana-actix` uses): the headers, the status table, the configuration, the problem
//! responses. Read that crate's docs for the full contract.
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use ana_axum::{Attempt, IdempotencyLayer};
//! use ana_core::{MemoryRepository, MemorySession};
//!
//! async fn hello(attempt: Attempt<MemorySession>) -> String {
//!     println!("Not persisted!");
//!     format!("Hello {}!", attempt.key())
//! }
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! let app = Router::new()
//!     .route("/hello", post(hello))
//!     .layer(IdempotencyLayer::new(MemoryRepository::new()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! - The store is any [`IdempotencyRepository`]: [`MemoryRepository`], `ana_pg::PgRepository`
//!   (the handler's SQL runs in the transaction that records the response: take
//!   [`Attempt<PgSession>`](Attempt) and use `attempt.session().transaction()`),
//!   `ana_redis::RedisRepository`.
//! - Per-route settings: `.route("/payments", post(pay).layer(layer.with_config(config)))`;
//!   the config's `Key`, `Target`, `Payload`, `ReferenceTime`, `Timeout`, `Expiration` and
//!   `Scope` are functions of the request ([`IdempotencyConfig`]).
//! - The service is infallible towards its callers: every rejection is a response, with the
//!   typed [`Rejection`] in the response extensions.
//!
//! ## Decisions
//!
//! - The request body is read (up to the limit) before the handler runs: it is fingerprinted.
//! - A response body larger than the stored-response limit streams to the first caller and is
//!   recorded without its body; retries get 500 `response-not-stored`, never a second run.
//! - Response trailers are recorded and replayed after the body (allow-listed like headers:
//!   gRPC's `grpc-status`, `grpc-message`, `grpc-status-details-bin` by default), and a
//!   gRPC answer is recorded or not by its `grpc-status` (see below).
//! - A handler body that fails while being read becomes a bare 500, recorded Failed.
//! - An error of the inner service is returned to the caller as is, and recorded Failed.
//!
//! ## gRPC (tonic)
//!
//! Put the layer in front of a tonic server with `Server::builder().layer(layer)`, with
//! [`with_key_required(false)`](IdempotencyConfig::with_key_required) so that calls without a
//! key (health checks, reflection, reads) pass through untouched; clients send the key as
//! `x-idempotency-key` metadata. A call with a key is buffered (its request read whole, its
//! answer held until its trailers or the stored-response limit): give keys to unary and
//! server-streaming calls that change state. For a gRPC call (`Content-Type:
//! application/grpc`):
//! - the answer is recorded as done when its `grpc-status` is `OK` or a final error
//!   ([`default_grpc_recordable`](ana_http::default_grpc_recordable)), and replayed with
//!   its message and trailers;
//! - rejections are gRPC statuses ([`Rejection::grpc_code`]): `INVALID_ARGUMENT` for a missing
//!   key or a reused one, `ABORTED` (with `grpc-retry-pushback-ms`) while the first call runs,
//!   `UNAVAILABLE` when the store is down;
//! - a streamed answer over the stored-response limit reaches its caller whole and is recorded
//!   without its body: retries get `INTERNAL` `response-not-stored`, never a second run.

mod body;
mod extract;
mod layer;

pub use extract::{Attempt, MissingLayer};
pub use layer::{Idempotency, IdempotencyLayer, ResponseFuture};

/// The core crate, re-exported so users get a matching version.
pub use ana_core;
pub use ana_core::{IdempotencyRepository, MemoryRepository, MemorySession};
/// The HTTP rules, re-exported so users get a matching version.
pub use ana_http;
pub use ana_http::{Engine, IdempotencyConfig, Rejection, value};

// The workspace README's Rust blocks run as doc tests here, where axum and tokio are at hand,
// so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

// This crate's README runs as doc tests, so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
