//! The behaviour scenarios (`tests/features/*.feature`, cucumber) against the real binary on a
//! free loopback port, on SQLite (a file per scenario), on Postgres (`DATABASE_URL`) and on
//! MySQL or MariaDB (`MYSQL_URL`), a database of its own per scenario on the servers, dropped
//! after it.
//!
//! Three tests for nextest (`scenarios::sqlite`, `scenarios::postgres`, `scenarios::mysql`),
//! run as one process each; `cargo test` runs all three. Scenarios tagged `@server` need a
//! database server the test can stop (a proxy it kills): they run on Postgres and MySQL.
//! Scenarios tagged `@postgres` hold a table lock and watch `pg_stat_activity`: Postgres only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cucumber::gherkin::Step;
use cucumber::writer::Stats as _;
use cucumber::{World, given, then, when};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, MySqlConnection, PgConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Barrier;
use tokio::task::{JoinHandle, JoinSet};

/// The database a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

const BACKENDS: [Backend; 3] = [Backend::Sqlite, Backend::Postgres, Backend::Mysql];

/// The index in [`BACKENDS`] of the run's database (set before each run).
static BACKEND: AtomicUsize = AtomicUsize::new(0);
static SCENARIO: AtomicUsize = AtomicUsize::new(0);

fn backend() -> Backend {
    BACKENDS[BACKEND.load(Ordering::SeqCst)]
}

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// Runs `statement` on the server `backend` names, connected as its URL says.
async fn on_server(backend: Backend, statement: String) {
    match backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&database_url())
                .await
                .expect("Postgres at DATABASE_URL");
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        Backend::Mysql => {
            let mut conn = MySqlConnection::connect(&mysql_url())
                .await
                .expect("MySQL or MariaDB at MYSQL_URL");
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        Backend::Sqlite => unreachable!("SQLite has no server"),
    }
}

/// A URL like `base` (Postgres or MySQL) on another database (and, with `port`, another port).
fn with_database(base: &str, database: &str, port: Option<u16>) -> String {
    let mut url = reqwest::Url::parse(base).expect("DATABASE_URL is a URL");
    url.set_path(&format!("/{database}"));
    if let Some(port) = port {
        url.set_host(Some("127.0.0.1")).expect("a host");
        url.set_port(Some(port)).expect("a port");
    }
    url.to_string()
}

/// One answer.
#[derive(Clone, Debug)]
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// The service under test, killed on drop.
#[derive(Debug)]
struct Server {
    child: Child,
    base: String,
}

/// A TCP proxy to Postgres that the test can kill (every connection with it).
#[derive(Debug)]
struct Proxy {
    port: u16,
    tasks: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let accepted = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                accepted.lock().await.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Proxy {
            port,
            tasks,
            accept,
        }
    }

    /// Stops accepting and cuts every connection: the database is gone for the service.
    async fn kill(&self) {
        self.accept.abort();
        self.tasks.lock().await.abort_all();
    }
}

#[derive(Debug, World)]
#[world(init = Self::new)]
struct Payments {
    server: Option<Server>,
    client: reqwest::Client,
    /// Headers for the next request only.
    headers: Vec<(String, String)>,
    last: Option<Reply>,
    /// Databases (on Postgres or MySQL) and files this scenario made, removed after it.
    databases: Vec<(Backend, String)>,
    files: Vec<std::path::PathBuf>,
    proxy: Option<Proxy>,
    /// The connection holding a lock on the payments table.
    locker: Option<PgConnection>,
    in_flight: Option<JoinHandle<Reply>>,
    concurrent: Vec<StatusCode>,
}

impl Payments {
    fn new() -> Self {
        Self {
            server: None,
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            headers: Vec::new(),
            last: None,
            databases: Vec::new(),
            files: Vec::new(),
            proxy: None,
            locker: None,
            in_flight: None,
            concurrent: Vec::new(),
        }
    }

    fn base(&self) -> &str {
        &self.server.as_ref().expect("the service is running").base
    }

    fn last(&self) -> &Reply {
        self.last.as_ref().expect("a request was sent")
    }

