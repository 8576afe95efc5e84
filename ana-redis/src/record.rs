//! Records of the hash layout, written by earlier versions of this crate (one field per
//! part of the record): still read, so that a rolling upgrade keeps replaying and taking over
//! them. This crate writes records in the string layout (`layout.rs`).

use ana_core::chrono::{DateTime, Utc};
use ana_core::{FailureKind, Fingerprint, RepositoryError, Status, TrackedOperation};
use redis::Value;

/// Hash fields, named in errors. Times are integer microseconds since the Unix epoch.
const REFERENCE_TIME: &str = "ref";
const STARTED_AT: &str = "start";
const TIMEOUT: &str = "timeout";
const EXPIRATION: &str = "exp";
const FINISHED_AT: &str = "fin";
const ERROR_COUNT: &str = "errs";
const ATTEMPT: &str = "att";

/// The largest time magnitude written, in microseconds: Lua numbers are doubles, exact up to
/// 2^53 (about the year 2255). Later times are stored as this one.
pub(crate) const MAX_MICROS: i64 = (1 << 53) - 1;

/// `at` as stored: microseconds, clamped to what the scripts compute with exactly.
pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros().clamp(-MAX_MICROS, MAX_MICROS)
}

/// The result bytes that mark "could not be encoded" in records whose writer sets `res` on
/// every Finished record: read as no result.
const UNENCODABLE_MARKER: &[u8] = b"\xffana: the result could not be encoded\xff";

/// The kind of a failure stored without a `fail` field, from its message: the default
/// message of a kind (the texts stored for cancellations, expirations and transaction
/// failures), `Got panic "…"` for a panic, the operation's own error otherwise.
pub(crate) fn kind_of_message(message: &[u8]) -> FailureKind {
    FailureKind::ALL
        .iter()
        .copied()
        .filter(|kind| *kind != FailureKind::Error && *kind != FailureKind::Panic)
        .find(|kind| kind.message().as_bytes() == message)
        .unwrap_or(if message.starts_with(b"Got panic \"") {
            FailureKind::Panic
        } else {
            FailureKind::Error
        })
}

/// A duration in microseconds, clamped so that `now + duration` stays exact in Lua.
pub(crate) fn duration_micros(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_micros()).map_or(MAX_MICROS / 2, |us| us.min(MAX_MICROS / 2))
}

/// Reads a record from its hash, given as the reply of `HGETALL` (a flat array of field,
/// value pairs, or a map). `None` when the hash is empty (no such key).
pub(crate) fn decode(
    target: &str,
    key: &str,
    name: &str,
    hash: Value,
) -> Result<Option<TrackedOperation>, RepositoryError> {
    let pairs: Vec<(Value, Value)> = match hash {
        Value::Nil => Vec::new(),
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(corrupt(name, "the hash reply has an odd number of items"));
            }
            let mut items = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(field), Some(value)) = (items.next(), items.next()) {
                pairs.push((field, value));
            }
            pairs
        }
        other => return Err(corrupt(name, &format!("unexpected hash reply {other:?}"))),
    };
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut fields = Fields::default();
    for (field, value) in pairs {
        let (Some(field), Some(value)) = (bytes(field), bytes(value)) else {
            return Err(corrupt(name, "a hash field or value is not a string"));
        };
        let slot = match field.as_slice() {
            b"status" => &mut fields.status,
            b"fp" => &mut fields.fingerprint,
            b"ref" => &mut fields.reference_time,
            b"start" => &mut fields.started_at,
            b"timeout" => &mut fields.timeout,
            b"exp" => &mut fields.expiration,
            b"fin" => &mut fields.finished_at,
            b"res" => &mut fields.result,
            b"err" => &mut fields.error,
            b"fail" => &mut fields.failure,
            b"errs" => &mut fields.error_count,
            b"att" => &mut fields.attempt,
            // `tok` (the attempt's ownership token) and fields of later versions.
            _ => continue,
        };
        *slot = Some(value);
    }
    fields.into_record(target, key, name).map(Some)
}

