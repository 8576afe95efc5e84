//! `ana-bench nats`: messages per second through `ana_nats::IdempotentConsumer` on Postgres,
//! against a bare consumer acking the same stream's messages, and their ratio.

use std::time::{Duration, Instant};

use ana_core::{Fingerprint, Manager};
use ana_nats::async_nats::{self, HeaderMap, jetstream};
use ana_nats::{ConsumerEvent, IdempotentConsumer, Settlement};
use ana_pg::{PgRepository, PgSession, sqlx};
use anyhow::{Context, Result, bail};
use futures_util::StreamExt;

/// Messages in the stream (`BENCH_NATS_MESSAGES`).
const DEFAULT_MESSAGES: usize = 5_000;

pub(crate) fn run(database_url: &str, nats_url: &str, messages: usize) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure(database_url, nats_url, messages.max(1)))
}

pub(crate) fn messages() -> usize {
    std::env::var("BENCH_NATS_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_MESSAGES)
}

async fn measure(database_url: &str, nats_url: &str, messages: usize) -> Result<()> {
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("NATS at {nats_url}"))?;
    let js = jetstream::new(client);
    let name = format!("ANA_BENCH_{}", std::process::id());
    let subject = format!("ana-bench-{}.msg", std::process::id());
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        ..Default::default()
    })
    .await?;
    let outcome = async {
        publish(&js, &subject, messages).await?;
        let stream = js.get_stream(&name).await?;
        let bare = bare(&stream, messages).await?;
        let idempotent = idempotent(&stream, database_url, messages).await?;
        println!(
            "\nnats consumer, {messages} messages: bare {bare:.0} msg/s, idempotent (postgres) \
             {idempotent:.0} msg/s, idempotent / bare {:.3}",
            idempotent / bare
        );
        anyhow::Ok(())
    }
    .await;
    let _ = js.delete_stream(&name).await;
    outcome
}

async fn publish(js: &jetstream::Context, subject: &str, messages: usize) -> Result<()> {
    let mut confirmations = Vec::with_capacity(messages);
    for n in 0..messages {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("m-{n}").as_str());
        let body = format!("{{\"order\":{n}}}");
        confirmations.push(
            js.publish_with_headers(subject.to_owned(), headers, body.into())
                .await?,
        );
    }
    for confirmation in confirmations {
        confirmation.await?;
    }
    Ok(())
}

fn pull_config(name: &str) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        ack_wait: Duration::from_secs(30),
        ..Default::default()
    }
}

/// A plain consumer: every message acked as it comes.
async fn bare(stream: &jetstream::stream::Stream, messages: usize) -> Result<f64> {
    let consumer: jetstream::consumer::PullConsumer =
        stream.create_consumer(pull_config("bare")).await?;
    let started = Instant::now();
    let mut pulled = consumer
        .stream()
        .max_messages_per_batch(64)
        .messages()
        .await?;
    let mut acked = 0;
    while acked < messages {
        let Some(message) = pulled.next().await else {
            bail!("the bare consumer's stream ended");
        };
        message?.ack().await.map_err(anyhow::Error::from_boxed)?;
        acked += 1;
    }
    Ok(messages as f64 / started.elapsed().as_secs_f64())
}

/// The idempotent consumer on Postgres, its handler doing no work of its own: what the
/// claim, the finish and the ack cost per message.
async fn idempotent(
    stream: &jetstream::stream::Stream,
    database_url: &str,
    messages: usize,
) -> Result<f64> {
    let schema = format!("ana_bench_nats_{}", std::process::id());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .connect(database_url)
        .await?;
    let repository = PgRepository::with_schema(pool.clone(), &schema)?;
    repository.migrate().await?;
    let consumer = stream.create_consumer(pull_config("idempotent")).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let manager: Manager<Fingerprint, (), PgSession> = Manager::new(repository);
    let started = Instant::now();
    let handle = IdempotentConsumer::new(manager, consumer)
        .with_concurrency(16)
        .on_event(move |event| {
            if let ConsumerEvent::Settled { settlement, .. } = event {
                let _ = tx.send(*settlement);
            }
        })
        .spawn(|_message, _session| async { Ok::<_, std::io::Error>(()) });
    let mut executed = 0;
    while executed < messages {
        match rx.recv().await {
            Some(Settlement::Executed) => executed += 1,
            Some(_) => {}
            None => bail!("the idempotent consumer stopped"),
        }
    }
    let rate = messages as f64 / started.elapsed().as_secs_f64();
    handle.shutdown().await?;
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await;
    Ok(rate)
}
