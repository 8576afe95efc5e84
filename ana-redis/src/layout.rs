//! The stored form of a record: one Redis string, a fixed-width ASCII header followed by the
//! failure kind and the data (the result of a Finished record, the message of a Failed one).
//!
//! One string instead of a hash of fields: Redis reads, writes and returns a record in one
//! command each, the claim of a new key is a plain `SET … NX GET` and the replay of a
//! Finished record the same command's answer, and the scripts cut the header with
//! `string.sub` at fixed offsets (Redis's Lua 5.1 has no `string.unpack`). Every field has a
//! fixed width so that the scripts (`lua/prelude.lua`, `AT_*`) and this module agree on
//! offsets; a unit test checks that they do.
//!
//! | bytes | field |
//! |---|---|
//! | 0 | the layout's marker, `A` |
//! | 1 | status: `0` Ready, `1` Running, `2` Finished, `3` Failed |
//! | 2 | `1` when the record holds data (the result, or the failure's message), else `0` |
//! | 3–34 | the payload fingerprint, 32 lower-case hex digits |
//! | 35–54 | the attempt number, 20 decimal digits |
//! | 55–74 | the claim number of the current attempt, 20 decimal digits |
//! | 75–91, 92–108, 109–125, 126–142, 143–159 | reference time, start of the current attempt, its timeout, expiration, finish time: microseconds since the Unix epoch, 17 characters (`%017d`, sign first), or 17 `_` when absent |
//! | 160–169 | failed attempts, 10 decimal digits |
//! | 170–171 | the length of the failure kind's name, 2 decimal digits (`00` unless Failed) |
//! | 172… | the failure kind's name, then the data |

use ana_core::chrono::{DateTime, Utc};
use ana_core::{FailureKind, Fingerprint, RepositoryError, Status, TrackedOperation};

use crate::record::{corrupt, kind_of_message, micros};

/// The first byte of every record of this layout.
pub(crate) const MARKER: u8 = b'A';
pub(crate) const AT_STATUS: usize = 1;
pub(crate) const AT_HAS_DATA: usize = 2;
pub(crate) const AT_FINGERPRINT: usize = 3;
pub(crate) const AT_ATTEMPT: usize = 35;
pub(crate) const AT_CLAIM: usize = 55;
pub(crate) const AT_REFERENCE_TIME: usize = 75;
pub(crate) const AT_STARTED_AT: usize = 92;
pub(crate) const AT_TIMEOUT: usize = 109;
pub(crate) const AT_EXPIRATION: usize = 126;
pub(crate) const AT_FINISHED_AT: usize = 143;
pub(crate) const AT_ERROR_COUNT: usize = 160;
pub(crate) const AT_KIND_LENGTH: usize = 170;
/// The header's length: the failure kind starts here.
pub(crate) const HEADER: usize = 172;

const NUMBER_WIDTH: usize = 20;
const TIME_WIDTH: usize = 17;
const COUNT_WIDTH: usize = 10;
const NO_TIME: &[u8; TIME_WIDTH] = b"_________________";

/// The header's fields. Times are microseconds since the Unix epoch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub(crate) status: Status,
    pub(crate) has_data: bool,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) attempt: u64,
    pub(crate) claim: u64,
    pub(crate) reference_time: i64,
    pub(crate) started_at: Option<i64>,
    pub(crate) timeout: Option<i64>,
    pub(crate) expiration: Option<i64>,
    pub(crate) finished_at: Option<i64>,
    pub(crate) error_count: u32,
}

impl Header {
    /// Appends the header and the failure kind's name (`""` unless Failed) to `out`.
    pub(crate) fn write(&self, kind: &str, out: &mut Vec<u8>) {
        out.reserve(HEADER + kind.len());
        out.push(MARKER);
        out.push(status_byte(self.status));
        out.push(if self.has_data { b'1' } else { b'0' });
        let mut hex = String::with_capacity(2 * Fingerprint::LEN);
        self.fingerprint.push_hex(&mut hex);
        out.extend_from_slice(hex.as_bytes());
        push_lease(out, self.attempt, self.claim);
        for time in [
            Some(self.reference_time),
            self.started_at,
            self.timeout,
            self.expiration,
            self.finished_at,
        ] {
            match time {
                Some(us) => {
                    let us = us.clamp(-MAX_TIME, MAX_TIME);
                    push_padded(out, us < 0, us.unsigned_abs(), 17);
                }
                None => out.extend_from_slice(NO_TIME),
            }
        }
        // A kind's name is a short identifier; a longer one is cut to what the field holds.
        let kind = &kind.as_bytes()[..kind.len().min(99)];
        push_padded(out, false, u64::from(self.error_count), 10);
        push_padded(out, false, kind.len() as u64, 2);
        out.extend_from_slice(kind);
    }
}

