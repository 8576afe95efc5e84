//! [`Maintenance`] for [`RedisRepository`]: `forget` is one script on the record's key;
//! `stats` and `cleanup` scan the prefix's keys on every node holding records.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

use ana_core::{
    Cleaned, FailureKind, Forgotten, Maintenance, RecordId, RepositoryError, Stats, Status,
};
use redis::Value;

use crate::layout;
use crate::record::{corrupt, time};
use crate::repository::{FORGET, Node, RedisRepository, TIME_OUT};

/// How many keys one `SCAN` step asks a node for; their fields are read in one pipeline.
const SCAN_COUNT: usize = 1000;

/// - `forget` is one Lua script: it reads the record's status and timeout on the server's
///   clock and deletes it, or not, in the same step, so no claim comes between.
/// - `stats` walks the prefix's keys with `SCAN` on the server, or on every master of a
///   cluster, reading each batch's headers in one pipeline (and the fields of records of
///   the hash layout in a second one):
///   a full pass over the keyspace (Redis filters keys by the prefix as it goes). Keys that
///   `SCAN` returns twice are counted once.
/// - `cleanup` walks the keys the same way and marks Running records past their timeout Failed,
///   each with one script that checks again. It deletes nothing: every record carries a TTL
///   (see the crate's retention rules) and Redis deletes it when that runs out, so
///   [`Cleaned::expires_itself`] is set and [`Cleaned::deleted`] is 0.
impl Maintenance for RedisRepository {
    async fn forget(&self, id: RecordId<'_>, force: bool) -> Result<Forgotten, RepositoryError> {
        let name = self.record_key(id.target, id.key);
        let mut invocation = self.invocation_on(&FORGET, name.clone());
        invocation.arg(if force { "1" } else { "0" });
        // A forgotten record frees its key: calls waiting on it may claim it.
        let reply: Vec<Value> = self.invoke_and_wake(invocation, &name).await?;
        let mut reply = reply.into_iter();
        match (reply.next(), reply.next(), reply.next()) {
            (Some(Value::Int(0)), None, None) => Ok(Forgotten::NotFound),
            (Some(Value::Int(1)), None, None) => Ok(Forgotten::Deleted),
            (Some(Value::Int(2)), Some(Value::BulkString(timeout)), None) => {
                let timeout = Some(timeout).filter(|timeout| !timeout.is_empty());
                Ok(Forgotten::Held {
                    timeout: time(&name, "timeout", timeout)?,
                })
            }
            (Some(Value::Int(3)), None, None) => {
                Err(corrupt(&name, "field timeout is not an integer"))
            }
            _ => Err(corrupt(&name, "unexpected reply from the forget script")),
        }
    }

    async fn stats(&self) -> Result<Stats, RepositoryError> {
        let mut stats = Stats::default();
        let hasher = RandomState::new();
        let mut seen = HashSet::new();
        let mut scan = Scan::new(self).await?;
        while let Some(batch) = scan.next().await? {
            for record in batch.records {
                if !seen.insert(hasher.hash_one(&record.name)) {
                    continue;
                }
                stats.count(record.status, 1);
                stats.timed_out += u64::from(record.is_timed_out_at(batch.now));
                stats.expired += u64::from(record.expiration.is_some_and(|at| batch.now > at));
            }
        }
        Ok(stats)
    }

    async fn cleanup(&self, limit: u32) -> Result<Cleaned, RepositoryError> {
        let limit = u64::from(limit);
        let mut cleaned = Cleaned::default();
        cleaned.expires_itself = true;
        let mut scan = Scan::new(self).await?;
        while cleaned.failed < limit {
            let Some(batch) = scan.next().await? else {
                break;
            };
            let timed_out = batch
                .records
                .into_iter()
                .filter(|record| record.is_timed_out_at(batch.now));
            for record in timed_out {
                if cleaned.failed >= limit {
                    break;
                }
                let kind = FailureKind::TimedOut;
                let mut invocation = self.invocation_on(&TIME_OUT, record.name.clone());
                invocation.arg(kind.message()).arg(kind.as_str());
                // A record marked Failed may be claimed again by the calls waiting on it.
                let changed: i64 = self.invoke_and_wake(invocation, &record.name).await?;
                cleaned.failed += u64::from(changed == 1);
            }
        }
        Ok(cleaned)
    }
}

