//! The layer in front of a tonic gRPC server, over HTTP/2 on a real socket, called by a tonic
//! client: replays carry the first answer's message and status, `grpc-status` decides what is
//! recorded, and rejections are gRPC statuses.

// Test code: a failed expectation is a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures_util::stream::{self, Stream, StreamExt};
use http::uri::PathAndQuery;
use tokio::sync::{Semaphore, mpsc};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};
use tower::service_fn;
use tower_service::Service;

use ana_axum::{IdempotencyConfig, IdempotencyLayer, MemoryRepository, MemorySession};

#[derive(Clone, PartialEq, prost::Message)]
struct PayRequest {
    #[prost(string, tag = "1")]
    account: String,
    #[prost(uint64, tag = "2")]
    amount: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PayReply {
    #[prost(string, tag = "1")]
    receipt: String,
    #[prost(uint64, tag = "2")]
    run: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatementLine {
    #[prost(bytes = "vec", tag = "1")]
    text: Vec<u8>,
}

const PAY: &str = "/ana.test.Payments/Pay";
const STATEMENT: &str = "/ana.test.Payments/Statement";
/// The layer's stored-response limit here: a statement is larger.
const STORED_LIMIT: usize = 4096;
/// The layer's request body limit here.
const REQUEST_LIMIT: usize = 16 * 1024;

type Lines = Pin<Box<dyn Stream<Item = Result<StatementLine, Status>> + Send>>;

/// The `ana.test.Payments` service, written out as tonic's code generator would (no protoc).
///
/// `Pay` answers a receipt; for account `missing` it fails with `NOT_FOUND` (final), for
/// `down` with `UNAVAILABLE` (transient), and for `slow` it says it started and waits for a
/// permit. `Statement` streams `amount` lines of 1 KiB.
#[derive(Clone)]
struct Payments {
    state: Arc<State>,
}

struct State {
    pay_runs: AtomicU64,
    statement_runs: AtomicU64,
    started: mpsc::UnboundedSender<()>,
    gate: Semaphore,
}

impl tonic::server::NamedService for Payments {
    const NAME: &'static str = "ana.test.Payments";
}

impl Payments {
    async fn pay(
        self,
        request: tonic::Request<PayRequest>,
    ) -> Result<tonic::Response<PayReply>, Status> {
        let run = self.state.pay_runs.fetch_add(1, Ordering::SeqCst) + 1;
        // The layer's `Attempt` reaches tonic handlers through the request extensions (with
        // ana-pg, its session is the transaction that records the reply).
        let key = request
            .extensions()
            .get::<ana_axum::ana_http::Attempt<MemorySession>>()
            .map_or("none", |context| context.key())
            .to_owned();
        let PayRequest { account, amount } = request.into_inner();
        match account.as_str() {
            "missing" => return Err(Status::not_found(format!("no account, run {run}"))),
            "down" => return Err(Status::unavailable("ledger down")),
            "slow" => {
                self.state.started.send(()).unwrap();
                self.state.gate.acquire().await.unwrap().forget();
            }
            _ => {}
        }
        Ok(tonic::Response::new(PayReply {
            receipt: format!("paid {amount} to {account} under key {key}"),
            run,
        }))
    }

    async fn statement(
        self,
        request: tonic::Request<PayRequest>,
    ) -> Result<tonic::Response<Lines>, Status> {
        let run = self.state.statement_runs.fetch_add(1, Ordering::SeqCst) + 1;
        let lines = (0..request.into_inner().amount).map(move |line| {
            let mut text = format!("run {run} line {line} ").into_bytes();
            text.resize(1024, b'.');
            Ok(StatementLine { text })
        });
        Ok(tonic::Response::new(Box::pin(stream::iter(lines))))
    }
}

impl<B> Service<http::Request<B>> for Payments
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<ana_core::BoxError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let payments = self.clone();
        Box::pin(async move {
            Ok(match request.uri().path() {
                PAY => {
                    let codec = tonic_prost::ProstCodec::<PayReply, PayRequest>::default();
                    let handler = service_fn(move |call| payments.clone().pay(call));
                    tonic::server::Grpc::new(codec)
                        .unary(handler, request)
                        .await
                }
                STATEMENT => {
                    let codec = tonic_prost::ProstCodec::<StatementLine, PayRequest>::default();
                    let handler = service_fn(move |call| payments.clone().statement(call));
                    tonic::server::Grpc::new(codec)
                        .server_streaming(handler, request)
                        .await
                }
                _ => Status::unimplemented("").into_http(),
            })
        })
    }
}

