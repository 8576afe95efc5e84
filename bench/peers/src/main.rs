//! The benchmark's server on other idempotency crates, for `make bench-peers`.
//!
//! ```text
//! ana-bench-peers idempotent-memory   # `idempotent`'s tower layer on its memory store
//! ana-bench-peers idempotent-redis    # the same layer on its Valkey/Redis store (REDIS_URL)
//! ana-bench-peers axum-idempotent     # `axum-idempotent` on ruts' Moka session store
//! ```
//!
//! Each serves the handler of ana's benchmark servers (`POST /bench`, 200 bytes of JSON) on a
//! free loopback port and prints `listening on 127.0.0.1:<port>`, as `ana-bench serve` does, so
//! that `ana-bench peers` drives both with the same wrk scripts. Each layer is set up as its
//! crate's README does, reading the key from the `X-Idempotency-Key` header the scripts send.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::http::{HeaderName, header};
use axum::routing::post;
use bytes::Bytes;

/// The benchmark's response, shared with ana's benchmark servers.
const RESPONSE: &str = include_str!("../../src/response.json").trim_ascii_end();

/// The header the wrk scripts send the key in.
const KEY_HEADER: &str = "x-idempotency-key";

/// The prefix of the Redis keys the `idempotent` store writes (no `:` allowed).
const REDIS_PREFIX: &str = "ana-bench-peers";

async fn handler(_body: Bytes) -> impl axum::response::IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], RESPONSE)
}

fn main() -> Result<()> {
    let variant = std::env::args().nth(1).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let app = match variant.as_str() {
            "idempotent-memory" => idempotent_memory()?,
            "idempotent-redis" => idempotent_redis().await?,
            "axum-idempotent" => axum_idempotent(),
            other => bail!(
                "unknown peer {other:?} (expected idempotent-memory, idempotent-redis or axum-idempotent)"
            ),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on 127.0.0.1:{}", listener.local_addr()?.port());
        std::io::stdout().flush()?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}

fn routes() -> Router {
    Router::new().route("/bench", post(handler))
}

/// `idempotent`'s layer on its memory store, with its default leases (60 s, a day).
fn idempotent_memory() -> Result<Router> {
    let store = idempotent::memory::MemoryStore::builder().try_build()?;
    let layer = idempotent::middleware::IdempotencyLayer::new(store)
        .header(HeaderName::from_static(KEY_HEADER));
    Ok(routes().layer(layer))
}

/// `idempotent`'s layer on its Valkey/Redis store.
async fn idempotent_redis() -> Result<Router> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let store = idempotent::valkey::ValkeyStore::with_url(url)
        .prefix(REDIS_PREFIX)
        .try_build()
        .await
        .context("connecting to Redis (REDIS_URL)")?;
    let layer = idempotent::middleware::IdempotencyLayer::new(store)
        .header(HeaderName::from_static(KEY_HEADER));
    Ok(routes().layer(layer))
}

/// `axum-idempotent` in its direct key mode, inside ruts' `SessionLayer` on a Moka store and
/// tower-cookies' `CookieManagerLayer`, as its README orders them. It caches a response only
/// for a request that carries a session: `POST /session` opens one (outside the idempotency
/// layer) and answers with its cookie, which the load then sends.
fn axum_idempotent() -> Router {
    use axum_idempotent::{IdempotentLayer, IdempotentOptions};
    use ruts::store::moka::MokaStore;
    use ruts::{CookieOptions, Session, SessionLayer};

    async fn open_session(session: Session<MokaStore>) -> Result<(), axum::http::StatusCode> {
        let ttl = ruts::store::Ttl::new(3600)
            .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
        session
            .set("client", &1_u32, ttl, None)
            .await
            .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    let store = Arc::new(MokaStore::builder().build());
    let options = IdempotentOptions::default()
        .use_idempotency_key_header(Some(KEY_HEADER), true)
        .expire_after(60 * 5);
    routes()
        .layer(IdempotentLayer::<MokaStore>::new(options))
        .route("/session", post(open_session))
        .layer(SessionLayer::new(store).with_cookie_options(CookieOptions::build().name("session")))
        .layer(tower_cookies::CookieManagerLayer::new())
}