/// A record as a scan reads it: its Redis key, status and deadlines (microseconds).
struct Scanned {
    name: String,
    status: Status,
    timeout: Option<i64>,
    expiration: Option<i64>,
}

impl Scanned {
    fn is_timed_out_at(&self, now: i64) -> bool {
        self.status == Status::Running && self.timeout.is_some_and(|at| now >= at)
    }
}

/// The records of one `SCAN` step, and the node's time when they were read.
struct Batch {
    now: i64,
    records: Vec<Scanned>,
    /// Keys of records of the hash layout, still to read.
    hashes: Vec<String>,
}

/// A walk over the prefix's keys, node after node.
struct Scan<'r> {
    repository: &'r RedisRepository,
    pattern: String,
    /// Nodes not visited yet.
    nodes: Vec<Node>,
    /// The node being walked and the cursor of its next step.
    current: Option<(Node, u64)>,
}

impl<'r> Scan<'r> {
    async fn new(repository: &'r RedisRepository) -> Result<Self, RepositoryError> {
        let mut nodes = repository
            .run(|mut connection| async move { connection.nodes().await })
            .await?;
        nodes.reverse();
        Ok(Self {
            repository,
            pattern: format!("{}*", glob_escape(repository.prefix())),
            nodes,
            current: None,
        })
    }

