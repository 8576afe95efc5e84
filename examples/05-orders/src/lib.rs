//! # Example 05: a slice of FTGO's create-order saga, exactly once over NATS JetStream
//!
//! Three steps, each one idempotent, each one's messages sent through the transactional
//! outbox of `ana-pg` and relayed to JetStream by `ana-nats`:
//!
//! ```text
//!  POST /orders ──(ana-axum, X-Idempotency-Key)──▶ INSERT order (pending) + outbox orders.created
//!  orders.created ──(IdempotentConsumer "credit")──▶ reserve credit in accounts
//!                      + outbox credit.reserved, or credit.rejected when over the limit
//!  credit.* ──(IdempotentConsumer "order-state")──▶ order approved or rejected
//! ```
//!
//! Every step commits its SQL, its outgoing messages and its idempotency record in one
//! transaction, and a message is acked only after that commit: a retried request, a
//! redelivered or republished message has its effect once.

use std::time::Duration;

use ana_axum::{Attempt, IdempotencyLayer};
use ana_core::{BoxError, Fingerprint, Manager};
use ana_nats::async_nats::{self, jetstream};
use ana_nats::{ConsumerEvent, ConsumerHandle, IdempotentConsumer, OutboxRelay, RelayHandle};
use ana_pg::outbox::Outbox;
use ana_pg::{PgRepository, PgSession, sqlx};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::AssertSqlSafe;

/// Where the saga lives: its Postgres schema (tables, idempotency records and outbox), its
/// JetStream stream and the prefix of its subjects.
#[derive(Clone, Debug)]
pub struct Names {
    /// The Postgres schema (`example_05`).
    pub schema: String,
    /// The JetStream stream (`FTGO`).
    pub stream: String,
    /// The subjects' prefix (`ftgo`): `ftgo.orders.created`, `ftgo.credit.reserved`, …
    pub prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            schema: "example_05".into(),
            stream: "FTGO".into(),
            prefix: "ftgo".into(),
        }
    }
}

impl Names {
    /// `<prefix>.<name>`.
    pub fn subject(&self, name: &str) -> String {
        format!("{}.{name}", self.prefix)
    }

    /// `sql` with `{s}` standing for the quoted schema.
    fn sql(&self, sql: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(sql.replace("{s}", &format!("\"{}\"", self.schema)))
    }
}

/// The body of `POST /orders` and of `orders.created`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct NewOrder {
    /// Who orders.
    pub customer_id: i64,
    /// The order's total, in cents.
    pub total: i64,
}

/// An order and where it stands: `pending`, `approved` or `rejected`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Order {
    /// Its id.
    pub id: i64,
    /// Who ordered.
    pub customer_id: i64,
    /// Its total, in cents.
    pub total: i64,
    /// `pending`, `approved` or `rejected`.
    pub state: String,
}

/// `orders.created`.
#[derive(Debug, Deserialize, Serialize)]
pub struct OrderCreated {
    /// The order.
    pub order_id: i64,
    /// Who ordered.
    pub customer_id: i64,
    /// Its total, in cents.
    pub total: i64,
}

/// `credit.reserved` and `credit.rejected`.
#[derive(Debug, Deserialize, Serialize)]
pub struct CreditDecided {
    /// The order.
    pub order_id: i64,
}

/// The saga's parts: the store, the outbox, JetStream.
#[derive(Clone, Debug)]
pub struct Saga {
    /// Where it lives.
    pub names: Names,
    /// The idempotency store (records in `names.schema`).
    pub repository: PgRepository,
    /// The outbox (in `names.schema`).
    pub outbox: Outbox,
    /// JetStream.
    pub jetstream: jetstream::Context,
}

