//! What the commands print: a table for people, or one JSON object for scripts.

use std::fmt::Write as _;

use ana_core::chrono::{DateTime, SecondsFormat, Utc};
use ana_core::{Cleaned, Codec, Forgotten, Stats, Status, TrackedOperation};
use ana_http::{RecordedResponse, RecordedResponseCodec};
use serde_json::{Value, json};

/// How much of a result or body a table shows.
const PREVIEW_BYTES: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Aligned rows, for people.
    Table,
    /// One JSON object, for scripts.
    Json,
}

/// Rows of a two-column table, the first column padded to its widest cell.
fn table(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, value) in rows {
        let _ = writeln!(out, "{name:<width$}  {value}");
    }
    out
}

fn json_line(value: &Value) -> String {
    format!("{value}\n")
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn maybe_time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "-".to_owned(), time)
}

/// `bytes` as text a terminal shows safely, cut to [`PREVIEW_BYTES`]: UTF-8 text with its
/// control characters escaped, other bytes as `\xNN`.
fn preview(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(PREVIEW_BYTES)];
    let mut text = String::with_capacity(cut.len());
    for chunk in cut.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                text.extend(c.escape_default());
            } else {
                text.push(c);
            }
        }
        text.push_str(&chunk.invalid().escape_ascii().to_string());
    }
    if cut.len() < bytes.len() {
        text.push('…');
    }
    text
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// The result as the HTTP layer recorded it, when it reads as one (HTTP targets are
/// `[METHOD]/path`).
fn http_response(record: &TrackedOperation) -> Option<RecordedResponse> {
    let result = record.result.as_deref()?;
    if !record.target.starts_with('[') {
        return None;
    }
    RecordedResponseCodec.decode(result).ok()
}

pub(crate) fn record(record: &TrackedOperation, format: Format) -> String {
    let mut fingerprint = String::new();
    record.fingerprint.push_hex(&mut fingerprint);
    let response = http_response(record);
    if format == Format::Json {
        let result = record
            .result
            .as_deref()
            .map(|bytes| match std::str::from_utf8(bytes) {
                Ok(text) => json!({ "size": bytes.len(), "text": text }),
                Err(_) => json!({ "size": bytes.len(), "hex": hex(bytes) }),
            });
        let http = response.as_ref().map(|response| {
            let headers: Vec<Value> = response
                .headers()
                .iter()
                .map(|(name, value)| {
                    json!([name.as_str(), String::from_utf8_lossy(value.as_bytes())])
                })
                .collect();
            json!({
                "status": response.status().as_u16(),
                "headers": headers,
                "body_stored": response.is_body_stored(),
                "body": std::str::from_utf8(response.body()).ok(),
                "body_size": response.body().len(),
            })
        });
        return json_line(&json!({
            "target": record.target,
            "key": record.key,
            "status": record.status.as_str(),
            "attempt": record.attempt,
            "error_count": record.error_count,
            "fingerprint": fingerprint,
            "reference_time": time(record.reference_time),
            "started_at": record.started_at.map(time),
            "timeout": record.timeout.map(time),
            "expiration": record.expiration.map(time),
            "finished_at": record.finished_at.map(time),
            "failure": record.failure.map(|kind| kind.as_str()),
            "error": record.error,
            "result": result,
            "http_response": http,
        }));
    }
    let mut rows = vec![
        ("target", record.target.clone()),
        ("key", record.key.clone()),
        ("status", record.status.to_string()),
        ("attempt", record.attempt.to_string()),
        ("errors", record.error_count.to_string()),
        ("fingerprint", fingerprint),
        ("reference time", time(record.reference_time)),
        ("started at", maybe_time(record.started_at)),
        ("timeout", maybe_time(record.timeout)),
        ("expiration", maybe_time(record.expiration)),
        ("finished at", maybe_time(record.finished_at)),
    ];
    if record.status == Status::Failed {
        let failure = record.failure.map_or("-", |kind| kind.as_str());
        rows.push(("failure", failure.to_owned()));
        rows.push(("error", record.error.clone().unwrap_or_else(|| "-".into())));
    }
    match (&record.result, response) {
        (Some(_), Some(response)) => {
            rows.push(("response", response.status().to_string()));
            for (name, value) in response.headers() {
                rows.push(("  header", format!("{name}: {}", preview(value.as_bytes()))));
            }
            let body = if response.is_body_stored() {
                format!(
                    "{} bytes: {}",
                    response.body().len(),
                    preview(response.body())
                )
            } else {
                "not stored (too large)".to_owned()
            };
            rows.push(("  body", body));
        }
        (Some(result), None) => {
            rows.push((
                "result",
                format!("{} bytes: {}", result.len(), preview(result)),
            ));
        }
        (None, _) if record.status == Status::Finished => {
            rows.push(("result", "none (it could not be encoded)".to_owned()));
        }
        (None, _) => {}
    }
    table(&rows)
}

