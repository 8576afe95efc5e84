//! Reading the idempotency headers: the key (both spellings), the reference time, durations.

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use super::duration::{format_duration, parse_duration};

/// The longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// A header that could not be accepted, and why (the text completes "The header ... ").
#[derive(Debug)]
pub(crate) struct HeaderProblem {
    pub(crate) header: HeaderName,
    pub(crate) reason: Cow<'static, str>,
}

fn problem(header: &HeaderName, reason: impl Into<Cow<'static, str>>) -> HeaderProblem {
    HeaderProblem {
        header: header.clone(),
        reason: reason.into(),
    }
}

/// The single value of `name`; two or more is an error.
fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a HeaderValue>, HeaderProblem> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(problem(name, "appears more than once"));
    }
    Ok(first)
}

/// Whether `key` is 1 to 255 visible ASCII characters.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

fn check_key(name: &HeaderName, key: &str) -> Result<(), HeaderProblem> {
    if key.is_empty() {
        Err(problem(name, "is empty"))
    } else if key.len() > MAX_KEY_LEN {
        Err(problem(
            name,
            format!("is longer than {MAX_KEY_LEN} characters"),
        ))
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        Err(problem(
            name,
            "may only hold visible ASCII characters (no spaces)",
        ))
    } else {
        Ok(())
    }
}

