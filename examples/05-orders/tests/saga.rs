//! The saga under duress, on real JetStream and Postgres: 1,000 orders, 30 % of their
//! `orders.created` events published a second time (past the stream's duplicate window, so
//! the copies reach the consumers), credit handlers failing at random after their work
//! (rolled back), the credit consumer aborted and restarted at random points (redelivery
//! after a one-second ack wait, of messages committed or not). At the end: every order
//! approved or rejected, one credit decision per order, no credit reserved twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ana_core::{BoxError, Manager, Outcome, operation};
use ana_nats::async_nats::{self, HeaderMap, jetstream};
use ana_nats::{ConsumerEvent, ConsumerHandle, OutboxRelay, RelayEvent, Settlement};
use ana_pg::PgSession;
use ana_pg::sqlx::{self, AssertSqlSafe};
use example_05_orders::{Names, NewOrder, Saga};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

const ORDERS: usize = 1_000;
const CUSTOMERS: i64 = 10;
const LIMIT: Duration = Duration::from_secs(120);

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {LIMIT:?}"))
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000)
}

/// Settlements of one consumer: `(key, settlement)`.
type Settled = mpsc::UnboundedSender<(String, Settlement)>;

fn reporting(tx: &Settled) -> impl Fn(&ConsumerEvent<'_>) + Send + Sync + 'static {
    let tx = tx.clone();
    move |event| {
        if let ConsumerEvent::Settled {
            key: Some(key),
            settlement,
            ..
        } = event
        {
            let _ = tx.send(((*key).to_owned(), *settlement));
        }
    }
}

/// The credit consumer, its handler failing after its work (rolled back) on a random tenth
/// of first attempts.
async fn spawn_credit(saga: &Saga, settled: &Settled, rng: Arc<Mutex<StdRng>>) -> ConsumerHandle {
    let pull = saga
        .pull_consumer("credit", "orders.created", Duration::from_secs(1))
        .await
        .unwrap();
    let saga2 = saga.clone();
    // A short timeout: a claim cut off by an abort (committed, its answer lost, so never
    // failed) frees its key after two seconds.
    saga.consumer(pull)
        .with_retry_delay(Duration::from_millis(100))
        .with_timeout(Duration::from_secs(2))
        .on_event(reporting(settled))
        .spawn(move |message, session: PgSession| {
            let (saga, rng) = (saga2.clone(), Arc::clone(&rng));
            async move {
                saga.reserve_credit(&message.payload, &session).await?;
                let fail = session.attempt() == 1 && rng.lock().unwrap().random_bool(0.1);
                if fail {
                    return Err::<(), BoxError>("failing after the work, on purpose".into());
                }
                Ok(())
            }
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_orders_with_copies_and_redeliveries_have_each_effect_once() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("ana_nats=warn"))
        .with_test_writer()
        .try_init();
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let pool = ana_pg::sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(&database_url)
        .await
        .unwrap_or_else(|error| panic!("no PostgreSQL at {database_url}: {error}"));
    let client = async_nats::connect(&nats_url)
        .await
        .unwrap_or_else(|error| panic!("no NATS at {nats_url}: {error}"));
    let names = Names {
        schema: unique("ana_saga"),
        stream: unique("ANA_SAGA"),
        prefix: unique("saga").replace('_', "-"),
    };
    // The stream first, with the shortest duplicate window (100 ms): the copies below are
    // stored, as they would be when published again long after the original.
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: names.stream.clone(),
        subjects: vec![format!("{}.>", names.prefix)],
        duplicate_window: Duration::from_millis(100),
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let accounts: Vec<(i64, i64)> = (1..=CUSTOMERS).map(|c| (c, 50_000)).collect();
    let saga = Saga::start(pool.clone(), client, names.clone(), &accounts)
        .await
        .unwrap();

    // 1,000 orders placed, each through the store like `POST /orders`.
    let manager: Manager<String, i64, PgSession> = Manager::new(saga.repository.clone());
    let mut totals = HashMap::new();
    for n in 0..ORDERS {
        let order = {
            let mut rng = rng.lock().unwrap();
            NewOrder {
                customer_id: rng.random_range(1..=CUSTOMERS),
                total: rng.random_range(100..=5_000),
            }
        };
        let placer = saga.clone();
        let placed = order.clone();
        let id = manager
            .run(operation(
                "place",
                format!("order-{n}"),
                format!("{order:?}"),
                move |session: PgSession| async move {
                    Ok::<_, BoxError>(placer.place_order(&placed, &session).await?.id)
                },
            ))
            .await;
        assert!(
            matches!(id, Ok(Outcome::Executed(_))),
            "placing order {n}: {id:?}"
        );
        totals.insert(n, order);
    }

    // The relay; 30 % of the orders.created it publishes are published again.
    let (copies_tx, mut copies_rx) = mpsc::unbounded_channel();
    let created = saga.names.subject("orders.created");
    let relay = OutboxRelay::new(saga.outbox.clone(), saga.jetstream.clone())
        .with_poll_interval(Duration::from_millis(20))
        .on_event({
            let rng = Arc::clone(&rng);
            move |event| {
                if let RelayEvent::Published { messages, .. } = event {
                    for message in messages.iter().filter(|m| m.subject == created) {
                        if rng.lock().unwrap().random_bool(0.3) {
                            let _ = copies_tx.send(message.clone());
                        }
                    }
                }
            }
        })
        .spawn();
    let copier = {
        let js = saga.jetstream.clone();
        tokio::spawn(async move {
            let mut copies = 0;
            while let Some(message) = copies_rx.recv().await {
                // Again until stored: past the original's duplicate window.
                loop {
                    let mut headers = HeaderMap::new();
                    headers.insert("Nats-Msg-Id", message.id.as_str());
                    let ack = js
                        .publish_with_headers(
                            message.subject.clone(),
                            headers,
                            message.payload.clone().into(),
                        )
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                    if !ack.duplicate {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                copies += 1;
            }
            copies
        })
    };

    let (credit_tx, mut credit_rx) = mpsc::unbounded_channel();
    let (state_tx, mut state_rx) = mpsc::unbounded_channel();
    let mut credit = spawn_credit(&saga, &credit_tx, Arc::clone(&rng)).await;
    let state_pull = saga
        .pull_consumer("order-state", "credit.*", Duration::from_secs(1))
        .await
        .unwrap();
    let state = saga.spawn_order_state(
        saga.consumer(state_pull)
            .with_retry_delay(Duration::from_millis(100))
            .on_event(reporting(&state_tx)),
    );

    // The credit consumer is aborted (in-flight handlers dropped, messages unacked) and
    // started again a few times, at random points. An aborted instance may have acked a
    // message without reporting it: the order-state consumer, never aborted, tells when
    // every order is decided.
    let mut executed = HashSet::new();
    let mut decided = HashSet::new();
    let mut counts: HashMap<Settlement, usize> = HashMap::new();
    let mut aborts = 0;
    let mut next_abort = rng.lock().unwrap().random_range(50..250);
    while decided.len() < ORDERS {
        tokio::select! {
            credit_settled = within("a credit settlement", credit_rx.recv()) => {
                let (key, settlement) = credit_settled.unwrap();
                *counts.entry(settlement).or_default() += 1;
                if settlement == Settlement::Executed {
                    assert!(executed.insert(key.clone()), "{key} executed twice");
                }
                if executed.len() >= next_abort && aborts < 3 {
                    credit.abort();
                    credit = spawn_credit(&saga, &credit_tx, Arc::clone(&rng)).await;
                    aborts += 1;
                    next_abort += rng.lock().unwrap().random_range(100..300);
                }
            }
            state_settled = within("an order-state settlement", state_rx.recv()) => {
                let (key, settlement) = state_settled.unwrap();
                if settlement == Settlement::Executed {
                    assert!(decided.insert(key.clone()), "{key} decided twice");
                }
            }
        }
    }
    relay.shutdown().await.unwrap();
    let copies = within("the copies", copier).await.unwrap();
    // Every copy is consumed too (acked as a replay, some after naks while their original
    // ran): the credit consumer has nothing left to deliver or to be acked.
    within("the copies consumed", async {
        let stream = saga.jetstream.get_stream(&names.stream).await.unwrap();
        loop {
            let mut pull: jetstream::consumer::PullConsumer =
                stream.get_consumer("credit").await.unwrap();
            let info = pull.info().await.unwrap();
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    while let Ok((key, settlement)) = credit_rx.try_recv() {
        *counts.entry(settlement).or_default() += 1;
        if settlement == Settlement::Executed {
            assert!(executed.insert(key.clone()), "{key} executed twice");
        }
    }
    credit.shutdown().await.unwrap();
    state.shutdown().await.unwrap();
    eprintln!("copies {copies}, credit settlements {counts:?}, aborts {aborts}");
    assert!(copies > ORDERS / 5, "{copies} copies");
    assert!(counts.get(&Settlement::Failed).copied().unwrap_or(0) > 0);

    check_effects(&saga, &pool, &totals).await;
    let stream_messages = |subject: String| {
        let js = saga.jetstream.clone();
        let name = names.stream.clone();
        async move {
            let stream = js.get_stream(&name).await.unwrap();
            let mut info = stream.info_with_subjects(subject).await.unwrap();
            let mut total = 0;
            while let Some(Ok((_, n))) = futures_util::StreamExt::next(&mut info).await {
                total += n;
            }
            total
        }
    };
    assert_eq!(
        stream_messages(saga.names.subject("orders.created")).await,
        ORDERS + copies
    );
    assert_eq!(
        stream_messages(saga.names.subject("credit.*")).await,
        ORDERS
    );
    let _ = saga.jetstream.delete_stream(&names.stream).await;
    let _ = sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA \"{}\" CASCADE",
        names.schema
    )))
    .execute(&pool)
    .await;
}

/// Every order decided, each once; each customer's reservations exactly its approved orders.
async fn check_effects(saga: &Saga, pool: &sqlx::PgPool, totals: &HashMap<usize, NewOrder>) {
    let sql = |s: &str| AssertSqlSafe(s.replace("{s}", &format!("\"{}\"", saga.names.schema)));
    let states: Vec<(String, i64)> = sqlx::query_as(sql(
        "SELECT state, count(*) FROM {s}.orders GROUP BY state ORDER BY state",
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    eprintln!("orders by state: {states:?}");
    assert!(
        states.iter().all(|(state, _)| state != "pending"),
        "{states:?}"
    );
    assert_eq!(
        states.iter().map(|(_, n)| *n).sum::<i64>(),
        totals.len() as i64
    );
    // One credit decision per order in the outbox.
    let decisions: Vec<(i64, i64)> = sqlx::query_as(sql(
        "SELECT (convert_from(payload, 'UTF8')::jsonb->>'order_id')::bigint AS order_id, count(*)
         FROM {s}.outbox WHERE subject LIKE '%.credit.%' GROUP BY 1",
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(decisions.len(), totals.len());
    assert!(
        decisions.iter().all(|(_, n)| *n == 1),
        "a decision made twice"
    );
    // Reserved credit = the approved orders' totals, customer by customer.
    let mismatched: Vec<(i64, i64, i64)> = sqlx::query_as(sql(
        "SELECT a.customer_id, a.reserved, coalesce(sum(o.total), 0)::bigint
         FROM {s}.accounts a
         LEFT JOIN {s}.orders o ON o.customer_id = a.customer_id AND o.state = 'approved'
         GROUP BY a.customer_id, a.reserved
         HAVING a.reserved <> coalesce(sum(o.total), 0)",
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(
        mismatched.is_empty(),
        "credit reserved twice or lost: {mismatched:?}"
    );
}
