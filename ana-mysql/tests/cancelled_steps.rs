//! A call cancelled while a step of its session's transaction is in flight (a client that
//! hangs up on an HTTP request, say) leaves nothing behind: a `BEGIN` runs to its end and its
//! transaction is rolled back before the connection is pooled again; a `COMMIT` runs to its
//! end, and no `ROLLBACK` follows it into a transaction that is over (MariaDB answers that
//! one without a word, so the test reads the wire).
//!
//! The repository's connection goes through a proxy that records the client's queries and
//! holds back the server's answer to the step until the call was cancelled.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ana_core::{BoxError, IdempotencyRepository, Manager, Status, operation};
use ana_mysql::sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlSslMode};
use ana_mysql::sqlx::{self, MySqlPool};
use ana_mysql::{MySqlRepository, MySqlSession};
use common::TestDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const TARGET: &str = "[POST]/payments";
const LIMIT: Duration = Duration::from_secs(30);
/// The command byte of a text query (`COM_QUERY`), which carries `BEGIN`, `COMMIT` and
/// `ROLLBACK`.
const COM_QUERY: u8 = 0x03;

/// Where the server's answers stand.
#[derive(Clone, Copy, PartialEq)]
enum Hold {
    /// Passed on; the first query held starts holding them.
    Open,
    /// Held back since that query.
    Holding,
    /// Passed on for good.
    Released,
}

/// A TCP proxy to the server: it records the text of every query clients send and holds the
/// server's answers back from the first query `held` until [`release`](Self::release).
struct Proxy {
    address: SocketAddr,
    queries: Arc<Mutex<Vec<String>>>,
    hold: watch::Sender<Hold>,
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to `server`; says on `reached` when the
    /// first query `held` goes through it.
    async fn start(
        server: SocketAddr,
        held: &'static str,
        reached: mpsc::UnboundedSender<()>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let hold = watch::Sender::new(Hold::Open);
        tokio::spawn({
            let (queries, hold) = (Arc::clone(&queries), hold.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let server = TcpStream::connect(server).await.unwrap();
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(requests(
                        client_read,
                        server_write,
                        Arc::clone(&queries),
                        (held, hold.clone()),
                        reached.clone(),
                    ));
                    tokio::spawn(answers(server_read, client_write, hold.subscribe()));
                }
            }
        });
        Self {
            address,
            queries,
            hold,
        }
    }

    fn release(&self) {
        self.hold.send_replace(Hold::Released);
    }

    fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }
}

