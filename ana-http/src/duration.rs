//! Duration headers: Go's `time.ParseDuration` syntax, then humantime's.

use std::time::Duration;

/// Why a duration header could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Neither a Go duration (`1h30m`, `500ms`) nor a humantime one (`2 hours`, `1day`).
    #[error("is not a duration such as 10s, 1h30m, 500ms or 2 hours")]
    Invalid,
    /// The value starts with `-`.
    #[error("is negative")]
    Negative,
    /// The value does not fit: Go's limit (about 292 years) for a Go duration, `Duration`'s
    /// for a humantime one.
    #[error("is too large")]
    Overflow,
}

const NANOS_PER_SECOND: u128 = 1_000_000_000;
/// Go's `time.Duration` is an `int64` of nanoseconds: the same bound here.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Reads a duration written in Go's syntax (`300ms`, `1.5h`, `2h45m`, `1h30m10s`; units `ns`,
/// `us`, `µs`, `ms`, `s`, `m`, `h`; `0` alone) or, failing that, in humantime's (`1day`,
/// `2 hours 5min`). Surrounding whitespace is ignored; a negative value is refused.
///
/// ```
/// use std::time::Duration;
/// use ana_http::parse_duration;
///
/// assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
/// assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
/// assert_eq!(parse_duration("2 hours"), Ok(Duration::from_secs(7200)));
/// assert!(parse_duration("-1s").is_err());
/// assert!(parse_duration("10").is_err());
/// ```
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let input = input.trim_matches(|c: char| c.is_ascii_whitespace());
    match parse_go(input) {
        Ok(duration) => Ok(duration),
        Err(GoError::Syntax) => {
            if input.starts_with('-') {
                return Err(DurationError::Negative);
            }
            // humantime needs a unit too; "10" stays an error in both syntaxes.
            humantime::parse_duration(input).map_err(|error| match error {
                humantime::DurationError::NumberOverflow => DurationError::Overflow,
                _ => DurationError::Invalid,
            })
        }
        Err(GoError::Negative) => Err(DurationError::Negative),
        Err(GoError::Overflow) => Err(DurationError::Overflow),
    }
}

#[derive(Debug)]
enum GoError {
    Syntax,
    Negative,
    Overflow,
}

/// `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, or `0`, exactly as Go reads it, in checked arithmetic.
fn parse_go(input: &str) -> Result<Duration, GoError> {
    let (negative, mut rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(GoError::Syntax);
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // The integer part.
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, after) = rest.split_at(digits);
        rest = after;
        // The fraction.
        let mut fraction = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let digits = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            (fraction, rest) = after_dot.split_at(digits);
            if whole.is_empty() && fraction.is_empty() {
                return Err(GoError::Syntax);
            }
        } else if whole.is_empty() {
            return Err(GoError::Syntax);
        }
        // The unit: everything up to the next digit or dot.
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(index, _)| index);
        let (unit, after) = rest.split_at(unit_len);
        rest = after;
        let unit = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SECOND,
            "m" => 60 * NANOS_PER_SECOND,
            "h" => 3_600 * NANOS_PER_SECOND,
            _ => return Err(GoError::Syntax),
        };
        let mut value: u128 = 0;
        for digit in whole.bytes() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(digit - b'0')))
                .filter(|v| *v <= MAX_NANOS)
                .ok_or(GoError::Overflow)?;
        }
        let mut nanos = value.checked_mul(unit).ok_or(GoError::Overflow)?;
        // Digits past the 19th cannot change the nanoseconds of any unit: ignore them.
        let mut scale: u128 = 1;
        let mut numerator: u128 = 0;
        for digit in fraction.bytes().take(19) {
            numerator = numerator * 10 + u128::from(digit - b'0');
            scale *= 10;
        }
        nanos = nanos
            .checked_add(numerator * unit / scale)
            .ok_or(GoError::Overflow)?;
        total = total
            .checked_add(nanos)
            .filter(|total| *total <= MAX_NANOS)
            .ok_or(GoError::Overflow)?;
    }
    if negative && total != 0 {
        return Err(GoError::Negative);
    }
    let seconds = u64::try_from(total / NANOS_PER_SECOND).map_err(|_| GoError::Overflow)?;
    let nanos = u32::try_from(total % NANOS_PER_SECOND).map_err(|_| GoError::Overflow)?;
    Ok(Duration::new(seconds, nanos))
}

/// `duration` in Go's syntax (`1h30m0s` is written `1h30m`), for messages.
pub(crate) fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration)
        .to_string()
        .replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> Duration {
        parse_duration(input).unwrap_or_else(|error| panic!("{input:?}: {error}"))
    }

    #[test]
    fn go_syntax() {
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("+0"), Duration::ZERO);
        assert_eq!(ok("-0"), Duration::ZERO);
        assert_eq!(ok("300ms"), Duration::from_millis(300));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("2h45m"), Duration::from_secs(9900));
        assert_eq!(ok("1h30m10s"), Duration::from_secs(5410));
        assert_eq!(ok("10s"), Duration::from_secs(10));
        assert_eq!(ok("1ns"), Duration::from_nanos(1));
        assert_eq!(ok("1us"), Duration::from_micros(1));
        assert_eq!(ok("1µs"), Duration::from_micros(1));
        assert_eq!(ok("1μs"), Duration::from_micros(1));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("5.s"), Duration::from_secs(5));
        assert_eq!(ok("1.000000001s"), Duration::from_nanos(1_000_000_001));
        assert_eq!(ok("1.0000000000000000000001s"), Duration::from_secs(1));
        assert_eq!(ok(" 10s "), Duration::from_secs(10));
        assert_eq!(ok("2562047h"), Duration::from_secs(2_562_047 * 3600));
    }

    #[test]
    fn humantime_syntax() {
        assert_eq!(ok("1day"), Duration::from_secs(86_400));
        assert_eq!(ok("2 hours"), Duration::from_secs(7200));
        assert_eq!(ok("1h 30m"), Duration::from_secs(5400));
        assert_eq!(ok("5min 10sec"), Duration::from_secs(310));
    }

    #[test]
    fn errors() {
        for input in [
            "", " ", "10", "1.5", ".", ".s", "s", "1x", "1h30", "1e3s", "abc", "1 h x",
        ] {
            assert_eq!(
                parse_duration(input),
                Err(DurationError::Invalid),
                "{input:?}"
            );
        }
        for input in ["-1s", "-1h30m", "-2 hours"] {
            assert_eq!(
                parse_duration(input),
                Err(DurationError::Negative),
                "{input:?}"
            );
        }
        for input in [
            "2562048h",
            "9223372036854775808ns",
            "99999999999999999999999999999999999999999h",
        ] {
            assert_eq!(
                parse_duration(input),
                Err(DurationError::Overflow),
                "{input:?}"
            );
        }
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(86_400)), "1day");
    }
}
