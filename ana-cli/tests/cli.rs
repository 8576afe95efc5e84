//! The `ana` command end to end, against the real Postgres (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`) and Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`): each test in its own schema or key prefix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::ffi::OsStr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ana_core::chrono::{TimeDelta, Utc};
use ana_core::{
    Claim, ClaimRequest, Codec, Failure, FailureKind, Fingerprint, IdempotencyRepository, RecordId,
};
use ana_http::{RecordedResponse, RecordedResponseCodec};
use ana_pg::PgRepository;
use ana_pg::sqlx::{self, AssertSqlSafe};
use ana_redis::RedisRepository;
use serde_json::Value;

const TARGET: &str = "charge";

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn redis_url() -> String {
    std::env::var("REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned())
}

/// A name no other test, in this or another process, uses.
fn unique(stem: &str) -> String {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.subsec_nanos());
    format!(
        "{stem}_{}_{}_{}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000
    )
}

/// `ana` with `args`, the store variables of the environment removed.
fn ana<S: AsRef<OsStr>>(args: &[S]) -> Output {
    ana_with_env(args, &[])
}

fn ana_with_env<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ana"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env("RUST_BACKTRACE", "1");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("running ana")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("not JSON ({error}): {}", stdout(output)))
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

/// An error: exit status 1, nothing on stdout, exactly one line on stderr starting `ana: `,
/// no panic, no backtrace.
fn assert_one_line_error(output: &Output, starts_with: &str) {
    let text = stderr(output);
    assert_eq!(code(output), Some(1), "stderr: {text}");
    assert!(output.stdout.is_empty(), "stdout: {}", stdout(output));
    assert_eq!(text.lines().count(), 1, "stderr: {text}");
    assert!(text.starts_with(starts_with), "stderr: {text}");
    assert!(
        !text.contains("panicked") && !text.contains("backtrace"),
        "{text}"
    );
}

fn request(key: &str, timeout: Option<Duration>, expires_in: TimeDelta) -> ClaimRequest<'_> {
    ClaimRequest {
        target: TARGET,
        key,
        fingerprint: Fingerprint::of("payload"),
        reference_time: Utc::now(),
        timeout,
        expiration: Some(Utc::now() + expires_in),
    }
}

/// Four records as a running service leaves them: `paid` Finished, `busy` Running and held for
/// an hour, `stuck` Running past its timeout (of a microsecond), `old` Failed and expired.
async fn seed<R: IdempotencyRepository>(repository: &R) {
    let day = TimeDelta::days(1);
    let claimed = |claim| match claim {
        Ok(Claim::Acquired { lease, session, .. }) => (lease, session),
        Ok(Claim::Existing { record, .. }) => panic!("expected to claim, found {record:?}"),
        Err(error) => panic!("claim failed: {error:?}"),
    };
    let (lease, session) = claimed(repository.claim(&request("paid", None, day)).await);
    let id = RecordId::new(TARGET, "paid");
    let result = br#"{"receipt":"r-1"}"#;
    repository
        .complete(session, id, lease, Some(result))
        .await
        .unwrap();
    let hour = Some(Duration::from_secs(3600));
    claimed(repository.claim(&request("busy", hour, day)).await);
    let micro = Some(Duration::from_micros(1));
    claimed(repository.claim(&request("stuck", micro, day)).await);
    // Expired half an hour ago: Redis keeps a record an hour past its expiration by default.
    let past = -TimeDelta::minutes(30);
    let (lease, session) = claimed(repository.claim(&request("old", None, past)).await);
    let failure = Failure::new(FailureKind::Error, "card declined");
    let id = RecordId::new(TARGET, "old");
    repository.fail(session, id, lease, failure).await.unwrap();
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// A migrated schema of its own, dropped at the end.
struct Schema {
    name: String,
    repository: PgRepository,
}

impl Schema {
    async fn new() -> Self {
        let name = unique("ana_cli");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&database_url())
            .await
            .expect("Postgres at DATABASE_URL (make services)");
        let repository = PgRepository::with_schema(pool, &name).unwrap();
        repository.migrate().await.unwrap();
        Self { name, repository }
    }

    async fn drop_schema(self) {
        let drop = format!("DROP SCHEMA \"{}\" CASCADE", self.name);
        sqlx::query(AssertSqlSafe(drop))
            .execute(self.repository.pool())
            .await
            .unwrap();
    }
}

