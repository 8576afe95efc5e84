//! # Example 05: FTGO's create-order saga, exactly once over NATS JetStream
//!
//! Run it with `make example-05` (or `DATABASE_URL=postgres://… cargo run -p
//! example-05-orders`). It needs Postgres (`DATABASE_URL`) and NATS with JetStream
//! (`NATS_URL`, default `nats://127.0.0.1:4222`), listens on 127.0.0.1:3000 (`PORT`), and
//! opens two accounts: customer 1 with a credit limit of 100.00, customer 2 with 5.00.
//!
//! ```text
//! # watch the saga's messages (another terminal)
//! cargo run -q -p example-05-orders -- watch
//! # place an order: 201, pending; its orders.created goes out through the outbox
//! curl -s -X POST localhost:3000/orders -H 'X-Idempotency-Key: order-1' \
//!   -H 'Content-Type: application/json' -d '{"customer_id":1,"total":2500}'
//! # the same request again: replayed (idempotent-replayed: true), no second order
//! curl -si -X POST localhost:3000/orders -H 'X-Idempotency-Key: order-1' \
//!   -H 'Content-Type: application/json' -d '{"customer_id":1,"total":2500}'
//! # a moment later: approved (credit reserved); over the limit: rejected
//! curl -s localhost:3000/orders/1
//! ```

use std::time::Duration;

use ana_core::BoxError;
use ana_nats::async_nats;
use example_05_orders::{Names, Saga, log_settlements};
use futures_util::StreamExt;
use tracing_subscriber::EnvFilter;

/// The accounts the example opens: `(customer, credit limit in cents)`.
const ACCOUNTS: &[(i64, i64)] = &[(1, 10_000), (2, 500)];

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), BoxError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()?;
    let nats_url = std::env::var("NATS_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&nats_url)
        .await
        .map_err(|error| format!("NATS at {nats_url}: {error}"))?;
    if std::env::args().nth(1).as_deref() == Some("watch") {
        return watch(client, &Names::default()).await;
    }
    let database_url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .ok_or("DATABASE_URL is not set: example 05 needs Postgres (postgres://…)")?;
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port} is not a port"))?,
        Err(_) => 3000,
    };
    let pool = ana_pg::sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&database_url)
        .await?;
    let saga = Saga::start(pool, client, Names::default(), ACCOUNTS).await?;

    let relay = saga.spawn_relay();
    let ack_wait = Duration::from_secs(30);
    let credit = saga
        .pull_consumer("credit", "orders.created", ack_wait)
        .await?;
    let credit = saga.spawn_credit(saga.consumer(credit).on_event(log_settlements("credit")));
    let state = saga
        .pull_consumer("order-state", "credit.*", ack_wait)
        .await?;
    let state = saga.spawn_order_state(
        saga.consumer(state)
            .on_event(log_settlements("order-state")),
    );

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("Listening on http://{}", listener.local_addr()?);
    axum::serve(listener, saga.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    credit.shutdown().await?;
    state.shutdown().await?;
    relay.shutdown().await?;
    Ok(())
}

/// Prints every message of the saga's subjects: subject, `Nats-Msg-Id` and body.
async fn watch(client: async_nats::Client, names: &Names) -> Result<(), BoxError> {
    let mut messages = client.subscribe(names.subject(">")).await?;
    println!("watching {}", names.subject(">"));
    while let Some(message) = messages.next().await {
        let id = message
            .headers
            .as_ref()
            .and_then(|headers| headers.get(ana_nats::MSG_ID_HEADER))
            .map_or("-", |id| id.as_str());
        let body = String::from_utf8_lossy(&message.payload);
        println!("{} [{id}] {body}", message.subject);
    }
    Ok(())
}