/// A tonic server on a free loopback port with the layer in front of every call.
struct World {
    channel: Channel,
    state: Arc<State>,
    started: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
}

async fn world() -> World {
    let (started_tx, started) = mpsc::unbounded_channel();
    let state = Arc::new(State {
        pay_runs: AtomicU64::new(0),
        statement_runs: AtomicU64::new(0),
        started: started_tx,
        gate: Semaphore::new(0),
    });
    let layer = IdempotencyLayer::new(MemoryRepository::new()).with_config(
        IdempotencyConfig::default()
            .with_max_stored_response(STORED_LIMIT)
            .with_max_request_body(REQUEST_LIMIT),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let router = Server::builder().layer(layer).add_service(Payments {
        state: Arc::clone(&state),
    });
    tokio::spawn(router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)));
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    World {
        channel,
        state,
        started: tokio::sync::Mutex::new(started),
    }
}

fn pay(key: Option<&str>, account: &str, amount: u64) -> tonic::Request<PayRequest> {
    let mut request = tonic::Request::new(PayRequest {
        account: account.to_owned(),
        amount,
    });
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("x-idempotency-key", MetadataValue::try_from(key).unwrap());
    }
    request
}

impl World {
    async fn pay(
        &self,
        request: tonic::Request<PayRequest>,
    ) -> Result<tonic::Response<PayReply>, Status> {
        let mut client = tonic::client::Grpc::new(self.channel.clone());
        client.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<PayRequest, PayReply>::default();
        client
            .unary(request, PathAndQuery::from_static(PAY), codec)
            .await
    }

    /// The statement's lines, or the status that ended the call.
    async fn statement(&self, key: &str, lines: u64) -> Result<(bool, Vec<StatementLine>), Status> {
        let mut client = tonic::client::Grpc::new(self.channel.clone());
        client.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<PayRequest, StatementLine>::default();
        let response = client
            .server_streaming(
                pay(Some(key), "acct", lines),
                PathAndQuery::from_static(STATEMENT),
                codec,
            )
            .await?;
        let replayed = is_replay(response.metadata());
        let mut lines = response.into_inner();
        let mut read = Vec::new();
        while let Some(line) = lines.next().await {
            read.push(line?);
        }
        Ok((replayed, read))
    }

    /// Waits until a `slow` payment has started.
    async fn started(&self) {
        self.started.lock().await.recv().await.unwrap();
    }

    fn pay_runs(&self) -> u64 {
        self.state.pay_runs.load(Ordering::SeqCst)
    }
}

fn is_replay(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata
        .get("idempotent-replayed")
        .is_some_and(|value| value == "true")
}