    /// A fresh database for one server: a SQLite file, or a database on the Postgres or
    /// MySQL server (through `proxy` when given).
    async fn fresh_database(&mut self, proxy: bool) -> (String, String) {
        let n = SCENARIO.fetch_add(1, Ordering::SeqCst);
        let name = format!("ana_pay_{}_{n}", std::process::id());
        let (repo, admin, default_port) = match backend() {
            Backend::Sqlite => {
                let path = std::env::temp_dir().join(format!("{name}.db"));
                for suffix in ["", "-wal", "-shm"] {
                    self.files
                        .push(path.with_file_name(format!("{name}.db{suffix}")));
                }
                return ("sqlite".into(), format!("sqlite://{}", path.display()));
            }
            Backend::Postgres => ("postgres", database_url(), 5432),
            Backend::Mysql => ("mysql", mysql_url(), 3306),
        };
        on_server(backend(), format!("CREATE DATABASE {name}")).await;
        self.databases.push((backend(), name.clone()));
        let port = if proxy {
            let url = reqwest::Url::parse(&admin).unwrap();
            let target = format!(
                "{}:{}",
                url.host_str().unwrap_or("127.0.0.1"),
                url.port().unwrap_or(default_port)
            );
            let started = Proxy::start(target).await;
            let port = started.port;
            self.proxy = Some(started);
            Some(port)
        } else {
            None
        };
        (repo.into(), with_database(&admin, &name, port))
    }

    async fn start(&mut self, flags: &str, proxy: bool) {
        self.server = None;
        let (repo, uri) = self.fresh_database(proxy).await;
        let mut child = Command::new(env!("CARGO_BIN_EXE_example-04-payments"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--repo",
                &repo,
                "--repo-uri",
                &uri,
                "--admin",
            ])
            .args(flags.split_whitespace())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the service starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the service listens within 30 s")
            .unwrap()
            .expect("the service printed its address (see its stderr)");
        let address = line
            .strip_prefix("Listening on ")
            .expect("the listening line");
        self.server = Some(Server {
            child,
            base: address.to_owned(),
        });
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<String>) -> Reply {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base()));
        let mut typed = false;
        for (name, value) in self.headers.drain(..) {
            typed |= name.eq_ignore_ascii_case("content-type");
            request = request.header(name, value);
        }
        if let Some(body) = body {
            if !typed {
                request = request.header("content-type", "application/json");
            }
            request = request.body(body);
        }
        let response = request.send().await.expect("the service answers");
        let reply = Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        };
        self.last = Some(reply.clone());
        reply
    }

    async fn cleanup(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = server.child.kill().await;
        }
        if let Some(proxy) = self.proxy.take() {
            proxy.kill().await;
        }
        self.locker = None;
        for file in self.files.drain(..) {
            let _ = std::fs::remove_file(file);
        }
        for (backend, name) in std::mem::take(&mut self.databases) {
            let drop = match backend {
                Backend::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                _ => format!("DROP DATABASE IF EXISTS {name}"),
            };
            on_server(backend, drop).await;
        }
    }
}

fn payment(id: &str, version: Option<i64>, amount: &str) -> String {
    let mut payment = json!({
        "id": id, "type": "Payment", "organisation_id": "org-1",
        "attributes": {"amount": amount, "currency": "GBP"},
    });
    if let Some(version) = version {
        payment["version"] = json!(version);
    }
    payment.to_string()
}

#[given("the service is running")]
async fn running(world: &mut Payments) {
    world.start("", false).await;
}

#[given(expr = "the service is running with {string}")]
async fn running_with(world: &mut Payments, flags: String) {
    world.start(&flags, false).await;
}

#[given("the service is running through a proxy to the database")]
async fn running_through_proxy(world: &mut Payments) {
    world.start("", true).await;
}

#[given(expr = "the header {string} is {string}")]
async fn header(world: &mut Payments, name: String, value: String) {
    world.headers.push((name, value));
}

