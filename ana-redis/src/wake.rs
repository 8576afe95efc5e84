//! Wake-ups across processes: every finish publishes the record's digest on the channel
//! `<prefix>wake`, and one subscribing connection per repository forwards the messages to the
//! waiting calls of this process.
//!
//! The subscriber is a RESP3 connection (pushed messages and ordinary commands on one
//! socket), so it can name itself (`CLIENT SETNAME ana-wake:<pid>:<n>`) and `PING` while
//! subscribed. It starts with the first waiting call, answers a `PING` every
//! [`HEARTBEAT`] (a connection that no longer answers is dropped), and after a drop
//! subscribes again on a new connection with a backoff from [`FIRST_PAUSE`] to
//! [`MAX_PAUSE`]. Each time it subscribes, and each time it drops, it wakes every waiting
//! call: finishes in between were not heard, so every waiting call reads its record again.
//! Waiting calls poll besides (ana-core's backoff), so a subscriber that is down only delays
//! them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ana_core::{Fingerprint, ListeningTask, Wakeups, Watch};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, RedisError, Value,
};
use tokio::sync::mpsc;

/// The first pause before subscribing again after the connection was lost or refused.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
/// The longest pause between two attempts to subscribe.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// How often the subscriber pings the server, to notice a connection that died silently.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the subscriber waits for a connection, or for the answer to a command.
const TIMEOUT: Duration = Duration::from_secs(1);

/// The wake-up channel of a key prefix: `<prefix>wake`.
pub(crate) fn channel(prefix: &str) -> String {
    format!("{prefix}wake")
}

/// The digest of the record stored under the Redis key `name`: the first 16 bytes of its
/// SHA-1 (what `string.sub(redis.sha1hex(KEYS[1]), 1, 32)` gives in a script). Messages carry
/// it instead of the key, which may hold what a client sent.
pub(crate) fn digest(name: &str) -> Fingerprint {
    let sum = sha1_smol::Sha1::from(name).digest().bytes();
    let mut bytes = [0; Fingerprint::LEN];
    bytes.copy_from_slice(&sum[..Fingerprint::LEN]);
    Fingerprint::from_bytes(bytes)
}

/// The message a finish of the record under `name` publishes: its digest in 32 hex digits.
pub(crate) fn message(name: &str) -> String {
    let mut hex = String::with_capacity(2 * Fingerprint::LEN);
    digest(name).push_hex(&mut hex);
    hex
}

/// `client`, speaking RESP3: the subscriber needs pushed messages and commands on one
/// connection.
pub(crate) fn resp3(client: &Client) -> Result<Client, RedisError> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    Client::open(info.set_redis_settings(settings))
}

/// The wake-ups of one repository: the channel its finishes publish on, and the waiting calls
/// of this process with the subscribing task that wakes them, once a call waited.
pub(crate) struct Subscriber {
    wakeups: Wakeups,
    channel: String,
    /// `None`: no subscriber (a cluster, or a store built on a pool alone); waiting calls poll.
    client: Option<Client>,
    /// The subscribing connection's name, `ana-wake:<pid>:<n>`.
    name: String,
    /// The subscribing task, stopped with the repository's last clone.
    listening: ListeningTask,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("channel", &self.channel)
            .field("name", &self.client.as_ref().map(|_| &self.name))
            .field("listening", &self.listening.is_started())
            .finish()
    }
}

impl Subscriber {
    /// Wake-ups on `<prefix>wake`, through a connection of `client` (RESP3), if any.
    pub(crate) fn new(prefix: &str, client: Option<Client>) -> Self {
        static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
        let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        Self {
            wakeups: Wakeups::new(),
            channel: channel(prefix),
            client,
            name: format!("ana-wake:{}:{n}", std::process::id()),
            listening: ListeningTask::new(),
        }
    }

    /// The same subscriber on another prefix's channel (a new one: nothing has subscribed yet
    /// while a store is being built).
    pub(crate) fn with_prefix(&self, prefix: &str) -> Self {
        Self::new(prefix, self.client.clone())
    }

    /// The channel finishes publish on.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// A watch of the record under the Redis key `name`, starting the subscribing task on the
    /// first one (in a Tokio runtime; without one the watch is never woken, and the waiting
    /// call polls). [`Watch::polling`] when there is no subscriber.
    pub(crate) fn watch(&self, name: &str) -> Watch {
        let Some(client) = &self.client else {
            return Watch::polling();
        };
        let watch = self.wakeups.watch_digest(digest(name));
        if !self.listening.is_started()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            self.listening.start(&runtime, || {
                listen(
                    client.clone(),
                    self.channel.clone(),
                    self.name.clone(),
                    self.wakeups.clone(),
                )
            });
        }
        watch
    }
}

/// Subscribes for good: forwards each message to `wakeups`, and after the connection was lost
/// (killed, timed out, the server restarted) subscribes again on a new one, with a backoff,
/// waking every watch each time it subscribes and each time it drops.
async fn listen(client: Client, channel: String, name: String, wakeups: Wakeups) {
    let mut pause = FIRST_PAUSE;
    loop {
        let (sender, mut pushes) = mpsc::unbounded_channel();
        if let Ok(connection) = subscribe(&client, &channel, &name, sender).await {
            pause = FIRST_PAUSE;
            wakeups.wake_all();
            forward(connection, &mut pushes, &wakeups).await;
            wakeups.wake_all();
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// A named connection subscribed to `channel`, its pushed messages sent to `sender`.
async fn subscribe(
    client: &Client,
    channel: &str,
    name: &str,
    sender: mpsc::UnboundedSender<PushInfo>,
) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(TIMEOUT))
        .set_response_timeout(Some(TIMEOUT))
        .set_push_sender(sender);
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    // The name only helps operators (and tests) find the connection: a user without the
    // right to `CLIENT SETNAME` subscribes unnamed.
    let _: Result<Value, _> = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name)
        .query_async(&mut connection)
        .await;
    connection.subscribe(channel).await?;
    Ok(connection)
}

/// Wakes the watches of the records named by the messages, until the connection drops or stops
/// answering its heartbeat.
async fn forward(
    mut connection: MultiplexedConnection,
    pushes: &mut mpsc::UnboundedReceiver<PushInfo>,
    wakeups: &Wakeups,
) {
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            push = pushes.recv() => match push {
                Some(PushInfo { kind: PushKind::Message, data }) => {
                    // `message`, then the channel and the payload.
                    if let Some(Value::BulkString(payload)) = data.last()
                        && let Some(digest) = Fingerprint::from_hex(payload)
                    {
                        wakeups.wake_digest(&digest);
                    }
                }
                Some(PushInfo { kind: PushKind::Disconnection, .. }) | None => return,
                Some(_) => {}
            },
            _ = heartbeat.tick() => {
                let pong: Result<Value, _> = redis::cmd("PING").query_async(&mut connection).await;
                if pong.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_back_as_their_digest() {
        let name = "ana:14:[POST]/charges:order-42";
        assert_eq!(
            Fingerprint::from_hex(message(name).as_bytes()),
            Some(digest(name))
        );
        assert!(!message(name).contains("order"));
    }

    #[test]
    fn the_digest_is_the_head_of_the_keys_sha1() {
        // SHA-1("abc") = a9993e364706816aba3e25717850c26c9cd0d89d
        assert_eq!(message("abc"), "a9993e364706816aba3e25717850c26c");
    }
}
