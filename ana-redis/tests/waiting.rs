//! Waiting on Redis, woken through pub/sub: many waiters on one key, a finish in another
//! process, a subscriber killed (waiters poll, the subscriber comes back), a holder process
//! killed with SIGKILL, an unreachable subscriber, and exactly one message per finish.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ana_core::conformance::Harness;
use ana_core::{
    BoxError, ClaimRequest, EventKind, Fingerprint, IdempotencyRepository, Maintenance, Manager,
    Outcome, RecordId, operation,
};
use ana_redis::redis::{self, aio::MultiplexedConnection};
use ana_redis::{RedisRepository, RedisSession};
use common::{RedisHarness, connect, random_prefix, redis_url};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

const TARGET: &str = "[POST]/payments";
const KEY: &str = "order-7";
const LIMIT: Duration = Duration::from_secs(30);
const CLAIMED: &str = "ANA_REDIS_WAIT_HOLDER_CLAIMED";
const URL_VAR: &str = "ANA_REDIS_WAIT_HOLDER_URL";
const PREFIX_VAR: &str = "ANA_REDIS_WAIT_HOLDER_PREFIX";
const MODE_VAR: &str = "ANA_REDIS_WAIT_HOLDER_MODE";

type RedisManager = Manager<&'static str, String, RedisSession>;

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {LIMIT:?}"))
}

/// A store on `REDIS_URL` under `prefix`, records kept an hour.
async fn store(prefix: &str) -> RedisRepository {
    RedisRepository::from_url(redis_url().await)
        .unwrap()
        .with_prefix(prefix)
        .with_retention_without_expiration(Duration::from_secs(3600))
}

/// A manager whose calls report when they start waiting.
fn watched(repository: RedisRepository) -> (RedisManager, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let manager = Manager::new(repository).on_event(move |event| {
        if event.kind == EventKind::Waiting {
            let _ = tx.send(());
        }
    });
    (manager, rx)
}

/// A payment answering `note`, counted in `runs`; when `gate` is given, it says it started
/// (so the record is claimed), then waits to be released.
fn payment(
    note: &'static str,
    runs: Arc<AtomicUsize>,
    gate: Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>,
) -> impl ana_core::Operation<RedisSession, Payload = &'static str, Output = String, Error = BoxError>
{
    operation(TARGET, KEY, "pay 10", move |_: RedisSession| async move {
        runs.fetch_add(1, Ordering::SeqCst);
        if let Some((started, release)) = gate {
            let _ = started.send(());
            let _ = release.await;
        }
        Ok::<_, BoxError>(note.to_owned())
    })
    .timeout(Duration::from_secs(600))
}

/// A holder that has claimed the record and waits for `release`, counting into `runs`.
async fn hold(manager: &RedisManager, runs: &Arc<AtomicUsize>) -> (Task, oneshot::Sender<()>) {
    let (started, start) = oneshot::channel();
    let (release, released) = oneshot::channel();
    let holder = tokio::spawn({
        let (manager, op) = (
            manager.clone(),
            payment("paid first", runs.clone(), Some((started, released))),
        );
        async move { manager.run(op).await }
    });
    within("the holder to claim", start).await.unwrap();
    (holder, release)
}

type Task = tokio::task::JoinHandle<Result<Outcome<String>, ana_core::Error<BoxError>>>;

/// `count` calls of the payment answering `note` that wait on the holder, once all of them
/// report waiting.
async fn wait_on(
    manager: &RedisManager,
    waiting: &mut mpsc::UnboundedReceiver<()>,
    count: usize,
    note: &'static str,
    runs: &Arc<AtomicUsize>,
) -> Vec<Task> {
    let waiters = (0..count)
        .map(|_| {
            let (manager, op) = (manager.clone(), payment(note, runs.clone(), None));
            tokio::spawn(async move { manager.run_or_wait(op, LIMIT).await })
        })
        .collect();
    for _ in 0..count {
        within("the waiters to wait", waiting.recv()).await.unwrap();
    }
    waiters
}