/// Client to server: records each query, and starts holding the answers before the first
/// query `held` reaches the server.
async fn requests(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    queries: Arc<Mutex<Vec<String>>>,
    (held, hold): (&'static str, watch::Sender<Hold>),
    reached: mpsc::UnboundedSender<()>,
) {
    let (mut pending, mut buffer) = (Vec::new(), vec![0; 16 * 1024]);
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        pending.extend_from_slice(&buffer[..read]);
        // Whole packets: a 3-byte little-endian length and a sequence number, then the payload.
        while pending.len() >= 4 {
            let length = usize::from(pending[0])
                | usize::from(pending[1]) << 8
                | usize::from(pending[2]) << 16;
            if pending.len() < 4 + length {
                break;
            }
            let packet: Vec<u8> = pending.drain(..4 + length).skip(4).collect();
            if packet.first() == Some(&COM_QUERY) {
                let query = String::from_utf8_lossy(&packet[1..]).into_owned();
                if query == held
                    && hold.send_if_modified(|hold| {
                        let first = *hold == Hold::Open;
                        if first {
                            *hold = Hold::Holding;
                        }
                        first
                    })
                {
                    let _ = reached.send(());
                }
                queries.lock().unwrap().push(query);
            }
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Server to client, unless the answers are held.
async fn answers(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut hold: watch::Receiver<Hold>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if hold.wait_for(|hold| *hold != Hold::Holding).await.is_err()
            || to.write_all(&buffer[..read]).await.is_err()
        {
            return;
        }
    }
}

/// A pool of one connection to `db`'s database through `proxy` (no TLS, so the proxy reads the
/// queries).
async fn pool_through(db: &TestDb, proxy: &Proxy) -> MySqlPool {
    let options = MySqlConnectOptions::from_str(&db.url)
        .unwrap()
        .database(&db.database)
        .host(&proxy.address.ip().to_string())
        .port(proxy.address.port())
        .ssl_mode(MySqlSslMode::Disabled);
    MySqlPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(LIMIT)
        .connect_with(options)
        .await
        .unwrap()
}

/// The server `db` is on.
async fn server(db: &TestDb) -> SocketAddr {
    let options = MySqlConnectOptions::from_str(&db.url).unwrap();
    tokio::net::lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// Whether the connection `pool` hands out is inside a transaction (MariaDB's
/// `@@in_transaction`).
async fn in_transaction(pool: &MySqlPool) -> bool {
    let open: u64 = sqlx::query_scalar("SELECT @@in_transaction")
        .fetch_one(pool)
        .await
        .unwrap();
    open != 0
}

/// Runs a call that pays in its session's transaction, and cancels it once the query `step`
/// of that transaction reached the server, its answer held back; then lets the answer
/// through. Returns the proxy (its queries) and the one-connection pool the call used, once
/// the call's clean-up in the background is done.
async fn cancel_at(db: &TestDb, step: &'static str) -> (Proxy, MySqlPool) {
    let (reach, mut reached) = mpsc::unbounded_channel();
    let proxy = Proxy::start(server(db).await, step, reach).await;
    // One connection: the session's, then whatever the pool hands out next.
    let pool = pool_through(db, &proxy).await;
    let manager: Manager<&'static str, String, MySqlSession> =
        Manager::new(MySqlRepository::new(pool.clone()));
    let op = operation(TARGET, "k", "pay", |session: MySqlSession| async move {
        let mut tx = session.transaction().await?;
        sqlx::query("INSERT INTO ledger (`key`, note) VALUES ('k', 'paid')")
            .execute(&mut *tx)
            .await?;
        Ok::<_, BoxError>("done".to_owned())
    });
    let call = tokio::spawn({
        let manager = manager.clone();
        async move { manager.run(op).await }
    });
    tokio::time::timeout(LIMIT, reached.recv())
        .await
        .unwrap_or_else(|_| panic!("no {step} within {LIMIT:?}"))
        .unwrap();
    // The caller goes away with the step in flight; then the server's answer comes through.
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    proxy.release();
    manager.flush().await;
    (proxy, pool)
}

/// The number of ledger rows of the call's key, read by another connection.
async fn paid(db: &TestDb) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM ledger WHERE `key` = 'k'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_begin_in_flight_leaves_no_transaction_open_when_the_call_is_cancelled() {
    let db = TestDb::new().await;
    let (_, pool) = cancel_at(&db, "BEGIN").await;
    // The one connection, back in the pool, is in no transaction: the clean-up's write on it
    // (the attempt marked Failed, cancelled) committed.
    assert!(!in_transaction(&pool).await);
    let record = db.repository.get(TARGET, "k").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Failed);
    assert_eq!(paid(&db).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_flight_runs_to_its_end_when_the_call_is_cancelled() {
    let db = TestDb::new().await;
    let (proxy, pool) = cancel_at(&db, "COMMIT").await;
    assert!(!in_transaction(&pool).await);
    let record = db.repository.get(TARGET, "k").await.unwrap().unwrap();
    assert_eq!(record.status, Status::Finished);
    assert_eq!(paid(&db).await, 1);
    let queries = proxy.queries();
    let after_commit: Vec<&String> = queries
        .iter()
        .skip_while(|query| *query != "COMMIT")
        .skip(1)
        .collect();
    assert!(
        !after_commit.iter().any(|query| *query == "ROLLBACK"),
        "{queries:?}"
    );
}