#[given(expr = "payment {string} exists")]
async fn exists(world: &mut Payments, id: String) {
    let reply = world
        .send("POST", "/v1/payments", Some(payment(&id, None, "1")))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

#[given(expr = "payment {string} was replaced at version {int}")]
async fn was_replaced(world: &mut Payments, id: String, version: i64) {
    let body = payment(&id, Some(version), "2");
    let reply = world
        .send("PUT", &format!("/v1/payments/{id}"), Some(body))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[when(expr = "I create payment {string} with amount {string}")]
async fn create(world: &mut Payments, id: String, amount: String) {
    world
        .send("POST", "/v1/payments", Some(payment(&id, None, &amount)))
        .await;
}

#[when(expr = "I replace payment {string} read at version {int} with amount {string}")]
async fn replace(world: &mut Payments, id: String, version: i64, amount: String) {
    let body = payment(&id, Some(version), &amount);
    world
        .send("PUT", &format!("/v1/payments/{id}"), Some(body))
        .await;
}

#[when(regex = r#"^I (GET|DELETE) "([^"]*)"$"#)]
async fn request(world: &mut Payments, method: String, path: String) {
    world.send(&method, &path, None).await;
}

#[when(regex = r#"^I (POST|PUT) "([^"]*)" with:$"#)]
async fn request_with(world: &mut Payments, method: String, path: String, step: &Step) {
    let body = step.docstring.clone().expect("a body");
    world
        .send(&method, &path, Some(body.trim().to_owned()))
        .await;
}

#[when(expr = "I GET {string} {int} times")]
async fn get_times(world: &mut Payments, path: String, times: usize) {
    for _ in 0..times {
        world.send("GET", &path, None).await;
    }
}

#[when(
    regex = r#"^(\d+) clients replace payment "([^"]*)" read at version (\d+) at once(, each with its own key)?$"#
)]
async fn concurrent(world: &mut Payments, clients: usize, id: String, version: i64, keyed: String) {
    let barrier = Arc::new(Barrier::new(clients));
    let url = format!("{}/v1/payments/{id}", world.base());
    let mut tasks = JoinSet::new();
    for n in 0..clients {
        let (barrier, client, url) = (Arc::clone(&barrier), world.client.clone(), url.clone());
        let body = payment(&id, Some(version), &format!("{}", n + 1));
        let key = (!keyed.is_empty()).then(|| format!("concurrent-{n}"));
        tasks.spawn(async move {
            let mut request = client
                .put(url)
                .header("content-type", "application/json")
                .body(body);
            if let Some(key) = key {
                request = request.header("x-idempotency-key", key);
            }
            barrier.wait().await;
            request.send().await.expect("the service answers").status()
        });
    }
    world.concurrent = tasks.join_all().await;
}

#[when("the database stops")]
async fn database_stops(world: &mut Payments) {
    world.proxy.as_ref().expect("a proxy").kill().await;
}

#[given("the payments table is locked")]
async fn lock_table(world: &mut Payments) {
    let (_, name) = world.databases.last().expect("a Postgres database").clone();
    let mut conn = PgConnection::connect(&with_database(&database_url(), &name, None))
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query("LOCK TABLE payments IN ACCESS EXCLUSIVE MODE")
        .execute(&mut conn)
        .await
        .unwrap();
    world.locker = Some(conn);
}

#[when(expr = "I start replacing payment {string} read at version {int} with key {string}")]
async fn start_replacing(world: &mut Payments, id: String, version: i64, key: String) {
    let request = world
        .client
        .put(format!("{}/v1/payments/{id}", world.base()))
        .header("content-type", "application/json")
        .header("x-idempotency-key", key)
        .body(payment(&id, Some(version), "9"));
    world.in_flight = Some(tokio::spawn(async move {
        let response = request.send().await.expect("the service answers");
        Reply {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }));
    // Until the request waits for the table lock (its key claimed), bounded.
    let (_, name) = world.databases.last().unwrap().clone();
    let locker = world.locker.as_mut().expect("the table is locked");
    for _ in 0..600 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
        )
        .bind(&name)
        .fetch_one(&mut *locker)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the first request never reached the payments table");
}

#[when(expr = "another request replaces payment {string} read at version {int} with key {string}")]
async fn another_replaces(world: &mut Payments, id: String, version: i64, key: String) {
    world.headers.push(("X-Idempotency-Key".into(), key));
    world
        .send(
            "PUT",
            &format!("/v1/payments/{id}"),
            Some(payment(&id, Some(version), "9")),
        )
        .await;
}

#[when("the payments table is unlocked")]
async fn unlock_table(world: &mut Payments) {
    let mut conn = world.locker.take().expect("the table is locked");
    sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
}

#[then(expr = "the first request got {int}")]
async fn first_got(world: &mut Payments, status: u16) {
    let reply = world
        .in_flight
        .take()
        .expect("a request in flight")
        .await
        .unwrap();
    assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
}

#[then(expr = "the status is {int}")]
async fn status_is(world: &mut Payments, status: u16) {
    let reply = world.last();
    assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
}

#[then(expr = "the header {string} is {string}")]
async fn header_is(world: &mut Payments, name: String, value: String) {
    let found = world
        .last()
        .headers
        .get(&name)
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(found.as_deref(), Some(value.as_str()), "header {name}");
}

#[then(expr = "the header {string} is absent")]
async fn header_absent(world: &mut Payments, name: String) {
    assert!(world.last().headers.get(&name).is_none(), "header {name}");
}

#[then(expr = "the header {string} is a number of seconds over 0")]
async fn header_seconds(world: &mut Payments, name: String) {
    let value = world
        .last()
        .headers
        .get(&name)
        .expect("the header")
        .to_str()
        .unwrap();
    let seconds: u64 = value.parse().expect("a number of seconds");
    assert!(seconds > 0, "{name}: {seconds}");
}