/// The key from the plain header (`X-Idempotency-Key: abc`) and the IETF one
/// (`Idempotency-Key: "abc"`); both present must agree.
pub(crate) fn read_key<'a>(
    headers: &'a HeaderMap,
    plain: &HeaderName,
    ietf: Option<&HeaderName>,
) -> Result<Option<Cow<'a, str>>, HeaderProblem> {
    let plain_key = match single(headers, plain)? {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .map_err(|_| problem(plain, "may only hold visible ASCII characters"))?
                .trim_matches(|c: char| c == ' ' || c == '\t');
            check_key(plain, key)?;
            Some(Cow::Borrowed(key))
        }
    };
    let Some(ietf) = ietf.filter(|ietf| *ietf != plain) else {
        return Ok(plain_key);
    };
    let ietf_key = match single(headers, ietf)? {
        None => None,
        Some(value) => {
            let key = parse_sf_string(value.as_bytes()).ok_or_else(|| {
                problem(
                    ietf,
                    "is not a structured-field string such as \"8e03978e-40d5-43e8-bc93-6894a57f9324\"",
                )
            })?;
            check_key(ietf, &key)?;
            Some(Cow::Owned(key))
        }
    };
    match (plain_key, ietf_key) {
        (Some(a), Some(b)) if a != b => Err(problem(
            plain,
            format!("disagrees with the {} header", display_name(ietf)),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// The key of an `Idempotency-Key` value: an RFC 8941 item (parsed by `sfv`) whose bare item
/// is a string (`"abc"`, `"a\"b"`); parameters are allowed and ignored (`"abc";p=1` is `abc`),
/// as the IETF draft says unknown ones must be.
pub(crate) fn parse_sf_string(bytes: &[u8]) -> Option<String> {
    let item: sfv::Item = sfv::Parser::new(bytes)
        .with_version(sfv::Version::Rfc8941)
        .parse()
        .ok()?;
    match item.bare_item {
        sfv::BareItem::String(key) => Some(key.as_str().to_owned()),
        _ => None,
    }
}

/// The RFC 3339 reference time of `name`, refusing one more than `max_skew` ahead of `now`
/// (read only when the header is there).
pub(crate) fn read_reference_time(
    headers: &HeaderMap,
    name: &HeaderName,
    now: impl FnOnce() -> DateTime<Utc>,
    max_skew: Duration,
) -> Result<Option<DateTime<Utc>>, HeaderProblem> {
    let Some(value) = single(headers, name)? else {
        return Ok(None);
    };
    let at = value
        .to_str()
        .ok()
        .and_then(|text| DateTime::parse_from_rfc3339(text.trim()).ok())
        .ok_or_else(|| problem(name, "is not an RFC 3339 time such as 2025-01-31T12:00:00Z"))?
        .with_timezone(&Utc);
    let latest = chrono::TimeDelta::from_std(max_skew)
        .ok()
        .and_then(|skew| now().checked_add_signed(skew))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    if at > latest {
        return Err(problem(
            name,
            format!(
                "is more than {} ahead of the server's clock",
                format_duration(max_skew)
            ),
        ));
    }
    Ok(Some(at))
}

/// The duration in `name`, refused when below `min` or above `max`. Zero means "never", so it
/// is above any maximum (and below no minimum).
pub(crate) fn read_duration(
    headers: &HeaderMap,
    name: &HeaderName,
    min: Option<Duration>,
    max: Option<Duration>,
) -> Result<Option<Duration>, HeaderProblem> {
    let Some(value) = single(headers, name)? else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| problem(name, "is not a duration such as 10s, 1h30m or 2 hours"))?;
    let duration = parse_duration(text).map_err(|error| problem(name, error.to_string()))?;
    check_max(name, duration, max)?;
    check_min(name, duration, min)?;
    Ok(Some(duration))
}

fn check_min(
    name: &HeaderName,
    duration: Duration,
    min: Option<Duration>,
) -> Result<(), HeaderProblem> {
    match min {
        Some(min) if !duration.is_zero() && duration < min => Err(problem(
            name,
            format!("is below the server's minimum of {}", format_duration(min)),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn check_max(
    name: &HeaderName,
    duration: Duration,
    max: Option<Duration>,
) -> Result<(), HeaderProblem> {
    match max {
        Some(max) if duration.is_zero() => Err(problem(
            name,
            format!(
                "is 0 (never), above the server's maximum of {}",
                format_duration(max)
            ),
        )),
        Some(max) if duration > max => Err(problem(
            name,
            format!("exceeds the server's maximum of {}", format_duration(max)),
        )),
        _ => Ok(()),
    }
}

/// `x-idempotency-key` → `X-Idempotency-Key`, for messages.
pub(crate) fn display_name(name: &HeaderName) -> String {
    name.as_str()
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sf_strings() {
        assert_eq!(parse_sf_string(b"\"abc\"").as_deref(), Some("abc"));
        assert_eq!(parse_sf_string(b"  \"a b\" ").as_deref(), Some("a b"));
        assert_eq!(
            parse_sf_string(br#""a\"b\\c""#).as_deref(),
            Some(r#"a"b\c"#)
        );
        assert_eq!(parse_sf_string(b"\"\"").as_deref(), Some(""));
        // Parameters are allowed and ignored.
        assert_eq!(parse_sf_string(b"\"a\"; p=1").as_deref(), Some("a"));
        assert_eq!(parse_sf_string(b"\"a\";p;q=?0").as_deref(), Some("a"));
        for bad in [
            &b"abc"[..],
            b"\"abc",
            b"abc\"",
            b"\"",
            b"",
            b"  ",
            b"\"a\"b\"",
            b"\"a\\b\"",
            b"\"a\";",
            b"token",
            b"42",
            b"\"caf\xc3\xa9\"",
            b"\"tab\there\"",
        ] {
            assert_eq!(
                parse_sf_string(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn names_display_capitalized() {
        assert_eq!(
            display_name(&HeaderName::from_static("x-idempotency-key")),
            "X-Idempotency-Key"
        );
    }
}

/// The `wait` preference of the request's `Prefer` headers (RFC 7240): `Prefer: wait=5`, in
/// whole seconds, among other preferences (`respond-async, wait=10`), the value optionally
/// quoted; the first `wait` wins. A preference the server cannot read is ignored, as RFC 7240
/// asks: `None`.
pub(crate) fn read_prefer_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all(http::header::HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|preference| {
            // Parameters of a preference follow `;`: only its own token and value count.
            let preference = preference.split(';').next()?;
            let (name, value) = preference.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let value = value.trim().trim_matches('"');
            Some(value.parse::<u64>().ok().map(Duration::from_secs))
        })
        .flatten()
}

#[cfg(test)]
mod prefer_tests {
    use super::*;

    fn wait(values: &[&str]) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                "prefer",
                HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("")),
            );
        }
        read_prefer_wait(&headers)
    }

    #[test]
    fn the_wait_preference_is_read_among_others() {
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(wait(&["wait=5"]), secs(5));
        assert_eq!(wait(&["respond-async, wait=10"]), secs(10));
        assert_eq!(wait(&["return=minimal", "Wait = \"7\""]), secs(7));
        assert_eq!(wait(&["wait=3; foo=bar"]), secs(3));
        assert_eq!(wait(&["handling=lenient"]), None);
        assert_eq!(wait(&["wait=soon"]), None);
        assert_eq!(wait(&["wait=-1"]), None);
        assert_eq!(wait(&[]), None);
    }
}
