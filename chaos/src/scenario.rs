//! The scenarios one store goes through, on its servers.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use tokio::sync::Barrier;

use crate::check::{self, Checks, KeyLog};
use crate::server::{Answer, Call, Ledger, Server};
use crate::store::Store;

/// How long each handler works: long enough to be caught in flight.
const SLOW_MS: &str = "300";
/// How many tries a client makes before it gives up on a key.
const CLIENT_TRIES: usize = 60;
/// Requests of the storm on one key.
const STORM: usize = 30;
/// Keys requested while the store goes down.
const OUTAGE_KEYS: usize = 24;

const STILL_RUNNING: (u16, &str) = (409, "still-running");
const UNAVAILABLE: (u16, &str) = (503, "store-unavailable");
const INVALID_HEADER: (u16, &str) = (400, "invalid-header");

/// One store's servers and what they are checked against.
pub(crate) struct Run<'a> {
    binary: &'a Path,
    store: Store,
    ledger: Arc<Ledger>,
    checks: &'a mut Checks,
    servers: Vec<Server>,
    prefix: String,
}

impl<'a> Run<'a> {
    pub(crate) fn new(binary: &'a Path, store: Store, checks: &'a mut Checks) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos());
        Self {
            binary,
            store,
            ledger: Ledger::new(),
            checks,
            servers: Vec::new(),
            prefix: format!("chaos-{}-{nanos}", std::process::id()),
        }
    }

    fn name(&self) -> &'static str {
        self.store.name()
    }

    /// Every scenario, then the servers and the store stopped.
    pub(crate) async fn all(mut self) {
        let count = if self.store.is_shared() { 3 } else { 1 };
        for _ in 0..count {
            if let Err(error) = self.start_server().await {
                self.checks.fail(self.name(), check::SETTLED, &error);
                return;
            }
        }
        self.storm().await;
        self.disconnect().await;
        self.floor().await;
        if self.store.is_shared() {
            self.sigkill().await;
            self.outage().await;
        }
        let mut retries = 0;
        for server in &self.servers {
            retries += server.finish_retries().await;
        }
        let name = self.name();
        self.checks.note(format!(
            "{name}: {retries} finishes tried again after a store error"
        ));
        for mut server in self.servers.drain(..) {
            server.kill().await;
        }
        self.store.stop().await;
    }

    async fn start_server(&mut self) -> Result<(), String> {
        let mut env = self.store.env();
        env.push(("SLOW_MS", SLOW_MS.to_owned()));
        let server = Server::start(self.binary, &env, &self.ledger).await?;
        self.servers.push(server);
        Ok(())
    }

    /// A request of this store's effectful route for `key`: `/orders` on Postgres (its row
    /// commits with the record), `/hello` elsewhere (its run is the effect).
    fn call(&self, key: &str, headers: Vec<(&'static str, String)>) -> Call {
        let (path, body) = match self.store {
            Store::Postgres { .. } => ("/orders", "book"),
            _ => ("/hello", "hi"),
        };
        Call {
            path,
            key: format!("{}-{key}", self.prefix),
            body,
            headers,
        }
    }

    /// Sends `call` to `server` until it is answered 2xx (at most [`CLIENT_TRIES`] times),
    /// keeping every answer.
    async fn until_done(servers: &[Server], first: usize, call: &Call, log: &mut KeyLog) {
        for attempt in 0..CLIENT_TRIES {
            let answer = servers[(first + attempt) % servers.len()].send(call).await;
            let wait = match &answer {
                _ if answer.is_success() => None,
                Answer::Response {
                    retry_after: Some(after),
                    status: 409,
                    ..
                } => Some(Duration::from_millis(100).min(Duration::from_secs(*after))),
                _ => Some(Duration::from_millis(150)),
            };
            log.answers.push(answer);
            match wait {
                None => return,
                Some(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Storm: [`STORM`] requests at once with one key, spread over the servers. One run;
    /// the rest replay or get 409.
    async fn storm(&mut self) {
        let call = self.call("storm", Vec::new());
        let barrier = Barrier::new(STORM);
        let servers = &self.servers;
        let (barrier, call_ref) = (&barrier, &call);
        let sends = (0..STORM).map(|i| async move {
            barrier.wait().await;
            servers[i % servers.len()].send(call_ref).await
        });
        let mut log = KeyLog::new(call.key.clone());
        log.answers = join_all(sends).await;
        if !log.answers.iter().any(Answer::is_success) {
            Self::until_done(servers, 0, &call, &mut log).await;
        }
        let runs = self.ledger.runs(&call.key);
        self.checks.note(format!(
            "{}: storm of {STORM} on one key: {runs} run, statuses {}",
            self.store.name(),
            statuses(&log.answers)
        ));
        self.checks
            .judge(&self.store, &self.ledger, &log, &[STILL_RUNNING])
            .await;
        self.settled(&log);
    }

    /// A client hangs up once its handler started; its retry (on another server when there
    /// is one) is answered, running the handler at most once more.
    async fn disconnect(&mut self) {
        let call = self.call("hang-up", Vec::new());
        let mut log = KeyLog::new(call.key.clone());
        let ran = self.ledger.wait_runs(&call.key, 1, Duration::from_secs(10));
        if let Err(error) = self.servers[0].send_and_hang_up(&call, ran).await {
            self.checks.fail(self.name(), check::SETTLED, &error);
            return;
        }
        log.cut = 1;
        Self::until_done(&self.servers, 1, &call, &mut log).await;
        self.checks
            .judge(&self.store, &self.ledger, &log, &[STILL_RUNNING])
            .await;
        self.settled(&log);
    }

    /// Ten requests 50 ms apart with `X-Idempotency-Timeout: 1ns`: each a 400, no run.
    async fn floor(&mut self) {
        let call = self.call("tiny", vec![("x-idempotency-timeout", "1ns".to_owned())]);
        let mut log = KeyLog::new(call.key.clone());
        let mut ticks = tokio::time::interval(Duration::from_millis(50));
        for i in 0..10 {
            ticks.tick().await;
            log.answers
                .push(self.servers[i % self.servers.len()].send(&call).await);
        }
        let refused = log.answers.iter().all(|a| a.status() == Some(400));
        let runs = self.ledger.runs(&call.key);
        let name = self.name();
        self.checks
            .check(name, check::FLOOR, refused && runs == 0, || {
                format!(
                    "{}: {} runs, statuses {}",
                    call.key,
                    runs,
                    statuses(&log.answers)
                )
            });
        self.checks
            .judge(&self.store, &self.ledger, &log, &[INVALID_HEADER])
            .await;
    }

    /// A holder SIGKILLed mid-handler (timeout 1s): another server takes the key over once
    /// the timeout passed, and runs it once more. The killed server is started again.
    async fn sigkill(&mut self) {
        let call = self.call("killed", vec![("x-idempotency-timeout", "1s".to_owned())]);
        let mut log = KeyLog::new(call.key.clone());
        let mut victim = self.servers.remove(0);
        let endpoint = victim.endpoint();
        let sent = {
            let call = call.clone();
            tokio::spawn(async move { endpoint.send(&call).await })
        };
        let ran = self
            .ledger
            .wait_runs(&call.key, 1, Duration::from_secs(10))
            .await;
        victim.kill().await;
        // Cut: no answer comes (or, had the handler not started, whatever came).
        let answer = sent.await.unwrap_or_else(|e| Answer::None(e.to_string()));
        if !ran {
            log.answers.push(answer);
        }
        log.cut = 1;
        Self::until_done(&self.servers, 0, &call, &mut log).await;
        let runs = self.ledger.runs(&call.key);
        self.checks.note(format!(
            "{}: SIGKILLed holder: {runs} runs, then statuses {}",
            self.store.name(),
            statuses(&log.answers)
        ));
        self.checks
            .judge(&self.store, &self.ledger, &log, &[STILL_RUNNING])
            .await;
        self.settled(&log);
        if let Err(error) = self.start_server().await {
            self.checks.fail(self.name(), check::SETTLED, &error);
        }
    }

    /// [`OUTAGE_KEYS`] clients, started 40 ms apart, each retrying its key until it is
    /// answered 2xx, while the store goes away for 800 ms under them.
    async fn outage(&mut self) {
        let calls: Vec<Call> = (0..OUTAGE_KEYS)
            .map(|i| self.call(&format!("outage-{i}"), Vec::new()))
            .collect();
        let servers = &self.servers;
        let clients = calls.iter().enumerate().map(|(i, call)| async move {
            tokio::time::sleep(Duration::from_millis(40 * i as u64)).await;
            let mut log = KeyLog::new(call.key.clone());
            Self::until_done(servers, i, call, &mut log).await;
            log
        });
        let store = &mut self.store;
        let outage = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            store.outage(Duration::from_millis(800)).await
        };
        let (logs, restarted) = tokio::join!(join_all(clients), outage);
        if let Err(error) = restarted {
            self.checks.fail(self.name(), check::SETTLED, &error);
        }
        let unavailable: usize = logs
            .iter()
            .map(|log| {
                log.answers
                    .iter()
                    .filter(|a| a.status() == Some(503))
                    .count()
            })
            .sum();
        let runs: usize = logs.iter().map(|log| self.ledger.runs(&log.key)).sum();
        self.checks.note(format!(
            "{}: outage under load: {OUTAGE_KEYS} keys, {runs} runs, {unavailable} × 503",
            self.store.name()
        ));
        for log in &logs {
            self.checks
                .judge(
                    &self.store,
                    &self.ledger,
                    log,
                    &[STILL_RUNNING, UNAVAILABLE],
                )
                .await;
            self.settled(log);
        }
    }

    fn settled(&mut self, log: &KeyLog) {
        let done = log.answers.iter().any(Answer::is_success);
        let name = self.name();
        self.checks.check(name, check::SETTLED, done, || {
            format!("{}: never 2xx: {}", log.key, statuses(&log.answers))
        });
    }
}

/// `1×200, 29×409` (`-` for no answer), in the order first seen.
fn statuses(answers: &[Answer]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for answer in answers {
        let status = answer
            .status()
            .map_or_else(|| "-".to_owned(), |s| s.to_string());
        match counts.iter_mut().find(|(seen, _)| *seen == status) {
            Some((_, n)) => *n += 1,
            None => counts.push((status, 1)),
        }
    }
    let list: Vec<String> = counts.iter().map(|(s, n)| format!("{n}×{s}")).collect();
    list.join(", ")
}
