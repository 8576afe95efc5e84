//! # ana-actix
//!
//! Idempotent HTTP endpoints for [actix-web] 4: a retried request runs the handler once, and
//! every retry with the same `X-Idempotency-Key` gets the first response back, marked
//! `Idempotent-Replayed: true`.
//!
//! [`IdempotencyMiddleware`] is thin glue over [`ana_http`], where the rules live (the same ones
//! `ana-axum` uses, checked by the same conformance suite): the headers, the status table, the
//! configuration, the problem responses. Read that crate's docs for the full contract.
//!
//! ```no_run
//! use actix_web::{App, HttpServer, web};
//! use ana_actix::{Attempt, IdempotencyMiddleware, MemoryRepository, MemorySession};
//!
//! async fn hello(attempt: Attempt<MemorySession>) -> String {
//!     println!("Not persisted!");
//!     format!("Hello {}!", attempt.key())
//! }
//!
//! #[actix_web::main]
//! async fn main() -> std::io::Result<()> {
//!     // Once, outside the factory: every worker shares the store.
//!     let idempotency = IdempotencyMiddleware::new(MemoryRepository::new());
//!     HttpServer::new(move || {
//!         App::new()
//!             .wrap(idempotency.clone())
//!             .route("/hello", web::post().to(hello))
//!     })
//!     .bind(("127.0.0.1", 3000))?
//!     .run()
//!     .await
//! }
//! ```
//!
//! - The store is any [`IdempotencyRepository`]: [`MemoryRepository`], `ana_pg::PgRepository`
//!   (the handler's SQL runs in the transaction that records the response: take
//!   [`Attempt<PgSession>`](Attempt) and use `attempt.session().transaction()`),
//!   `ana_redis::RedisRepository`.
//! - Per-scope or per-resource settings: wrap the scope or resource with
//!   `idempotency.with_config(config)`; the config's `Key`, `Target`, `Payload`,
//!   `ReferenceTime`, `Timeout`, `Expiration` and `Scope` are functions of the request
//!   ([`IdempotencyConfig`]). Middlewares do not stack: a request is handled by the outermost
//!   `IdempotencyMiddleware` it meets, and nested ones pass it through (one attempt per
//!   request, never a second claim of the same key). So give a scope its own settings by
//!   wrapping the scopes, not the whole `App`:
//!
//! ```
//! use std::time::Duration;
//! use actix_web::{App, web};
//! use ana_actix::{IdempotencyConfig, IdempotencyMiddleware, MemoryRepository};
//!
//! let idempotency = IdempotencyMiddleware::new(MemoryRepository::new());
//! let payments = IdempotencyConfig::default()
//!     .with_default_timeout(Duration::from_secs(10))
//!     .with_max_request_body(64 * 1024);
//! let app = App::new()
//!     .service(
//!         web::scope("/payments")
//!             .wrap(idempotency.with_config(payments))
//!             .route("", web::post().to(|| async { "paid" })),
//!     )
//!     .service(
//!         web::scope("")
//!             .wrap(idempotency.clone())
//!             .route("/hello", web::post().to(|| async { "hello" })),
//!     );
//! # let _ = app;
//! ```
//!
//! - Every rejection is an `application/problem+json` response with the typed [`Rejection`]
//!   in its extensions. The one exception: when the request went into the handler and did not
//!   come back (the handler panicked, or the inner service returned an error that could not be
//!   recorded), the problem is returned as an actix error ([`Rejected`]), which actix renders
//!   as the same response.
//!
//! ## How it runs on actix
//!
//! actix handlers are `!Send` futures on a single-threaded runtime per worker. The engine's
//! steps are plain futures the request's own task awaits: [`Engine::begin`] claims the key
//! (or answers a replay or a rejection), the middleware calls the handler itself, then
//! [`Claimed::finish`](ana_http::Claimed::finish) records its response, or
//! [`Claimed::panicked`](ana_http::Claimed::panicked) its panic. Nothing is spawned and
//! nothing leaves the worker's thread.
//!
//! ## Decisions
//!
//! - The request body is read from the actix payload (up to the limit, 413 above it, the
//!   handler not run) before the handler runs: it is fingerprinted. The handler then reads the
//!   same bytes from its payload as usual.
//! - The rules see the request's method, URI, version and headers (`http` 1 types; actix-web
//!   4 uses `http` 0.2), not actix's request extensions.
//! - A response body larger than the stored-response limit streams to the first caller and is
//!   recorded without its body; retries get 500 `response-not-stored`, never a second run.
//! - A handler body that fails while being read becomes a bare 500, recorded Failed.
//! - An error of the inner service is recorded as the response actix renders for it, and
//!   returned to the caller as is.
//!
//! [actix-web]: https://docs.rs/actix-web/4

mod body;
mod convert;
mod extract;
mod middleware;

pub use extract::{Attempt, MissingMiddleware};
pub use middleware::{IdempotencyMiddleware, IdempotencyMiddlewareService, Rejected};

/// The core crate, re-exported so users get a matching version.
pub use ana_core;
pub use ana_core::{IdempotencyRepository, MemoryRepository, MemorySession};
/// The HTTP rules, re-exported so users get a matching version.
pub use ana_http;
pub use ana_http::{Engine, IdempotencyConfig, Rejection, value};

// This crate's README runs as doc tests, so its examples stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
