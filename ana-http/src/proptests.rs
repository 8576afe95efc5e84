//! Property tests: no header, duration or stored response panics the parsers.

use std::time::Duration;

use chrono::Utc;
use http::header::{HeaderName, HeaderValue};
use proptest::prelude::*;

use super::config::{
    EXPIRATION_HEADER, IETF_KEY_HEADER, IdempotencyConfig, KEY_HEADER, REFERENCE_TIME_HEADER,
    TIMEOUT_HEADER,
};
use super::headers::parse_sf_string;
use super::{RecordedResponseCodec, parse_duration};
use ana_core::Codec;

fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80),
        "[ -~]{0,40}".prop_map(String::into_bytes),
        "\"[ -~]{0,20}\"".prop_map(String::into_bytes),
        "[0-9.]{0,6}(ns|us|µs|ms|s|m|h|day|hours|x)?[0-9.]{0,6}(h|m|s)?"
            .prop_map(String::into_bytes),
        "-?[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(Z|[+-][0-9]{2}:[0-9]{2})"
            .prop_map(String::into_bytes),
    ]
}

fn names() -> [HeaderName; 5] {
    [
        KEY_HEADER,
        IETF_KEY_HEADER,
        REFERENCE_TIME_HEADER,
        TIMEOUT_HEADER,
        EXPIRATION_HEADER,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn durations_never_panic(input in any::<String>()) {
        let _ = parse_duration(&input);
    }

    #[test]
    fn go_durations_round_trip(h in 0u64..100_000, m in 0u64..60, s in 0u64..60, ms in 0u64..1000) {
        let text = format!("{h}h{m}m{s}s{ms}ms");
        let expected = Duration::from_secs(h * 3600 + m * 60 + s) + Duration::from_millis(ms);
        prop_assert_eq!(parse_duration(&text), Ok(expected));
    }

    #[test]
    fn sf_strings_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse_sf_string(&bytes);
    }

    #[test]
    fn sf_strings_round_trip(key in "[!-~]{1,40}") {
        let quoted = format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
        prop_assert_eq!(parse_sf_string(quoted.as_bytes()), Some(key));
    }

    #[test]
    fn request_headers_never_panic(values in proptest::collection::vec((0usize..5, header_bytes()), 0..6)) {
        let mut request = http::Request::post("/x");
        for (index, bytes) in values {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                request = request.header(names()[index].clone(), value);
            }
        }
        let Ok(request) = request.body(()) else { return Ok(()) };
        let (parts, ()) = request.into_parts();
        match IdempotencyConfig::default().read(&parts, Utc::now) {
            Ok(Some(values)) => prop_assert!(super::is_valid_key(values.key())),
            Ok(None) => prop_assert!(false, "a key is required by default"),
            Err(rejection) => {
                // Every rejection renders, names a header, and is a 400.
                let response = rejection.to_response();
                prop_assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
                prop_assert!(rejection.body().get("header").is_some());
            }
        }
    }

    #[test]
    fn recorded_responses_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = RecordedResponseCodec.decode(&bytes);
    }
}
