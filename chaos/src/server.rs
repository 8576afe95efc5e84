//! An example-02 server process, the runs its handlers log, and a client for it.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

/// How long one request may take before it counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// The handler runs every server logged, by key (the example logs `handler ran` with the key
/// before it does its work).
#[derive(Debug)]
pub(crate) struct Ledger {
    runs: Mutex<HashMap<String, usize>>,
    changed: watch::Sender<u64>,
}

impl Ledger {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            runs: Mutex::default(),
            changed: watch::Sender::new(0),
        })
    }

    fn ran(&self, key: &str) {
        let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        *runs.entry(key.to_owned()).or_default() += 1;
        drop(runs);
        self.changed.send_modify(|n| *n += 1);
    }

    /// How many times a handler ran for `key` so far.
    pub(crate) fn runs(&self, key: &str) -> usize {
        let runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        runs.get(key).copied().unwrap_or(0)
    }

    /// Waits (at most `limit`) until a handler has run `n` times for `key`.
    pub(crate) async fn wait_runs(&self, key: &str, n: usize, limit: Duration) -> bool {
        let mut changed = self.changed.subscribe();
        let wait = changed.wait_for(|_| self.runs(key) >= n);
        matches!(tokio::time::timeout(limit, wait).await, Ok(Ok(_)))
    }
}

/// What a request got back.
#[derive(Clone, Debug)]
pub(crate) enum Answer {
    /// A response: its status, and the problem type's last segment when it is a problem.
    Response {
        status: u16,
        problem: Option<String>,
        retry_after: Option<u64>,
    },
    /// No response (connection refused or reset, a server killed, a timeout).
    None(String),
}

impl Answer {
    pub(crate) fn is_success(&self) -> bool {
        matches!(self, Self::Response { status, .. } if (200..300).contains(status))
    }

    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            Self::Response { status, .. } => Some(*status),
            Self::None(_) => None,
        }
    }
}

/// One request of the suite.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub(crate) path: &'static str,
    pub(crate) key: String,
    pub(crate) body: &'static str,
    pub(crate) headers: Vec<(&'static str, String)>,
}

/// An example-02 process, killed on drop.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    endpoint: Endpoint,
}

/// Where a server listens, and a client for it.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    address: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Server {
    /// Starts `binary` with `env` and waits for its address.
    pub(crate) async fn start(
        binary: &Path,
        env: &[(&str, String)],
        ledger: &Arc<Ledger>,
    ) -> Result<Self, String> {
        let mut command = Command::new(binary);
        command
            .env("PORT", "0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("ANA_ENCRYPTION_KEYS")
            .env_remove("ANA_FINGERPRINT_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut child = command
            .spawn()
            .map_err(|error| format!("{}: {error}", binary.display()))?;
        let (stdout, stderr) = match (child.stdout.take(), child.stderr.take()) {
            (Some(stdout), Some(stderr)) => (stdout, stderr),
            _ => return Err("the server's output is not piped".to_owned()),
        };
        let (address_tx, address_rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut address_tx = Some(address_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let (Some(rest), Some(tx)) =
                    (line.strip_prefix("Listening on http://"), address_tx.take())
                {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
        });
        let logs = Arc::clone(ledger);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(key) = handler_ran(&line) {
                    logs.ran(&key);
                }
            }
        });
        let address = tokio::time::timeout(Duration::from_secs(60), address_rx)
            .await
            .map_err(|_| "the server did not listen within 60s".to_owned())?
            .map_err(|_| "the server exited before it listened".to_owned())?;
        Ok(Self {
            child,
            endpoint: Endpoint {
                address,
                client: Client::builder(TokioExecutor::new()).build_http(),
            },
        })
    }

    /// SIGKILL, and waits for the process to end.
    pub(crate) async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Where it listens.
    pub(crate) fn endpoint(&self) -> Endpoint {
        self.endpoint.clone()
    }

    pub(crate) async fn send(&self, call: &Call) -> Answer {
        self.endpoint.send(call).await
    }

    pub(crate) async fn send_and_hang_up(
        &self,
        call: &Call,
        ran: impl Future<Output = bool>,
    ) -> Result<(), String> {
        self.endpoint.send_and_hang_up(call, ran).await
    }

    pub(crate) async fn finish_retries(&self) -> u64 {
        self.endpoint.finish_retries().await
    }
}

impl Endpoint {
    /// Sends `call` and reads the answer.
    pub(crate) async fn send(&self, call: &Call) -> Answer {
        let mut request = Request::post(format!("http://{}{}", self.address, call.path))
            .header("x-idempotency-key", &call.key);
        for (name, value) in &call.headers {
            request = request.header(*name, value);
        }
        let request = match request.body(Full::new(Bytes::from_static(call.body.as_bytes()))) {
            Ok(request) => request,
            Err(error) => return Answer::None(error.to_string()),
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok::<_, String>((parts, body))
        };
        let (parts, body) = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => return Answer::None(error),
            Err(_) => return Answer::None("no answer in time".to_owned()),
        };
        let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let problem = (header("content-type") == Some("application/problem+json"))
            .then(|| problem_type(&body))
            .flatten();
        Answer::Response {
            status: parts.status.as_u16(),
            problem,
            retry_after: header("retry-after").and_then(|v| v.parse().ok()),
        }
    }

    /// Sends `call` on a connection of its own and closes it once `ran` says the handler
    /// started: a client that went away mid-request.
    pub(crate) async fn send_and_hang_up(
        &self,
        call: &Call,
        ran: impl Future<Output = bool>,
    ) -> Result<(), String> {
        let mut stream = TcpStream::connect(&self.address)
            .await
            .map_err(|error| error.to_string())?;
        let mut head = format!(
            "POST {} HTTP/1.1\r\nhost: {}\r\nx-idempotency-key: {}\r\ncontent-length: {}\r\n",
            call.path,
            self.address,
            call.key,
            call.body.len()
        );
        for (name, value) in &call.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(call.body);
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|error| error.to_string())?;
        let started = ran.await;
        drop(stream);
        if started {
            Ok(())
        } else {
            Err("the handler did not start".to_owned())
        }
    }

    /// `ana_finish_retries_total` from the server's `/metrics` (0 before any retry).
    pub(crate) async fn finish_retries(&self) -> u64 {
        let Ok(uri) = format!("http://{}/metrics", self.address).parse::<http::Uri>() else {
            return 0;
        };
        let Ok(Ok(response)) = tokio::time::timeout(REQUEST_TIMEOUT, self.client.get(uri)).await
        else {
            return 0;
        };
        let Ok(body) = response.into_body().collect().await else {
            return 0;
        };
        let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        text.lines()
            .filter(|line| line.starts_with("ana_finish_retries_total"))
            .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
            .map(|n| n as u64)
            .sum()
    }
}

/// The key of a `handler ran` log line (JSON, as `LOG_FORMAT=json` writes it).
fn handler_ran(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = value.get("fields")?;
    (fields.get("message")?.as_str()? == "handler ran")
        .then(|| fields.get("key")?.as_str().map(str::to_owned))
        .flatten()
}

/// The last segment of a problem document's `type`.
fn problem_type(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let kind = value.get("type")?.as_str()?;
    Some(kind.rsplit('/').next().unwrap_or(kind).to_owned())
}