pub(crate) fn not_found(target: &str, key: &str, format: Format) -> String {
    match format {
        Format::Json => json_line(&json!({ "target": target, "key": key, "found": false })),
        Format::Table => format!("no record for target {target} and key {key}\n"),
    }
}

pub(crate) fn forgotten(target: &str, key: &str, forgotten: Forgotten, format: Format) -> String {
    let (outcome, timeout) = match forgotten {
        Forgotten::Deleted => ("deleted", None),
        Forgotten::Held { timeout } => ("held", Some(timeout)),
        Forgotten::NotFound => ("not_found", None),
        // A kind of answer this build does not know.
        _ => ("unknown", None),
    };
    if format == Format::Json {
        let mut value = json!({ "target": target, "key": key, "outcome": outcome });
        if let (Some(timeout), Value::Object(map)) = (timeout, &mut value) {
            map.insert("timeout".into(), json!(timeout.map(time)));
        }
        return json_line(&value);
    }
    match forgotten {
        Forgotten::Deleted => format!("deleted the record of {target} {key}\n"),
        Forgotten::Held {
            timeout: Some(timeout),
        } => format!(
            "refused: the record of {target} {key} is running, held until {}; \
             wait for that, or pass --force to delete it anyway\n",
            time(timeout)
        ),
        Forgotten::Held { timeout: None } => format!(
            "refused: the record of {target} {key} is running, held until its holder finishes \
             (no timeout); pass --force to delete it anyway\n"
        ),
        _ => format!("no record for target {target} and key {key}\n"),
    }
}

pub(crate) fn stats(stats: &Stats, format: Format) -> String {
    if format == Format::Json {
        return json_line(&json!({
            "ready": stats.ready,
            "running": stats.running,
            "finished": stats.finished,
            "failed": stats.failed,
            "total": stats.total(),
            "timed_out": stats.timed_out,
            "expired": stats.expired,
        }));
    }
    let count = |n: u64| format!("{n:>9}");
    table(&[
        ("status", format!("{:>9}", "records")),
        ("ready", count(stats.ready)),
        ("running", count(stats.running)),
        ("finished", count(stats.finished)),
        ("failed", count(stats.failed)),
        ("total", count(stats.total())),
        (
            "timed out",
            format!("{}  running past their timeout", count(stats.timed_out)),
        ),
        (
            "expired",
            format!(
                "{}  past their expiration, still stored",
                count(stats.expired)
            ),
        ),
    ])
}

pub(crate) fn cleaned(cleaned: &Cleaned, limit: u32, format: Format) -> String {
    let limit_reached = cleaned.failed >= u64::from(limit) || cleaned.deleted >= u64::from(limit);
    if format == Format::Json {
        return json_line(&json!({
            "failed": cleaned.failed,
            "deleted": cleaned.deleted,
            "expires_itself": cleaned.expires_itself,
            "limit": limit,
            "limit_reached": limit_reached,
        }));
    }
    let deleted = if cleaned.expires_itself {
        "none: the store deletes expired records itself (TTL)".to_owned()
    } else {
        cleaned.deleted.to_string()
    };
    let mut out = table(&[
        ("timed out, now failed", cleaned.failed.to_string()),
        ("expired, deleted", deleted),
    ]);
    if limit_reached {
        let _ = writeln!(
            out,
            "the limit of {limit} was reached: run it again for more"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_escape_control_characters_and_cut() {
        assert_eq!(preview(r#"{"a":"é"}"#.as_bytes()), r#"{"a":"é"}"#);
        assert_eq!(preview(b"a\nb\x1b[31m\xff"), "a\\nb\\u{1b}[31m\\xff");
        let long = vec![b'x'; PREVIEW_BYTES + 1];
        assert_eq!(preview(&long), format!("{}…", "x".repeat(PREVIEW_BYTES)));
    }
}