    /// The next step's records; `None` once every node is walked.
    async fn next(&mut self) -> Result<Option<Batch>, RepositoryError> {
        loop {
            let (node, cursor) = match self.current.take() {
                Some(current) => current,
                None => match self.nodes.pop() {
                    Some(node) => (node, 0),
                    None => return Ok(None),
                },
            };
            let mut step = redis::cmd("SCAN");
            step.arg(cursor)
                .arg("MATCH")
                .arg(&self.pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let on = node.clone();
            let (next, keys): (u64, Vec<Vec<u8>>) = self
                .repository
                .run(|mut connection| async move { connection.on_node(&on, step).await })
                .await?;
            if next != 0 {
                self.current = Some((node.clone(), next));
            }
            // Keys that are not UTF-8 are no record's: ana writes keys from strings.
            let names: Vec<String> = keys
                .into_iter()
                .filter_map(|key| String::from_utf8(key).ok())
                .collect();
            if names.is_empty() {
                continue;
            }
            // The header of each record's string; a record of the hash layout answers
            // WRONGTYPE and is read with HMGET next.
            let mut pipeline = redis::pipe();
            pipeline.ignore_errors().cmd("TIME");
            for name in &names {
                pipeline
                    .cmd("GETRANGE")
                    .arg(name)
                    .arg(0)
                    .arg(layout::HEADER - 1);
            }
            let on = node.clone();
            let replies =
                self.repository
                    .run(|mut connection| async move {
                        connection.pipeline_on_node(&on, pipeline).await
                    })
                    .await?;
            let mut batch = read_batch(names, replies)?;
            if !batch.hashes.is_empty() {
                let mut pipeline = redis::pipe();
                pipeline.ignore_errors();
                for name in &batch.hashes {
                    pipeline
                        .cmd("HMGET")
                        .arg(name)
                        .arg("status")
                        .arg("timeout")
                        .arg("exp");
                }
                let replies = self
                    .repository
                    .run(|mut connection| async move {
                        connection.pipeline_on_node(&node, pipeline).await
                    })
                    .await?;
                let hashes = std::mem::take(&mut batch.hashes);
                read_hashes(hashes, replies, &mut batch.records)?;
            }
            return Ok(Some(batch));
        }
    }
}

/// The records of a step from the replies of its first pipeline: `TIME`, then one `GETRANGE`
/// of the header per key. A key gone since the `SCAN` (its TTL ran out, it was forgotten) is
/// left out; a key holding another type than a string is left in [`Batch::hashes`].
fn read_batch(names: Vec<String>, replies: Vec<Value>) -> Result<Batch, RepositoryError> {
    let mut replies = replies.into_iter();
    let now = match replies.next() {
        Some(Value::Array(clock)) => server_time(&clock),
        _ => None,
    }
    .ok_or_else(|| corrupt("TIME", "the server time is malformed"))?;
    let mut batch = Batch {
        now,
        records: Vec::with_capacity(names.len()),
        hashes: Vec::new(),
    };
    for (name, reply) in names.into_iter().zip(replies) {
        let header = match reply {
            Value::BulkString(bytes) => bytes,
            Value::ServerError(error) if error.code() == "WRONGTYPE" => {
                batch.hashes.push(name);
                continue;
            }
            other => {
                return Err(corrupt(
                    &name,
                    &format!("unexpected GETRANGE reply {other:?}"),
                ));
            }
        };
        if header.is_empty() {
            continue;
        }
        let header = layout::read_header(&name, &header)?;
        batch.records.push(Scanned {
            name,
            status: header.status,
            timeout: header.timeout,
            expiration: header.expiration,
        });
    }
    Ok(batch)
}

/// Records of the hash layout, from one `HMGET` of `status`, `timeout` and `exp` per key. A
/// key gone or turned into a string since is left out (the string layout's writer claimed it).
fn read_hashes(
    names: Vec<String>,
    replies: Vec<Value>,
    records: &mut Vec<Scanned>,
) -> Result<(), RepositoryError> {
    for (name, reply) in names.into_iter().zip(replies) {
        let fields = match reply {
            Value::Array(fields) => fields,
            Value::ServerError(error) if error.code() == "WRONGTYPE" => continue,
            other => return Err(corrupt(&name, &format!("unexpected HMGET reply {other:?}"))),
        };
        let mut fields = fields.into_iter().map(|value| match value {
            Value::BulkString(bytes) => Some(bytes),
            Value::SimpleString(text) => Some(text.into_bytes()),
            _ => None,
        });
        let (Some(status), timeout, expiration) = (
            fields.next().flatten(),
            fields.next().flatten(),
            fields.next().flatten(),
        ) else {
            continue;
        };
        let status = std::str::from_utf8(&status)
            .ok()
            .and_then(|status| status.parse::<Status>().ok())
            .ok_or_else(|| corrupt(&name, "unknown status"))?;
        let timeout = micros_field(&name, "timeout", timeout)?;
        let expiration = micros_field(&name, "exp", expiration)?;
        records.push(Scanned {
            name,
            status,
            timeout,
            expiration,
        });
    }
    Ok(())
}

/// `TIME`'s reply (seconds, microseconds) as microseconds since the Unix epoch.
fn server_time(clock: &[Value]) -> Option<i64> {
    let part = |value: Option<&Value>| -> Option<i64> {
        match value? {
            Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
            Value::Int(n) => Some(*n),
            _ => None,
        }
    };
    let seconds = part(clock.first())?;
    let micros = part(clock.get(1))?;
    seconds.checked_mul(1_000_000)?.checked_add(micros)
}

fn micros_field(
    name: &str,
    field: &str,
    raw: Option<Vec<u8>>,
) -> Result<Option<i64>, RepositoryError> {
    raw.map(|raw| {
        std::str::from_utf8(&raw)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or_else(|| corrupt(name, &format!("field {field} is not an integer")))
    })
    .transpose()
}

/// `text` with the characters `SCAN … MATCH` reads as a pattern escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_themselves_only() {
        assert_eq!(glob_escape("ana:"), "ana:");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn server_time_is_read_in_microseconds() {
        let clock = [
            Value::BulkString(b"1700000000".to_vec()),
            Value::BulkString(b"250".to_vec()),
        ];
        assert_eq!(server_time(&clock), Some(1_700_000_000_000_250));
        assert_eq!(server_time(&clock[..1]), None);
    }
}