/// Appends `magnitude`, with a `-` first when `negative`, zero-padded to `width` characters
/// as `{:0width$}` writes it (never cut). Every claim writes a header: itoa's digits, without
/// `core::fmt`'s machinery, which profiles of the claim showed.
fn push_padded(out: &mut Vec<u8>, negative: bool, magnitude: u64, width: usize) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(magnitude);
    if negative {
        out.push(b'-');
    }
    let padding = width.saturating_sub(digits.len() + usize::from(negative));
    out.resize(out.len() + padding, b'0');
    out.extend_from_slice(digits.as_bytes());
}

/// The largest time magnitude that fits the 17 characters with its sign.
const MAX_TIME: i64 = 9_999_999_999_999_999;

fn status_byte(status: Status) -> u8 {
    match status {
        Status::Ready => b'0',
        Status::Running => b'1',
        Status::Finished => b'2',
        Status::Failed => b'3',
    }
}

/// The status of a stored status byte.
pub(crate) fn status_of(byte: u8) -> Option<Status> {
    match byte {
        b'0' => Some(Status::Ready),
        b'1' => Some(Status::Running),
        b'2' => Some(Status::Finished),
        b'3' => Some(Status::Failed),
        _ => None,
    }
}

/// `record` as stored: what [`RedisRepository::restore`](crate::RedisRepository::restore)
/// writes (claim number 0: a restored record has no holder).
pub(crate) fn encode(record: &TrackedOperation) -> Vec<u8> {
    let data = match record.status {
        Status::Finished => record.result.as_deref(),
        Status::Failed => record.error.as_deref().map(str::as_bytes),
        Status::Ready | Status::Running => None,
    };
    let kind = match (record.status, record.failure) {
        (Status::Failed, Some(kind)) => kind.as_str(),
        _ => "",
    };
    let header = Header {
        status: record.status,
        has_data: data.is_some(),
        fingerprint: record.fingerprint,
        attempt: record.attempt,
        claim: 0,
        reference_time: micros(record.reference_time),
        started_at: record.started_at.map(micros),
        timeout: record.timeout.map(micros),
        expiration: record.expiration.map(micros),
        finished_at: record.finished_at.map(micros),
        error_count: record.error_count,
    };
    let mut out = Vec::with_capacity(HEADER + kind.len() + data.map_or(0, <[u8]>::len));
    header.write(kind, &mut out);
    out.extend_from_slice(data.unwrap_or_default());
    out
}

/// The attempt and claim numbers as the header holds them, side by side: what a finish or a
/// renewal compares with the stored ones.
pub(crate) fn lease_field(attempt: u64, claim: u64) -> Vec<u8> {
    let mut field = Vec::with_capacity(40);
    push_lease(&mut field, attempt, claim);
    field
}

/// Appends the attempt and claim numbers, 20 digits each: the header's lease, which a finish
/// sends as [`lease_field`] for the scripts to compare.
fn push_lease(out: &mut Vec<u8>, attempt: u64, claim: u64) {
    push_padded(out, false, attempt, 20);
    push_padded(out, false, claim, 20);
}

/// Reads the header of a stored string; `name` (the Redis key) is for errors.
pub(crate) fn read_header(name: &str, value: &[u8]) -> Result<Header, RepositoryError> {
    if value.len() < HEADER || value[0] != MARKER {
        return Err(corrupt(name, "not a record of this store's layout"));
    }
    let status = status_of(value[AT_STATUS]).ok_or_else(|| corrupt(name, "unknown status"))?;
    let has_data = match value[AT_HAS_DATA] {
        b'0' => false,
        b'1' => true,
        _ => return Err(corrupt(name, "malformed data flag")),
    };
    let fingerprint = from_hex(&value[AT_FINGERPRINT..AT_ATTEMPT])
        .ok_or_else(|| corrupt(name, "malformed fingerprint"))?;
    let number = |at: usize, width: usize, what: &str| {
        std::str::from_utf8(&value[at..at + width])
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| corrupt(name, &format!("malformed {what}")))
    };
    let time = |at: usize, what: &str| -> Result<Option<i64>, RepositoryError> {
        let field = &value[at..at + TIME_WIDTH];
        if field == NO_TIME {
            return Ok(None);
        }
        std::str::from_utf8(field)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .map(Some)
            .ok_or_else(|| corrupt(name, &format!("malformed {what}")))
    };
    Ok(Header {
        status,
        has_data,
        fingerprint,
        attempt: number(AT_ATTEMPT, NUMBER_WIDTH, "attempt")?,
        claim: number(AT_CLAIM, NUMBER_WIDTH, "claim number")?,
        reference_time: time(AT_REFERENCE_TIME, "reference time")?
            .ok_or_else(|| corrupt(name, "no reference time"))?,
        started_at: time(AT_STARTED_AT, "start time")?,
        timeout: time(AT_TIMEOUT, "timeout")?,
        expiration: time(AT_EXPIRATION, "expiration")?,
        finished_at: time(AT_FINISHED_AT, "finish time")?,
        error_count: u32::try_from(number(AT_ERROR_COUNT, COUNT_WIDTH, "error count")?)
            .map_err(|_| corrupt(name, "malformed error count"))?,
    })
}