/// Every command on one store, as an operator runs them; `store` is the URL and the option
/// naming where the records are.
fn walk_through(store: &[String], expires_itself: bool) {
    let with = |args: &[&str]| -> Vec<String> {
        let args = args.iter().map(|arg| (*arg).to_owned());
        store.iter().cloned().chain(args).collect()
    };

    // stats: the table, then JSON.
    let table = ana(&with(&["stats"]));
    assert_eq!(code(&table), Some(0), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(text.starts_with("status"), "{text}");
    assert!(
        text.lines()
            .any(|line| line.split_whitespace().eq(["running", "2"])),
        "{text}"
    );
    let stats = json(&ana(&with(&["--json", "stats"])));
    assert_eq!(stats["running"], 2);
    assert_eq!(stats["finished"], 1);
    assert_eq!(stats["failed"], 1);
    assert_eq!(stats["total"], 4);
    assert_eq!(stats["timed_out"], 1);
    assert_eq!(stats["expired"], 1);

    // inspect: the table, then JSON; an absent record exits 4.
    let shown = ana(&with(&["inspect", TARGET, "paid"]));
    assert_eq!(code(&shown), Some(0), "{}", stderr(&shown));
    let text = stdout(&shown);
    for expected in [
        ["status", "finished"].as_slice(),
        &["attempt", "1"],
        &["result", "17", "bytes:", r#"{"receipt":"r-1"}"#],
    ] {
        assert!(
            text.lines()
                .any(|line| line.split_whitespace().eq(expected.iter().copied())),
            "{expected:?} in\n{text}"
        );
    }
    let record = json(&ana(&with(&["--json", "inspect", TARGET, "old"])));
    assert_eq!(record["status"], "failed");
    assert_eq!(record["failure"], "error");
    assert_eq!(record["error"], "card declined");
    assert_eq!(record["error_count"], 1);
    let absent = ana(&with(&["inspect", TARGET, "nope"]));
    assert_eq!(code(&absent), Some(4));
    assert!(
        stdout(&absent).starts_with("no record"),
        "{}",
        stdout(&absent)
    );

    // forget: refused while held (exit 3), deleted with --force, then gone.
    let refused = ana(&with(&["forget", TARGET, "busy"]));
    assert_eq!(code(&refused), Some(3), "{}", stderr(&refused));
    assert!(
        stdout(&refused).starts_with("refused"),
        "{}",
        stdout(&refused)
    );
    let refused = json(&ana(&with(&["--json", "forget", TARGET, "busy"])));
    assert_eq!(refused["outcome"], "held");
    assert!(refused["timeout"].is_string(), "{refused}");
    let forced = ana(&with(&["forget", TARGET, "busy", "--force"]));
    assert_eq!(code(&forced), Some(0), "{}", stderr(&forced));
    assert!(
        stdout(&forced).starts_with("deleted"),
        "{}",
        stdout(&forced)
    );
    assert_eq!(code(&ana(&with(&["inspect", TARGET, "busy"]))), Some(4));
    let again = json(&ana(&with(&["--json", "forget", TARGET, "busy"])));
    assert_eq!(again["outcome"], "not_found");

    // cleanup: the timed-out record fails; the expired one is deleted, or left to the TTL.
    let cleaned = json(&ana(&with(&["--json", "cleanup", "--limit", "100"])));
    assert_eq!(cleaned["failed"], 1, "{cleaned}");
    assert_eq!(cleaned["expires_itself"], expires_itself, "{cleaned}");
    assert_eq!(cleaned["deleted"], u32::from(!expires_itself), "{cleaned}");
    assert_eq!(cleaned["limit_reached"], false, "{cleaned}");
    let stuck = json(&ana(&with(&["--json", "inspect", TARGET, "stuck"])));
    assert_eq!(stuck["status"], "failed");
    assert_eq!(stuck["failure"], "timed_out");
    let table = stdout(&ana(&with(&["cleanup"])));
    assert!(table.starts_with("timed out, now failed  0"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_on_postgres() {
    let schema = Schema::new().await;
    seed(&schema.repository).await;
    let store = strings(&["--database-url", &database_url(), "--schema", &schema.name]);
    tokio::task::spawn_blocking(move || walk_through(&store, false))
        .await
        .unwrap();
    schema.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_on_redis() {
    let prefix = format!("{}:", unique("ana-cli"));
    let repository = RedisRepository::from_url(redis_url())
        .unwrap()
        .with_prefix(prefix.as_str());
    seed(&repository).await;
    let store = strings(&["--redis-url", &redis_url(), "--prefix", &prefix]);
    tokio::task::spawn_blocking(move || walk_through(&store, true))
        .await
        .unwrap();
    // What is left goes with its TTL; forget it now all the same.
    for key in ["paid", "stuck", "old"] {
        let _ = ana(&[
            "--redis-url",
            &redis_url(),
            "--prefix",
            &prefix,
            "forget",
            TARGET,
            key,
        ]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_on_sqlite() {
    let path = std::env::temp_dir().join(format!("{}.db", unique("ana-cli")));
    let url = format!("sqlite://{}", path.display());
    let repository = ana_sqlite::SqliteRepository::connect(&url).await.unwrap();
    repository.migrate().await.unwrap();
    seed(&repository).await;
    let store = strings(&["--database-url", &url]);
    tokio::task::spawn_blocking(move || walk_through(&store, false))
        .await
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
}

/// A SQLite file that is not there is an error, never a new empty database.
#[test]
fn a_missing_sqlite_file_is_one_line_and_stays_missing() {
    let path = std::env::temp_dir().join(format!("{}.db", unique("ana-cli-missing")));
    let url = format!("sqlite://{}", path.display());
    let output = ana(&["--database-url", url.as_str(), "stats"]);
    assert_eq!(code(&output), Some(1), "{}", stderr(&output));
    assert_one_line_error(&output, "ana: SQLite at");
    assert!(!path.exists());
}

/// On the shared MariaDB table: a record this test made is inspected and forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_forget_on_mysql() {
    let url = std::env::var("MYSQL_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| "mysql://root@127.0.0.1:3306/test".to_owned());
    let pool = ana_mysql::sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("MySQL or MariaDB at MYSQL_URL (make services)");
    let repository = ana_mysql::MySqlRepository::new(pool);
    repository.migrate().await.unwrap();
    let key = unique("cli");
    let claim = repository
        .claim(&request(&key, None, TimeDelta::days(1)))
        .await;
    let Ok(Claim::Acquired { lease, session, .. }) = claim else {
        panic!("expected to claim {key}");
    };
    let id = RecordId::new(TARGET, &key);
    repository
        .complete(session, id, lease, Some(b"\"done\""))
        .await
        .unwrap();
    let args = |command: &[&str]| -> Vec<String> {
        ["--database-url", url.as_str()]
            .iter()
            .chain(command)
            .map(|arg| (*arg).to_owned())
            .collect()
    };
    let record = json(&ana(&args(&["--json", "inspect", TARGET, &key])));
    assert_eq!(record["status"], "finished", "{record}");
    let stats = json(&ana(&args(&["--json", "stats"])));
    assert!(
        stats["finished"].as_u64().is_some_and(|n| n >= 1),
        "{stats}"
    );
    let forgotten = json(&ana(&args(&["--json", "forget", TARGET, &key])));
    assert_eq!(forgotten["outcome"], "deleted", "{forgotten}");
    assert_eq!(code(&ana(&args(&["inspect", TARGET, &key]))), Some(4));
}

/// `--http-key` finds a record of the HTTP layer by the client's key, and the table shows the
/// recorded response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_records_are_found_by_the_client_key() {
    let prefix = format!("{}:", unique("ana-cli-http"));
    let repository = RedisRepository::from_url(redis_url())
        .unwrap()
        .with_prefix(prefix.as_str());
    let target = "[POST]/orders";
    let key = ana_http::scoped_key(None, "order-7");
    let mut request = request(&key, None, TimeDelta::days(1));
    request.target = target;
    let Ok(Claim::Acquired { lease, session, .. }) = repository.claim(&request).await else {
        panic!("expected to claim");
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    let response = RecordedResponse::new(
        http::StatusCode::CREATED,
        &headers,
        &[http::header::CONTENT_TYPE],
        bytes::Bytes::from_static(br#"{"id":7}"#),
    );
    let result = RecordedResponseCodec.encode(&response).unwrap();
    let id = RecordId::new(target, &key);
    repository
        .complete(session, id, lease, Some(&result))
        .await
        .unwrap();

    let url = redis_url();
    let shown = tokio::task::spawn_blocking({
        let prefix = prefix.clone();
        move || {
            let store = ["--redis-url", url.as_str(), "--prefix", prefix.as_str()];
            let table = ana(&[&store[..], &["inspect", target, "--http-key", "order-7"]].concat());
            let json = ana(&[
                &store[..],
                &["--json", "inspect", target, "--http-key", "order-7"],
            ]
            .concat());
            let forgotten =
                ana(&[&store[..], &["forget", target, "--http-key", "order-7"]].concat());
            (table, json, forgotten)
        }
    })
    .await
    .unwrap();
    let (table, record, forgotten) = shown;
    assert_eq!(code(&table), Some(0), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(text.contains(&key), "{text}");
    assert!(text.contains("201 Created"), "{text}");
    assert!(text.contains("content-type: application/json"), "{text}");
    assert!(text.contains(r#"8 bytes: {"id":7}"#), "{text}");
    let record = json(&record);
    assert_eq!(record["key"], key.as_str());
    assert_eq!(record["http_response"]["status"], 201);
    assert_eq!(record["http_response"]["body"], r#"{"id":7}"#);
    assert_eq!(code(&forgotten), Some(0), "{}", stderr(&forgotten));
}

#[test]
fn a_bad_url_is_one_line() {
    let output = ana(&[
        "--database-url",
        "postgres://u:secret@db:notaport/x",
        "stats",
    ]);
    assert_one_line_error(&output, "ana: bad store URL postgres://u:***@db:notaport/x");
    assert!(!stderr(&output).contains("secret"));
    let output = ana(&["--redis-url", "redis://h:notaport", "stats"]);
    assert_one_line_error(&output, "ana: bad store URL redis://h:notaport");
    let output = ana(&["--database-url", "mongodb://u@db/x", "stats"]);
    assert_one_line_error(&output, "ana: unsupported store URL mongodb://u@db/x");
}

#[test]
fn an_unreachable_store_is_one_line() {
    let output = ana(&[
        "--database-url",
        "postgres://postgres@127.0.0.1:1/test",
        "stats",
    ]);
    assert_one_line_error(
        &output,
        "ana: Postgres at postgres://postgres@127.0.0.1:1/test: ",
    );
    let output = ana(&["--redis-url", "redis://127.0.0.1:1", "inspect", TARGET, "k"]);
    assert_one_line_error(&output, "ana: Redis at redis://127.0.0.1:1: ");
}

#[test]
fn exactly_one_store_is_named() {
    assert_one_line_error(&ana(&["stats"]), "ana: no store");
    let both = ana_with_env(
        &["stats"],
        &[
            ("DATABASE_URL", "postgres://127.0.0.1:1/x"),
            ("REDIS_URL", "redis://127.0.0.1:1"),
        ],
    );
    assert_one_line_error(&both, "ana: DATABASE_URL and REDIS_URL are both set");
    // An option on the command line wins over the other store's variable.
    let chosen = ana_with_env(
        &["--redis-url", "redis://127.0.0.1:1", "stats"],
        &[("DATABASE_URL", "postgres://127.0.0.1:1/x")],
    );
    assert_one_line_error(&chosen, "ana: Redis at redis://127.0.0.1:1: ");
    let wrong = ana(&[
        "--redis-url",
        "redis://127.0.0.1:1",
        "--schema",
        "x",
        "stats",
    ]);
    assert_one_line_error(&wrong, "ana: --schema does not apply to Redis");
}