fn problem_type(status: &Status) -> &str {
    status
        .metadata()
        .get("idempotency-problem")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_call_replays_the_first_reply() {
    let world = world().await;
    let first = world.pay(pay(Some("k1"), "alice", 42)).await.unwrap();
    assert!(!is_replay(first.metadata()));
    assert_eq!(first.get_ref().receipt, "paid 42 to alice under key k1");
    let again = world.pay(pay(Some("k1"), "alice", 42)).await.unwrap();
    assert!(is_replay(again.metadata()));
    assert_eq!(again.into_inner(), first.into_inner());
    assert_eq!(world.pay_runs(), 1);
    // Another key is another operation.
    let other = world.pay(pay(Some("k2"), "alice", 42)).await.unwrap();
    assert_eq!(other.into_inner().run, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_error_status_is_replayed_and_a_transient_one_runs_again() {
    let world = world().await;
    for _ in 0..2 {
        let status = world.pay(pay(Some("m"), "missing", 1)).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "no account, run 1");
    }
    assert_eq!(world.pay_runs(), 1);
    for _ in 0..2 {
        let status = world.pay(pay(Some("d"), "down", 1)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!is_replay(status.metadata()));
    }
    assert_eq!(world.pay_runs(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_grpc_statuses() {
    let world = world().await;
    let missing = world.pay(pay(None, "alice", 1)).await.unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(
        problem_type(&missing),
        "https://ana.dev/problems/missing-key"
    );
    assert!(
        missing.message().contains("X-Idempotency-Key"),
        "{}",
        missing.message()
    );
    assert_eq!(world.pay_runs(), 0);

    world.pay(pay(Some("k"), "alice", 1)).await.unwrap();
    let mismatch = world.pay(pay(Some("k"), "alice", 2)).await.unwrap_err();
    assert_eq!(mismatch.code(), Code::InvalidArgument);
    assert_eq!(
        problem_type(&mismatch),
        "https://ana.dev/problems/payload-mismatch"
    );
    assert_eq!(world.pay_runs(), 1);

    let mut bad = pay(Some("t"), "alice", 1);
    bad.metadata_mut()
        .insert("x-idempotency-timeout", MetadataValue::from_static("soon"));
    let bad = world.pay(bad).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(
        problem_type(&bad),
        "https://ana.dev/problems/invalid-header"
    );
    assert_eq!(world.pay_runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_with_one_key_run_once() {
    let world = world().await;
    let holder = world.pay(pay(Some("s"), "slow", 7));
    let others = async {
        // Every other call comes while the first one runs.
        world.started().await;
        let calls = (0..16).map(|_| world.pay(pay(Some("s"), "slow", 7)));
        let answers = futures_util::future::join_all(calls).await;
        world.state.gate.add_permits(1);
        answers
    };
    let (first, others) = tokio::join!(holder, others);
    let first = first.unwrap().into_inner();
    for answer in others {
        let status = answer.unwrap_err();
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(
            problem_type(&status),
            "https://ana.dev/problems/still-running"
        );
        let pushback = status.metadata().get("grpc-retry-pushback-ms").unwrap();
        let pushback: u64 = pushback.to_str().unwrap().parse().unwrap();
        assert!((1..=5000).contains(&pushback), "{pushback}");
    }
    let again = world.pay(pay(Some("s"), "slow", 7)).await.unwrap();
    assert!(is_replay(again.metadata()));
    assert_eq!(again.into_inner(), first);
    assert_eq!(world.pay_runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_stream_is_replayed_whole() {
    let world = world().await;
    let (replayed, first) = world.statement("short", 2).await.unwrap();
    assert!(!replayed);
    let (replayed, again) = world.statement("short", 2).await.unwrap();
    assert!(replayed);
    assert_eq!(again, first);
    assert_eq!(first.len(), 2);
    assert_eq!(world.state.statement_runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_too_large_to_store_reaches_its_caller_and_never_runs_twice() {
    // 8 lines of 1 KiB, over the 4 KiB stored-response limit.
    let world = world().await;
    let (replayed, lines) = world.statement("long", 8).await.unwrap();
    assert!(!replayed);
    assert_eq!(lines.len(), 8);
    assert!(lines.iter().all(|line| line.text.starts_with(b"run 1 ")));
    let retry = world.statement("long", 8).await.unwrap_err();
    assert_eq!(retry.code(), Code::Internal);
    assert_eq!(
        problem_type(&retry),
        "https://ana.dev/problems/response-not-stored"
    );
    assert_eq!(world.state.statement_runs.load(Ordering::SeqCst), 1);
}