/// Reads a stored string back into a record. `value` is consumed: the result is its tail.
pub(crate) fn decode(
    target: &str,
    key: &str,
    name: &str,
    mut value: Vec<u8>,
) -> Result<TrackedOperation, RepositoryError> {
    let header = read_header(name, &value)?;
    let kind_length = std::str::from_utf8(&value[AT_KIND_LENGTH..HEADER])
        .ok()
        .and_then(|text| text.parse::<usize>().ok())
        .filter(|length| HEADER + length <= value.len())
        .ok_or_else(|| corrupt(name, "malformed failure kind length"))?;
    let failure = match header.status {
        Status::Failed if kind_length > 0 => Some(
            std::str::from_utf8(&value[HEADER..HEADER + kind_length])
                .ok()
                .and_then(|text| text.parse::<FailureKind>().ok())
                .ok_or_else(|| corrupt(name, "unknown failure kind"))?,
        ),
        Status::Failed => Some(kind_of_message(if header.has_data {
            &value[HEADER..]
        } else {
            b""
        })),
        _ => None,
    };
    let time = |us: Option<i64>, what: &str| {
        us.map(|us| {
            DateTime::<Utc>::from_timestamp_micros(us)
                .ok_or_else(|| corrupt(name, &format!("{what} out of range")))
        })
        .transpose()
    };
    let reference_time = time(Some(header.reference_time), "reference time")?
        .ok_or_else(|| corrupt(name, "no reference time"))?;
    let started_at = time(header.started_at, "start time")?;
    let timeout = time(header.timeout, "timeout")?;
    let expiration = time(header.expiration, "expiration")?;
    let finished_at = time(header.finished_at, "finish time")?;
    // The data is the value's tail: moved down in place, not copied into a new buffer.
    let data = header.has_data.then(|| {
        value.drain(..HEADER + kind_length);
        value
    });
    let (result, error) = match header.status {
        Status::Finished => (data, None),
        Status::Failed => (
            None,
            data.map(|raw| match String::from_utf8(raw) {
                Ok(text) => text,
                Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
            }),
        ),
        Status::Ready | Status::Running => (None, None),
    };
    Ok(TrackedOperation {
        target: target.to_owned(),
        key: key.to_owned(),
        status: header.status,
        fingerprint: header.fingerprint,
        reference_time,
        started_at,
        timeout,
        expiration,
        result,
        error,
        failure,
        finished_at,
        error_count: header.error_count,
        attempt: header.attempt,
    })
}

fn from_hex(hex: &[u8]) -> Option<Fingerprint> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0_u8; Fingerprint::LEN];
    if hex.len() != 2 * Fingerprint::LEN {
        return None;
    }
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(Fingerprint::from_bytes(bytes))
}

/// The fingerprint as the header holds it, for the claim script to compare.
pub(crate) fn hex(fingerprint: &Fingerprint) -> String {
    let mut hex = String::with_capacity(2 * Fingerprint::LEN);
    fingerprint.push_hex(&mut hex);
    hex
}

#[cfg(test)]
mod tests {
    use ana_core::chrono::TimeDelta;

    use super::*;

    fn at(us: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(us).unwrap_or_default()
    }

    #[test]
    fn padded_numbers_are_written_as_the_format_macro_writes_them() {
        for value in [
            0,
            1,
            9,
            10,
            99,
            123_456,
            -1,
            -42,
            MAX_TIME,
            -MAX_TIME,
            i64::MIN + 1,
        ] {
            for width in [2, 10, 17, 20] {
                let mut out = b"x".to_vec();
                push_padded(&mut out, value < 0, value.unsigned_abs(), width);
                assert_eq!(
                    out,
                    format!("x{value:0width$}").into_bytes(),
                    "{value} in {width}"
                );
            }
        }
        let mut out = Vec::new();
        push_padded(&mut out, false, u64::MAX, 20);
        assert_eq!(out, u64::MAX.to_string().into_bytes());
    }