impl Saga {
    /// Migrates the store and the outbox, creates the saga's tables and its stream, and
    /// opens the accounts in `accounts` (`(customer, credit limit in cents)`) that are not
    /// there yet.
    ///
    /// # Errors
    ///
    /// The database's or JetStream's.
    pub async fn start(
        pool: sqlx::PgPool,
        client: async_nats::Client,
        names: Names,
        accounts: &[(i64, i64)],
    ) -> Result<Self, BoxError> {
        let repository = PgRepository::with_schema(pool.clone(), &names.schema)?;
        repository.migrate().await?;
        let mut tx = pool.begin().await?;
        // Several servers may start at once: one creates the tables at a time.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(format!("example-05 {}", names.schema))
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(names.sql(
            "CREATE TABLE IF NOT EXISTS {s}.orders (
                id bigserial PRIMARY KEY,
                customer_id bigint NOT NULL,
                total bigint NOT NULL CHECK (total > 0),
                state text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'approved', 'rejected')));
             CREATE TABLE IF NOT EXISTS {s}.accounts (
                customer_id bigint PRIMARY KEY,
                credit_limit bigint NOT NULL,
                reserved bigint NOT NULL DEFAULT 0);",
        ))
        .execute(&mut *tx)
        .await?;
        for (customer, limit) in accounts {
            sqlx::query(names.sql(
                "INSERT INTO {s}.accounts (customer_id, credit_limit) VALUES ($1, $2)
                 ON CONFLICT (customer_id) DO NOTHING",
            ))
            .bind(customer)
            .bind(limit)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        let jetstream = jetstream::new(client);
        jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: names.stream.clone(),
                subjects: vec![format!("{}.>", names.prefix)],
                ..Default::default()
            })
            .await?;
        Ok(Self {
            outbox: Outbox::new(&repository),
            names,
            repository,
            jetstream,
        })
    }

    /// The HTTP API: `POST /orders` (idempotent: send `X-Idempotency-Key`) and
    /// `GET /orders/{id}`.
    pub fn router(&self) -> Router {
        let layer = IdempotencyLayer::new(self.repository.clone());
        let create = Router::new()
            .route("/orders", post(create_order))
            .layer(layer);
        Router::new()
            .route("/orders/{id}", get(get_order))
            .with_state(self.clone())
            .merge(create.with_state(self.clone()))
    }

    /// Relays the outbox to JetStream.
    pub fn spawn_relay(&self) -> RelayHandle {
        OutboxRelay::new(self.outbox.clone(), self.jetstream.clone())
            .with_poll_interval(Duration::from_millis(50))
            .spawn()
    }

    /// The durable pull consumer `name` of the saga's subjects `filter` (`orders.created`,
    /// `credit.*`).
    ///
    /// # Errors
    ///
    /// JetStream's.
    pub async fn pull_consumer(
        &self,
        name: &str,
        filter: &str,
        ack_wait: Duration,
    ) -> Result<jetstream::consumer::PullConsumer, BoxError> {
        let stream = self.jetstream.get_stream(&self.names.stream).await?;
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            filter_subject: self.names.subject(filter),
            ack_wait,
            ..Default::default()
        };
        Ok(stream.get_or_create_consumer(name, config).await?)
    }

    /// Runs `consumer` (of `orders.created`) with the credit handler: it reserves the
    /// order's total on its customer's account if the limit allows, and says so with
    /// `credit.reserved` or `credit.rejected`.
    pub fn spawn_credit(&self, consumer: IdempotentConsumer<(), PgSession>) -> ConsumerHandle {
        let saga = self.clone();
        consumer.spawn(move |message, session| {
            let saga = saga.clone();
            async move { saga.reserve_credit(&message.payload, &session).await }
        })
    }

    /// Runs `consumer` (of `credit.reserved` and `credit.rejected`) with the handler that
    /// approves or rejects the order.
    pub fn spawn_order_state(&self, consumer: IdempotentConsumer<(), PgSession>) -> ConsumerHandle {
        let saga = self.clone();
        consumer.spawn(move |message, session| {
            let saga = saga.clone();
            async move {
                saga.decide_order(&message.subject, &message.payload, &session)
                    .await
            }
        })
    }

    /// An idempotent consumer of `consumer` over the saga's store.
    pub fn consumer(
        &self,
        consumer: jetstream::consumer::PullConsumer,
    ) -> IdempotentConsumer<(), PgSession> {
        let manager: Manager<Fingerprint, (), PgSession> = Manager::new(self.repository.clone());
        IdempotentConsumer::new(manager, consumer)
    }

    /// Reserves credit for an `orders.created` event in the session's transaction, and
    /// appends the decision to the outbox.
    ///
    /// # Errors
    ///
    /// A body that is not an `orders.created` event; the database's.
    pub async fn reserve_credit(
        &self,
        payload: &[u8],
        session: &PgSession,
    ) -> Result<(), BoxError> {
        let event: OrderCreated = serde_json::from_slice(payload)?;
        let reserved = {
            let mut tx = session.transaction().await?;
            sqlx::query(self.names.sql(
                "UPDATE {s}.accounts SET reserved = reserved + $2
                 WHERE customer_id = $1 AND credit_limit - reserved >= $2",
            ))
            .bind(event.customer_id)
            .bind(event.total)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1
        };
        let decision = if reserved {
            "credit.reserved"
        } else {
            "credit.rejected"
        };
        let body = serde_json::to_vec(&CreditDecided {
            order_id: event.order_id,
        })?;
        self.outbox
            .append(session, &self.names.subject(decision), &body)
            .await?;
        Ok(())
    }

    /// Approves (`credit.reserved`) or rejects (`credit.rejected`) a pending order.
    ///
    /// # Errors
    ///
    /// Another subject or body; the database's.
    pub async fn decide_order(
        &self,
        subject: &str,
        payload: &[u8],
        session: &PgSession,
    ) -> Result<(), BoxError> {
        let event: CreditDecided = serde_json::from_slice(payload)?;
        let state = if subject == self.names.subject("credit.reserved") {
            "approved"
        } else if subject == self.names.subject("credit.rejected") {
            "rejected"
        } else {
            return Err(format!("unexpected subject {subject}").into());
        };
        let mut tx = session.transaction().await?;
        sqlx::query(
            self.names
                .sql("UPDATE {s}.orders SET state = $2 WHERE id = $1 AND state = 'pending'"),
        )
        .bind(event.order_id)
        .bind(state)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Writes a pending order and its `orders.created` event in the session's transaction.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn place_order(
        &self,
        order: &NewOrder,
        session: &PgSession,
    ) -> Result<Order, BoxError> {
        let id: i64 =
            {
                let mut tx = session.transaction().await?;
                sqlx::query_scalar(self.names.sql(
                    "INSERT INTO {s}.orders (customer_id, total) VALUES ($1, $2) RETURNING id",
                ))
                .bind(order.customer_id)
                .bind(order.total)
                .fetch_one(&mut *tx)
                .await?
            };
        let event = serde_json::to_vec(&OrderCreated {
            order_id: id,
            customer_id: order.customer_id,
            total: order.total,
        })?;
        self.outbox
            .append(session, &self.names.subject("orders.created"), &event)
            .await?;
        Ok(Order {
            id,
            customer_id: order.customer_id,
            total: order.total,
            state: "pending".into(),
        })
    }

    /// The order `id`, if there is one.
    ///
    /// # Errors
    ///
    /// The database's.
    pub async fn order(&self, id: i64) -> Result<Option<Order>, sqlx::Error> {
        let row: Option<(i64, i64, i64, String)> = sqlx::query_as(
            self.names
                .sql("SELECT id, customer_id, total, state FROM {s}.orders WHERE id = $1"),
        )
        .bind(id)
        .fetch_optional(self.repository.pool())
        .await?;
        Ok(row.map(|(id, customer_id, total, state)| Order {
            id,
            customer_id,
            total,
            state,
        }))
    }
}

