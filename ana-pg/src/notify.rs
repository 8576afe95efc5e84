//! Wake-ups across processes: the finish statements `pg_notify` the record's digest on the
//! repository's channel, and one listening connection per repository forwards them to the
//! waiting calls of this process.

use std::fmt;
use std::time::Duration;

use ana_core::{Fingerprint, ListeningTask, RecordId, Wakeups, Watch};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::PgListener;

use crate::schema::{SchemaName, Sql};

/// The longest pause between two attempts to listen again after the connection was lost.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// The notification channel of a schema: `ana_<schema>`, cut to Postgres' 63-byte limit (two
/// schemas sharing a cut name only wake each other's waiting calls, who then read their record
/// and wait on).
pub(crate) fn channel(schema: &SchemaName) -> String {
    let name = schema.as_str();
    format!("ana_{}", &name[..name.len().min(59)])
}

/// The SQL of the digest a finish notifies, over `$1` (target) and `$2` (key): the first 16
/// bytes of SHA-256 over `<characters in the target>:<target><key>`, in hex. [`digest`]
/// computes the same.
pub(crate) const DIGEST_SQL: &str = "left(encode(sha256(convert_to(\
     length($1::text)::text || ':' || $1::text || $2::text, 'UTF8')), 'hex'), 32)";

/// The digest [`DIGEST_SQL`] computes for `id`.
pub(crate) fn digest(id: RecordId<'_>) -> Fingerprint {
    let mut hasher = Sha256::new();
    hasher.update(id.target.chars().count().to_string().as_bytes());
    hasher.update(b":");
    hasher.update(id.target.as_bytes());
    hasher.update(id.key.as_bytes());
    let sum = hasher.finalize();
    let mut bytes = [0; Fingerprint::LEN];
    bytes.copy_from_slice(&sum[..Fingerprint::LEN]);
    Fingerprint::from_bytes(bytes)
}

/// The waiting calls of one repository, and its listening task once a call waited.
pub(crate) struct Notifications {
    wakeups: Wakeups,
    channel: String,
    listening: ListeningTask,
}

impl fmt::Debug for Notifications {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notifications")
            .field("channel", &self.channel)
            .field("listening", &self.listening.is_started())
            .finish()
    }
}

impl Notifications {
    pub(crate) fn new(schema: &SchemaName) -> Self {
        Self {
            wakeups: Wakeups::new(),
            channel: channel(schema),
            listening: ListeningTask::new(),
        }
    }

    /// A watch of `id`, starting the listening task on the first one (in a Tokio runtime;
    /// without one the watch is never woken, and the waiting call polls).
    ///
    /// Once registered, the watch marks the record `watched` (`mark`, over `$1` target and
    /// `$2` key), so its finish notifies; when no Running record was marked (it finished, or
    /// vanished) or the mark failed, the watch is woken at once and the call reads again.
    pub(crate) fn watch(&self, pool: &PgPool, mark: &Sql, id: RecordId<'_>) -> Watch {
        let digest = digest(id);
        let watch = self.wakeups.watch_digest(digest);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return watch;
        };
        let (pool_mark, wakeups) = (pool.clone(), self.wakeups.clone());
        let (query, target, key) = (mark.get(), id.target.to_owned(), id.key.to_owned());
        runtime.spawn(async move {
            let marked = sqlx::query(query)
                .bind(target)
                .bind(key)
                .execute(&pool_mark)
                .await;
            if !matches!(marked, Ok(done) if done.rows_affected() == 1) {
                wakeups.wake_digest(&digest);
            }
        });
        self.listening.start(&runtime, || {
            listen(pool.clone(), self.channel.clone(), self.wakeups.clone())
        });
        watch
    }
}

/// Listens on `channel` for good: forwards each notification to `wakeups`, and after the
/// connection was lost (killed, restarted, a network fault) listens again on a new one, with
/// a backoff, waking every watch (finishes in between were not heard).
async fn listen(pool: PgPool, channel: String, wakeups: Wakeups) {
    let mut pause = Duration::from_millis(50);
    loop {
        if let Ok(mut listener) = PgListener::connect_with(&pool).await
            && listener.listen(&channel).await.is_ok()
        {
            pause = Duration::from_millis(50);
            wakeups.wake_all();
            // `Ok(None)`: the connection was lost (and a new one listens already); an error:
            // it failed, and is dropped for a new one.
            while let Ok(notification) = listener.try_recv().await {
                match notification {
                    Some(notification) => {
                        if let Some(digest) =
                            Fingerprint::from_hex(notification.payload().as_bytes())
                        {
                            wakeups.wake_digest(&digest);
                        }
                    }
                    None => wakeups.wake_all(),
                }
            }
            wakeups.wake_all();
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_read_back_from_their_hex() {
        let digest = digest(RecordId::new("[POST]/é", "k"));
        let mut hex = String::new();
        digest.push_hex(&mut hex);
        assert_eq!(Fingerprint::from_hex(hex.as_bytes()), Some(digest));
    }

    #[test]
    fn channels_fit_postgres_names() {
        let long = SchemaName::parse(&"s".repeat(63)).map(|schema| channel(&schema));
        assert_eq!(long.map(|channel| channel.len()), Ok(63));
    }
}