    #[test]
    fn records_round_trip() {
        let mut finished = TrackedOperation::new(
            "[POST]/t",
            "k",
            Status::Finished,
            Fingerprint::of("x"),
            at(1_700_000_000_000_001),
        );
        finished.started_at = Some(at(-5));
        finished.timeout = Some(at(1_700_000_030_000_000));
        finished.expiration = Some(at(1_700_086_400_000_000));
        finished.finished_at = Some(at(1_700_000_000_500_000));
        finished.result = Some(vec![0, 0xff, b'A', 10]);
        finished.error_count = u32::MAX;
        finished.attempt = u64::MAX;
        let mut failed =
            TrackedOperation::new("[POST]/t", "k", Status::Failed, Fingerprint::of("y"), at(0));
        failed.error = Some("card declined ✗".to_owned());
        failed.failure = Some(FailureKind::Cancelled);
        let mut no_message = failed.clone();
        no_message.error = None;
        let mut no_result = finished.clone();
        no_result.result = None;
        let mut running = finished.clone();
        running.status = Status::Running;
        running.result = None;
        running.finished_at = None;
        for record in [finished, failed, no_message, no_result, running] {
            let encoded = encode(&record);
            let decoded = decode("[POST]/t", "k", "name", encoded).unwrap();
            assert_eq!(decoded, record);
        }
    }

    #[test]
    fn failures_without_a_kind_get_the_kind_of_their_message() {
        let mut record = TrackedOperation::new(
            "t",
            "k",
            Status::Failed,
            Fingerprint::of("y"),
            at(0) + TimeDelta::seconds(1),
        );
        record.error = Some(FailureKind::Cancelled.message().to_owned());
        let decoded = decode("t", "k", "name", encode(&record)).unwrap();
        assert_eq!(decoded.failure, Some(FailureKind::Cancelled));
    }

    #[test]
    fn damaged_strings_are_corrupt() {
        let good = encode(&TrackedOperation::new(
            "t",
            "k",
            Status::Running,
            Fingerprint::of("z"),
            at(1),
        ));
        let mut cases = vec![b"not a record".to_vec(), good[..HEADER - 1].to_vec()];
        for (at, byte) in [
            (0, b'B'),
            (AT_STATUS, b'9'),
            (AT_HAS_DATA, b'x'),
            (AT_FINGERPRINT, b'G'),
            (AT_ATTEMPT + 3, b'x'),
            (AT_TIMEOUT + 4, b'x'),
            (AT_KIND_LENGTH, b'9'),
        ] {
            let mut damaged = good.clone();
            damaged[at] = byte;
            cases.push(damaged);
        }
        for case in cases {
            assert!(matches!(
                decode("t", "k", "name", case),
                Err(RepositoryError::Corrupt { .. })
            ));
        }
    }

    /// The scripts cut the header at the same offsets (1-based in Lua).
    #[test]
    fn the_scripts_use_the_same_offsets() {
        let prelude = include_str!("lua/prelude.lua");
        for (name, offset) in [
            ("AT_STATUS", AT_STATUS),
            ("AT_HAS_DATA", AT_HAS_DATA),
            ("AT_FINGERPRINT", AT_FINGERPRINT),
            ("AT_ATTEMPT", AT_ATTEMPT),
            ("AT_CLAIM", AT_CLAIM),
            ("AT_REFERENCE_TIME", AT_REFERENCE_TIME),
            ("AT_STARTED_AT", AT_STARTED_AT),
            ("AT_TIMEOUT", AT_TIMEOUT),
            ("AT_EXPIRATION", AT_EXPIRATION),
            ("AT_FINISHED_AT", AT_FINISHED_AT),
            ("AT_ERROR_COUNT", AT_ERROR_COUNT),
            ("AT_KIND_LENGTH", AT_KIND_LENGTH),
            ("HEADER", HEADER),
        ] {
            // HEADER is a length: the same number in both languages.
            let lua = if name == "HEADER" { offset } else { offset + 1 };
            let line = format!("local {name} = {lua}\n");
            assert!(prelude.contains(&line), "prelude.lua lacks {line:?}");
        }
        assert_eq!(AT_KIND_LENGTH + 2, HEADER);
        assert_eq!(AT_FINISHED_AT + TIME_WIDTH, AT_ERROR_COUNT);
    }
}