/// Releases the holder, then checks that it ran and that every waiter replayed its answer.
async fn release_and_replay(holder: Task, release: oneshot::Sender<()>, waiters: Vec<Task>) {
    let _ = release.send(());
    let holder = holder.await.unwrap();
    assert!(
        matches!(&holder, Ok(Outcome::Executed(note)) if note == "paid first"),
        "{holder:?}"
    );
    for waiter in waiters {
        let out = within("a waiter", waiter).await.unwrap();
        assert!(
            matches!(&out, Ok(Outcome::Replayed(note)) if note == "paid first"),
            "{out:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_waiters_on_one_key_see_one_run() {
    const WAITERS: usize = 100;
    let (manager, mut waiting) = watched(store(&random_prefix()).await);
    let runs = Arc::new(AtomicUsize::new(0));
    let (holder, release) = hold(&manager, &runs).await;
    let waiters = wait_on(&manager, &mut waiting, WAITERS, "paid again", &runs).await;
    release_and_replay(holder, release, waiters).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Not a test on its own: the holder process of the tests below. `finish`: claims, says so,
/// completes once a line arrives on its standard input. `hang`: claims, says so, never ends.
#[tokio::test]
#[ignore = "helper process, run by the cross-process tests of this file"]
async fn waiting_holder_process() {
    let (Ok(url), Ok(prefix), Ok(mode)) = (
        std::env::var(URL_VAR),
        std::env::var(PREFIX_VAR),
        std::env::var(MODE_VAR),
    ) else {
        eprintln!("started by the cross-process tests; nothing to do on its own");
        return;
    };
    let repository = RedisRepository::from_url(url).unwrap().with_prefix(prefix);
    let manager: RedisManager = Manager::new(repository);
    let op = operation(TARGET, KEY, "pay 10", move |_: RedisSession| async move {
        let mut out = tokio::io::stdout();
        out.write_all(format!("{CLAIMED}\n").as_bytes()).await?;
        out.flush().await?;
        if mode == "hang" {
            std::future::pending::<()>().await;
        }
        let mut line = String::new();
        BufReader::new(tokio::io::stdin())
            .read_line(&mut line)
            .await?;
        Ok::<_, BoxError>("paid in A".to_owned())
    });
    let out = manager.run(op.timeout(Duration::from_secs(600))).await;
    assert!(
        matches!(&out, Ok(Outcome::Executed(note)) if note == "paid in A"),
        "{out:?}"
    );
}

/// Starts the holder process in `mode` on `prefix`, and returns once it holds the record.
async fn holder_process(prefix: &str, mode: &str) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "waiting_holder_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(URL_VAR, redis_url().await)
        .env(PREFIX_VAR, prefix)
        .env(MODE_VAR, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match within("the holder process to claim", lines.next_line()).await {
            Ok(Some(line)) if line.contains(CLAIMED) => break,
            Ok(Some(_)) => {}
            other => panic!("the holder process ended before claiming: {other:?}"),
        }
    }
    // The rest of its output is read too: a closed pipe would fail its last writes.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_in_another_process_wakes_the_waiter_here() {
    let prefix = random_prefix();
    let mut child = holder_process(&prefix, "finish").await;
    let repository = store(&prefix).await;
    // The first wake-up of a watch comes when the subscriber has subscribed (finishes before
    // were not heard). After it, only a message wakes the watch: a watch is never woken by
    // polling, so this is the pushed path alone.
    let mut watch = repository.watch(RecordId::new(TARGET, KEY));
    assert!(watch.is_pushed());
    within("the subscriber to subscribe", watch.changed()).await;
    let (manager, mut waiting) = watched(repository);
    let [waiter] = wait_on(&manager, &mut waiting, 1, "paid in B", &Arc::default())
        .await
        .try_into()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"finish\n").await.unwrap();
    stdin.flush().await.unwrap();
    within("the message of A's finish", watch.changed()).await;
    let out = within("the waiter", waiter).await.unwrap();
    assert!(
        matches!(&out, Ok(Outcome::Replayed(note)) if note == "paid in A"),
        "{out:?}"
    );
    assert!(
        within("the holder process", child.wait())
            .await
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_is_taken_over_by_exactly_one_waiter() {
    const WAITERS: usize = 5;
    let harness = RedisHarness::single().await;
    let mut child = holder_process(harness.prefix(), "hang").await;
    let (manager, mut waiting) = watched(harness.repository());
    let runs = Arc::new(AtomicUsize::new(0));
    let waiters = wait_on(&manager, &mut waiting, WAITERS, "retried", &runs).await;
    child.start_kill().unwrap();
    assert_eq!(child.wait().await.unwrap().signal(), Some(9));
    // The holder's timeout passes on the server's clock (its stored times moved back).
    harness.advance_store(Duration::from_secs(601)).await;
    let mut executed = 0;
    for waiter in waiters {
        match within("a waiter", waiter).await.unwrap() {
            Ok(Outcome::Executed(note)) if note == "retried" => executed += 1,
            Ok(Outcome::Replayed(note)) if note == "retried" => {}
            other => panic!("expected the retried payment, got {other:?}"),
        }
    }
    assert_eq!(executed, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A Redis user made for one test, deleted when dropped.
struct AclUser {
    name: String,
    url: String,
}

impl AclUser {
    const PASSWORD: &str = "ana-test-password";

    /// A user allowed `rules` (ACL SETUSER syntax), with a random name.
    async fn new(rules: &[&str]) -> Self {
        let url = redis_url().await;
        let name = format!(
            "ana-test-{}",
            random_prefix().trim_end_matches(':').replace(':', "-")
        );
        let mut setuser = redis::cmd("ACL");
        setuser
            .arg("SETUSER")
            .arg(&name)
            .arg("reset")
            .arg("on")
            .arg(format!(">{}", Self::PASSWORD))
            .arg(rules);
        let _: () = setuser.query_async(&mut connect(&url).await).await.unwrap();
        Self { name, url }
    }

    /// A client that logs in as this user.
    fn client(&self) -> redis::Client {
        let info = redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection_info()
            .clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_username(&self.name)
            .set_password(Self::PASSWORD);
        redis::Client::open(info.set_redis_settings(settings)).unwrap()
    }

    async fn set(&self, rule: &str) {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&self.name)
            .arg(rule)
            .query_async(&mut connect(&self.url).await)
            .await
            .unwrap();
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        if let Ok(mut connection) =
            redis::Client::open(self.url.as_str()).and_then(|client| client.get_connection())
        {
            let _: redis::RedisResult<i64> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&self.name)
                .query(&mut connection);
        }
    }
}

/// The id of this process's subscriber connection logged in as `user`, if it is connected.
async fn subscriber_id(connection: &mut MultiplexedConnection, user: &str) -> Option<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(connection)
        .await
        .unwrap();
    let name = format!("name=ana-wake:{}:", std::process::id());
    let user = format!("user={user} ");
    list.lines()
        .find(|line| line.contains(&name) && line.contains(&user))
        .and_then(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_poll_while_the_subscriber_is_killed_and_it_comes_back() {
    let prefix = random_prefix();
    // What a subscriber needs: SUBSCRIBE on the channel, PING, and CLIENT SETNAME to be
    // named (without it, it subscribes unnamed).
    let user = AclUser::new(&[
        "-@all",
        "+subscribe",
        "+ping",
        "+client|setname",
        &format!("&{prefix}wake"),
    ])
    .await;
    let repository = store(&prefix).await.with_subscriber(user.client());
    let mut admin = connect(&redis_url().await).await;
    let (manager, mut waiting) = watched(repository.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let (holder, release) = hold(&manager, &runs).await;
    let mut watch = repository.watch(RecordId::new(TARGET, KEY));
    within("the subscriber to subscribe", watch.changed()).await;
    let first = subscriber_id(&mut admin, &user.name)
        .await
        .expect("the subscriber is connected, named, as its user");
    let waiter = wait_on(&manager, &mut waiting, 1, "paid again", &runs).await;

    // The subscriber's user is disabled (it cannot subscribe again) and its connection killed.
    user.set("off").await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&first)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    within("the subscriber to notice", watch.changed()).await;
    // The holder finishes unheard: the waiter answers by polling.
    release_and_replay(holder, release, waiter).await;
    assert_eq!(subscriber_id(&mut admin, &user.name).await, None);

    // Once it may, the subscriber comes back on a new connection, and messages arrive again.
    user.set("on").await;
    within("the subscriber to come back", watch.changed()).await;
    let again = subscriber_id(&mut admin, &user.name).await;
    assert!(
        again.is_some() && again.as_deref() != Some(first.as_str()),
        "{again:?}"
    );
    let other = RecordId::new(TARGET, "order-8");
    let mut pushed = repository.watch(other);
    let op = operation(TARGET, "order-8", "pay 10", |_: RedisSession| async {
        Ok::<_, BoxError>("paid".to_owned())
    });
    manager.call(op).await.unwrap();
    within("the message of the finish", pushed.changed()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_subscriber_leaves_claims_and_waits_working() {
    // Nothing listens on port 1: the subscriber never connects.
    let unreachable = redis::Client::open("redis://127.0.0.1:1").unwrap();
    let repository = store(&random_prefix()).await.with_subscriber(unreachable);
    let (manager, mut waiting) = watched(repository);
    let runs = Arc::new(AtomicUsize::new(0));
    let (holder, release) = hold(&manager, &runs).await;
    let waiter = wait_on(&manager, &mut waiting, 1, "paid again", &runs).await;
    release_and_replay(holder, release, waiter).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_leaves_the_finish_done() {
    let prefix = random_prefix();
    // Every command on the prefix's keys, no channel: each PUBLISH is refused.
    let user = AclUser::new(&["+@all", &format!("~{prefix}*"), "resetchannels"]).await;
    let info = user.client().get_connection_info().clone();
    let pool = ana_redis::deadpool_redis::Config::from_connection_info(info)
        .create_pool(Some(ana_redis::deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let manager: RedisManager = Manager::new(RedisRepository::new(pool).with_prefix(&prefix));
    let runs = Arc::new(AtomicUsize::new(0));
    let first = manager.run(payment("paid", runs.clone(), None)).await;
    assert!(
        matches!(&first, Ok(Outcome::Executed(note)) if note == "paid"),
        "{first:?}"
    );
    let again = manager.run(payment("paid again", runs.clone(), None)).await;
    assert!(
        matches!(&again, Ok(Outcome::Replayed(note)) if note == "paid"),
        "{again:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// The 32 hex digits a finish of `key` publishes: the head of the SHA-1 of its Redis key.
fn digest_of(repository: &RedisRepository, key: &str) -> String {
    let name = repository.record_key(TARGET, key);
    let hex = sha1_smol::Sha1::from(name).digest().to_string();
    hex[..2 * Fingerprint::LEN].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_end_of_a_record_publishes_once() {
    let harness = RedisHarness::single().await;
    let repository = harness.repository();
    let channel = format!("{}wake", harness.prefix());
    let url = redis_url().await;
    let mut messages = redis::Client::open(url.as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    messages.subscribe(&channel).await.unwrap();
    let mut messages = messages.into_on_message();
    let manager: RedisManager = Manager::new(repository.clone());
    let call = |key: &'static str, fails: bool| {
        operation(TARGET, key, "pay 10", move |_: RedisSession| async move {
            if fails {
                Err::<String, BoxError>("declined".into())
            } else {
                Ok("paid".to_owned())
            }
        })
    };
    // Completed, and replayed (a replay publishes nothing).
    manager.call(call("completed", false)).await.unwrap();
    manager.call(call("completed", false)).await.unwrap();
    // Failed.
    assert!(manager.call(call("failed", true)).await.is_err());
    // Timed out by the clean-up.
    let claim = repository
        .claim(&ClaimRequest {
            target: TARGET,
            key: "timed-out",
            fingerprint: Fingerprint::of("pay 10"),
            reference_time: ana_core::chrono::Utc::now(),
            timeout: Some(Duration::from_secs(60)),
            expiration: None,
        })
        .await
        .unwrap();
    assert!(matches!(claim, ana_core::Claim::Acquired { .. }));
    harness.advance_store(Duration::from_secs(61)).await;
    assert_eq!(repository.cleanup(100).await.unwrap().failed, 1);
    // Forgotten.
    let forgotten = repository
        .forget(RecordId::new(TARGET, "completed"), false)
        .await
        .unwrap();
    assert_eq!(forgotten, ana_core::Forgotten::Deleted);
    // Published after all of the above: it arrives after their messages.
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg("end")
        .query_async(&mut connect(&url).await)
        .await
        .unwrap();
    let mut received = Vec::new();
    loop {
        let message = within("the messages", messages.next()).await.unwrap();
        let payload: String = message.get_payload().unwrap();
        if payload == "end" {
            break;
        }
        received.push(payload);
    }
    let expected: Vec<String> = ["completed", "failed", "timed-out", "completed"]
        .into_iter()
        .map(|key| digest_of(&repository, key))
        .collect();
    assert_eq!(received, expected);
    assert!(
        received
            .iter()
            .all(|payload| !payload.contains("completed"))
    );
}

/// A TCP proxy in front of Redis whose connections can go silent: once frozen, a connection
/// forwards nothing more and stays open, like a network path that died without a reset.
struct Proxy {
    port: u16,
    connections: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<std::sync::Mutex<Vec<Arc<std::sync::atomic::AtomicBool>>>> =
            Arc::default();
        let registry = connections.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
                registry.lock().unwrap().push(frozen.clone());
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(Self::pump(client_read, server_write, frozen.clone()));
                tokio::spawn(Self::pump(server_read, client_write, frozen));
            }
        });
        Self { port, connections }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        frozen: Arc<std::sync::atomic::AtomicBool>,
    ) {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0; 16 * 1024];
        while let Ok(read) = from.read(&mut buffer).await {
            if read == 0 {
                return;
            }
            if frozen.load(Ordering::SeqCst) {
                // Silent for good: neither forwarded nor closed.
                std::future::pending::<()>().await;
            }
            if to.write_all(&buffer[..read]).await.is_err() {
                return;
            }
        }
    }

    /// Freezes every connection made so far; how many.
    fn freeze(&self) -> usize {
        let connections = self.connections.lock().unwrap();
        for frozen in connections.iter() {
            frozen.store(true, Ordering::SeqCst);
        }
        connections.len()
    }

    fn accepted(&self) -> usize {
        self.connections.lock().unwrap().len()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscriber_connection_is_noticed_by_its_heartbeat() {
    let url = redis_url().await;
    let address = match redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_info()
        .addr()
    {
        redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
        other => panic!("this test proxies TCP, not {other:?}"),
    };
    let proxy = Proxy::start(address).await;
    let subscriber = redis::Client::open(format!("redis://127.0.0.1:{}", proxy.port)).unwrap();
    let repository = store(&random_prefix()).await.with_subscriber(subscriber);
    let mut watch = repository.watch(RecordId::new(TARGET, KEY));
    within("the subscriber to subscribe", watch.changed()).await;
    assert_eq!(proxy.accepted(), 1);
    // The connection stays open but answers nothing: only the heartbeat can tell.
    assert_eq!(proxy.freeze(), 1);
    within("the heartbeat to notice", watch.changed()).await;
    within("the subscriber to subscribe again", watch.changed()).await;
    assert_eq!(proxy.accepted(), 2);
    let manager: RedisManager = Manager::new(repository);
    manager
        .call(payment("paid", Arc::default(), None))
        .await
        .unwrap();
    within("the message of the finish", watch.changed()).await;
}