/// A hook that logs each settled message at `info` (or `warn` for poison).
pub fn log_settlements(name: &'static str) -> impl Fn(&ConsumerEvent<'_>) + Send + Sync + 'static {
    move |event| {
        if let ConsumerEvent::Settled {
            key,
            message,
            settlement,
            ..
        } = event
        {
            tracing::info!(
                consumer = name,
                subject = %message.subject,
                key = key.unwrap_or("-"),
                settlement = settlement.as_str(),
                "message settled"
            );
        }
    }
}

type Rejection = (StatusCode, String);

async fn create_order(
    State(saga): State<Saga>,
    attempt: Attempt<PgSession>,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, Json<Order>), Rejection> {
    if order.total <= 0 {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "total must be positive\n".into(),
        ));
    }
    match saga.place_order(&order, attempt.session()).await {
        Ok(order) => Ok((StatusCode::CREATED, Json(order))),
        Err(error) => {
            tracing::error!(%error, "placing an order");
            Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "the order could not be placed\n".into(),
            ))
        }
    }
}

async fn get_order(
    State(saga): State<Saga>,
    Path(id): Path<i64>,
) -> Result<Json<Order>, Rejection> {
    match saga.order(id).await {
        Ok(Some(order)) => Ok(Json(order)),
        Ok(None) => Err((StatusCode::NOT_FOUND, format!("no order {id}\n"))),
        Err(error) => {
            tracing::error!(%error, "reading an order");
            Err((StatusCode::SERVICE_UNAVAILABLE, "try again later\n".into()))
        }
    }
}