#[derive(Default)]
struct Fields {
    status: Option<Vec<u8>>,
    fingerprint: Option<Vec<u8>>,
    reference_time: Option<Vec<u8>>,
    started_at: Option<Vec<u8>>,
    timeout: Option<Vec<u8>>,
    expiration: Option<Vec<u8>>,
    finished_at: Option<Vec<u8>>,
    result: Option<Vec<u8>>,
    error: Option<Vec<u8>>,
    failure: Option<Vec<u8>>,
    error_count: Option<Vec<u8>>,
    attempt: Option<Vec<u8>>,
}

impl Fields {
    fn into_record(
        self,
        target: &str,
        key: &str,
        name: &str,
    ) -> Result<TrackedOperation, RepositoryError> {
        let status = self
            .status
            .ok_or_else(|| corrupt(name, "no status"))
            .and_then(|raw| {
                std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|text| text.parse::<Status>().ok())
                    .ok_or_else(|| corrupt(name, "unknown status"))
            })?;
        let fingerprint = self
            .fingerprint
            .as_deref()
            .and_then(Fingerprint::from_slice)
            .ok_or_else(|| corrupt(name, "missing or malformed fingerprint"))?;
        let reference_time = time(name, REFERENCE_TIME, self.reference_time)?
            .ok_or_else(|| corrupt(name, "no reference time"))?;
        let failure = match (status, self.failure, &self.error) {
            (Status::Failed, Some(raw), _) => Some(
                std::str::from_utf8(&raw)
                    .ok()
                    .and_then(|text| text.parse::<FailureKind>().ok())
                    .ok_or_else(|| corrupt(name, "unknown failure kind"))?,
            ),
            (Status::Failed, None, error) => {
                Some(kind_of_message(error.as_deref().unwrap_or_default()))
            }
            _ => None,
        };
        Ok(TrackedOperation {
            target: target.to_owned(),
            key: key.to_owned(),
            status,
            fingerprint,
            reference_time,
            started_at: time(name, STARTED_AT, self.started_at)?,
            timeout: time(name, TIMEOUT, self.timeout)?,
            expiration: time(name, EXPIRATION, self.expiration)?,
            finished_at: time(name, FINISHED_AT, self.finished_at)?,
            result: self
                .result
                .filter(|result| status == Status::Finished && result != UNENCODABLE_MARKER),
            error: self
                .error
                .filter(|_| status == Status::Failed)
                .map(|raw| String::from_utf8_lossy(&raw).into_owned()),
            failure,
            error_count: integer::<u64>(name, ERROR_COUNT, self.error_count)?
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            attempt: integer(name, ATTEMPT, self.attempt)?.unwrap_or(0),
        })
    }
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.into_bytes()),
        Value::Int(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

fn integer<T: std::str::FromStr>(
    key: &str,
    field: &str,
    raw: Option<Vec<u8>>,
) -> Result<Option<T>, RepositoryError> {
    raw.map(|raw| {
        std::str::from_utf8(&raw)
            .ok()
            .and_then(|text| text.parse::<T>().ok())
            .ok_or_else(|| corrupt(key, &format!("field {field} is not an integer")))
    })
    .transpose()
}

pub(crate) fn time(
    key: &str,
    field: &str,
    raw: Option<Vec<u8>>,
) -> Result<Option<DateTime<Utc>>, RepositoryError> {
    integer::<i64>(key, field, raw)?
        .map(|us| {
            DateTime::from_timestamp_micros(us)
                .ok_or_else(|| corrupt(key, &format!("field {field} is out of range")))
        })
        .transpose()
}

pub(crate) fn corrupt(name: &str, what: &str) -> RepositoryError {
    RepositoryError::Corrupt {
        detail: format!("record {name:?}: {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_stored_without_a_kind_get_the_kind_of_their_message() {
        for kind in [
            FailureKind::Cancelled,
            FailureKind::TimedOut,
            FailureKind::Expired,
            FailureKind::BeginFailed,
            FailureKind::CommitFailed,
        ] {
            assert_eq!(kind_of_message(kind.message().as_bytes()), kind);
        }
        assert_eq!(kind_of_message(b"Got panic \"boom\""), FailureKind::Panic);
        assert_eq!(kind_of_message(b"card declined"), FailureKind::Error);
        assert_eq!(kind_of_message(b""), FailureKind::Error);
    }
}