#[then(expr = "the body is a problem with status {int}")]
async fn problem(world: &mut Payments, status: u16) {
    let reply = world.last();
    let content_type = reply
        .headers
        .get("content-type")
        .map(|v| v.to_str().unwrap());
    assert_eq!(
        content_type,
        Some("application/problem+json"),
        "{}",
        reply.body
    );
    let problem = reply.json();
    assert_eq!(problem["status"], json!(status), "{problem}");
    assert!(
        problem["type"].as_str().is_some_and(|t| !t.is_empty()),
        "{problem}"
    );
    assert!(problem["detail"].as_str().is_some(), "{problem}");
}

#[then(expr = "the JSON at {string} is {string}")]
async fn json_at(world: &mut Payments, pointer: String, expected: String) {
    let expected: Value = serde_json::from_str(&expected).unwrap();
    let body = world.last().json();
    assert_eq!(body.pointer(&pointer), Some(&expected), "{body}");
}

#[then(expr = "the body contains {string}")]
async fn body_contains(world: &mut Payments, text: String) {
    assert!(world.last().body.contains(&text), "{}", world.last().body);
}

#[then(expr = "the listed ids are {string}")]
async fn listed(world: &mut Payments, ids: String) {
    let body = world.last().json();
    let found: Vec<&str> = body["data"]
        .as_array()
        .expect("a data array")
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(found.join(","), ids);
}

#[then(expr = "there are {int} payments")]
async fn count(world: &mut Payments, expected: u64) {
    let reply = world.send("GET", "/admin/repo", None).await;
    assert_eq!(reply.json()["count"], json!(expected));
}

#[then(expr = "payment {string} is at version {int}")]
async fn at_version(world: &mut Payments, id: String, version: i64) {
    let reply = world.send("GET", &format!("/v1/payments/{id}"), None).await;
    assert_eq!(reply.json()["version"], json!(version), "{}", reply.body);
}

#[then(expr = "exactly one got {int} and the others {int}")]
async fn exactly_one(world: &mut Payments, winner: u16, others: u16) {
    let statuses: Vec<u16> = world.concurrent.iter().map(StatusCode::as_u16).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == winner).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == winner || *s == others),
        "{statuses:?}"
    );
}

async fn run(backend: Backend) {
    let index = BACKENDS.iter().position(|b| *b == backend).unwrap();
    BACKEND.store(index, Ordering::SeqCst);
    let features = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/features");
    let writer = Payments::cucumber()
        .with_cli(cucumber::cli::Opts::<_, _, _, cucumber::cli::Empty>::default())
        .max_concurrent_scenarios(4)
        .fail_on_skipped()
        .after(|_, _, _, _, world| {
            Box::pin(async move {
                if let Some(world) = world {
                    world.cleanup().await;
                }
            })
        })
        .filter_run(features, move |feature, rule, scenario| {
            let tagged = |name: &str| {
                [&feature.tags, &scenario.tags]
                    .into_iter()
                    .chain(rule.map(|rule| &rule.tags))
                    .any(|tags| tags.iter().any(|tag| tag == name))
            };
            match backend {
                Backend::Postgres => true,
                Backend::Mysql => !tagged("postgres"),
                Backend::Sqlite => !tagged("postgres") && !tagged("server"),
            }
        })
        .await;
    assert!(
        !writer.execution_has_failed(),
        "{backend:?}: some scenarios failed"
    );
    assert!(writer.passed_steps() > 0, "{backend:?}: no step ran");
}

/// The tests this binary offers, as libtest names them (for nextest's `--list`).
const TESTS: [(&str, Backend); 3] = [
    ("scenarios::sqlite", Backend::Sqlite),
    ("scenarios::postgres", Backend::Postgres),
    ("scenarios::mysql", Backend::Mysql),
];

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        if !args.iter().any(|arg| arg == "--ignored") {
            for (name, _) in TESTS {
                println!("{name}: test");
            }
        }
        return;
    }
    // `binary [filter] [--exact] [--skip x]…`: the tests named (or matched), else all.
    let mut filters = Vec::new();
    let mut words = args.iter();
    while let Some(arg) = words.next() {
        if arg == "--skip" {
            words.next();
        } else if !arg.starts_with('-') {
            filters.push(arg.as_str());
        }
    }
    for (name, backend) in TESTS {
        if filters.is_empty() || filters.iter().any(|filter| name.contains(filter)) {
            run(backend).await;
        }
    }
}
