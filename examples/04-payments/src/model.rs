//! The payment resource and its validation.
//!
//! The OpenAPI document states the same rules as the checks here (`pattern`, `maxLength`, the
//! tests hold the two together): what the document calls valid, the service accepts, and
//! the reverse.

use serde::de::{Deserializer, Error as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The longest payment id or organisation id accepted, in characters.
pub const MAX_ID_LEN: usize = 255;

/// The longest amount accepted, in characters.
pub const MAX_AMOUNT_LEN: usize = 32;

/// A payment, as stored and served.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "4ee3a8d8-ca7b-4290-a52c-dd5b6165ec43", "version": 0, "type": "Payment",
    "organisation_id": "743d5b63-8e6f-432e-a8fa-c5d8d2ee5fcb",
    "attributes": {"amount": "100.21", "currency": "GBP"}
}))]
pub struct Payment {
    /// The client-chosen identifier.
    pub id: String,
    /// Starts at 0, one more at each replacement.
    #[schema(minimum = 0)]
    pub version: i64,
    /// Always `Payment`.
    #[serde(rename = "type")]
    #[schema(value_type = PaymentType)]
    pub kind: String,
    /// The organisation the payment belongs to.
    pub organisation_id: String,
    /// The payment's attributes: `amount`, and any others, kept as sent.
    pub attributes: Attributes,
}

/// The type of every payment (documentation: the field is checked by [`PaymentInput::validate`]).
#[derive(Clone, Copy, Debug, ToSchema)]
pub enum PaymentType {
    /// A payment.
    Payment,
}

/// A payment's attributes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attributes {
    /// A decimal number greater than zero, as a string (`"100.21"`), of at most 32 characters.
    #[schema(
        example = "100.21",
        pattern = r"^\+?([0-9]*[1-9][0-9]*(\.[0-9]+)?|0*\.[0-9]*[1-9][0-9]*)$",
        max_length = 32
    )]
    pub amount: String,
    /// Every other attribute, kept as sent.
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub other: Map<String, Value>,
}

/// A payment as a client creates it: `version`, if sent, is ignored (the new payment is at
/// version 0).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentInput {
    /// The client-chosen identifier: 1 to 255 of the characters a URL path segment holds as
    /// they are (letters, digits, `-`, `.`, `_`, `~`), not only dots.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[A-Za-z0-9._~-]*[A-Za-z0-9_~-][A-Za-z0-9._~-]*$"
    )]
    pub id: String,
    /// Ignored on create; a whole number, 0 or more, when sent.
    #[serde(default, deserialize_with = "version")]
    #[schema(value_type = Option<i64>, minimum = 0)]
    pub version: Option<i64>,
    /// Must be `Payment`.
    #[serde(rename = "type")]
    #[schema(value_type = PaymentType)]
    pub kind: String,
    /// The organisation (1 to 255 characters, no control characters, not only spaces).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$"
    )]
    pub organisation_id: String,
    /// The attributes; `amount` is required.
    pub attributes: Attributes,
}

/// A payment as a client replaces it: `version` is the version the client read, and `id` the
/// path's.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Replacement {
    /// The path's id (the same rules as on create).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[A-Za-z0-9._~-]*[A-Za-z0-9_~-][A-Za-z0-9._~-]*$"
    )]
    pub id: String,
    /// The version the client read: the replacement is at the next one.
    #[serde(deserialize_with = "read_version")]
    #[schema(minimum = 0)]
    pub version: i64,
    /// Must be `Payment`.
    #[serde(rename = "type")]
    #[schema(value_type = PaymentType)]
    pub kind: String,
    /// The organisation (1 to 255 characters, no control characters, not only spaces).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$"
    )]
    pub organisation_id: String,
    /// The attributes; `amount` is required.
    pub attributes: Attributes,
}

impl From<Replacement> for PaymentInput {
    fn from(replacement: Replacement) -> Self {
        Self {
            id: replacement.id,
            version: Some(replacement.version),
            kind: replacement.kind,
            organisation_id: replacement.organisation_id,
            attributes: replacement.attributes,
        }
    }
}

/// A version as JSON Schema's `integer` reads it: a whole number (`3`, or `3.0`), 0 or more,
/// within 64 bits; `null` or absent is none.
fn version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    Option::<serde_json::Number>::deserialize(deserializer)?
        .map(|number| {
            whole(&number).ok_or_else(|| {
                D::Error::custom(format!(
                    "version must be a whole number from 0 to {}, not {number}",
                    i64::MAX
                ))
            })
        })
        .transpose()
}

/// A version that must be there (`null` is not one).
fn read_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    version(deserializer)?.ok_or_else(|| D::Error::custom("version must be the version read"))
}

fn whole(number: &serde_json::Number) -> Option<i64> {
    // 2^63: every f64 below it converts to an i64 exactly.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    let value = number.as_i64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < LIMIT)
            // Whole and within range: the conversion is exact.
            .map(|f| f as i64)
    })?;
    (value >= 0).then_some(value)
}

/// Why a payment is invalid: the `detail` of a 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// An identifier is empty or only spaces.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// An identifier holds a control character.
    #[error("{0} must not hold control characters")]
    Control(&'static str),
    /// The id holds a character other than letters, digits, `-`, `.`, `_` and `~`.
    #[error("id may only hold letters, digits, -, ., _ and ~")]
    IdCharacters,
    /// The id is only dots.
    #[error("id must not be only dots")]
    Dots,
    /// An identifier is too long.
    #[error("{0} must be at most {MAX_ID_LEN} characters")]
    TooLong(&'static str),
    /// `type` is not `Payment`.
    #[error("type must be \"Payment\"")]
    Kind,
    /// The amount is not a decimal number greater than zero.
    #[error(
        "attributes.amount must be a decimal number greater than zero, as a string of at most {MAX_AMOUNT_LEN} characters"
    )]
    Amount,
    /// The body's id is not the path's.
    #[error("id must be the path's id")]
    IdMismatch,
}

impl PaymentInput {
    /// Checks the fields every write needs.
    ///
    /// # Errors
    ///
    /// The first rule the payment breaks.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_id(&self.id)?;
        check_organisation(&self.organisation_id)?;
        if self.kind != "Payment" {
            return Err(Invalid::Kind);
        }
        check_amount(&self.attributes.amount)
    }

    /// The new payment at `version`.
    pub fn into_payment(self, version: i64) -> Payment {
        Payment {
            id: self.id,
            version,
            kind: self.kind,
            organisation_id: self.organisation_id,
            attributes: self.attributes,
        }
    }
}

/// The id: it names the payment in URLs (`/v1/payments/{id}`, `Location`), so it holds only
/// the characters a path segment carries as they are, and is not `.` or `..` (or more dots),
/// which clients resolve away.
pub fn check_id(id: &str) -> Result<(), Invalid> {
    let field = "id";
    if id.is_empty() {
        Err(Invalid::Empty(field))
    } else if id.chars().count() > MAX_ID_LEN {
        Err(Invalid::TooLong(field))
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    {
        Err(Invalid::IdCharacters)
    } else if id.bytes().all(|b| b == b'.') {
        Err(Invalid::Dots)
    } else {
        Ok(())
    }
}

/// The organisation: any text of up to [`MAX_ID_LEN`] characters without control characters,
/// not only spaces.
fn check_organisation(organisation: &str) -> Result<(), Invalid> {
    let field = "organisation_id";
    if organisation.chars().count() > MAX_ID_LEN {
        Err(Invalid::TooLong(field))
    } else if organisation.chars().any(|c| c.is_ascii_control()) {
        Err(Invalid::Control(field))
    } else if organisation.chars().all(|c| c == ' ') {
        Err(Invalid::Empty(field))
    } else {
        Ok(())
    }
}

/// A plain decimal greater than zero, at most [`MAX_AMOUNT_LEN`] characters: digits, one
/// optional point with digits after it, an optional leading `+`, and a digit other than 0.
/// Exponents and other signs are refused.
fn check_amount(amount: &str) -> Result<(), Invalid> {
    let unsigned = amount.strip_prefix('+').unwrap_or(amount);
    let digits = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    let well_formed = match unsigned.split_once('.') {
        Some((whole, fraction)) => digits(whole) && !fraction.is_empty() && digits(fraction),
        None => !unsigned.is_empty() && digits(unsigned),
    };
    let positive = unsigned.bytes().any(|b| matches!(b, b'1'..=b'9'));
    if amount.len() <= MAX_AMOUNT_LEN && well_formed && positive {
        Ok(())
    } else {
        Err(Invalid::Amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_decimal_strings_over_zero() {
        for good in ["1", "0.01", "100.21", "+5", ".5", "12345678901234567890.5"] {
            assert_eq!(check_amount(good), Ok(()), "{good}");
        }
        for bad in [
            "", "0", "0.00", "-1", "1e3", "abc", "1.2.3", " 1", "NaN", "1_000", ".", "5.", "+",
        ] {
            assert_eq!(check_amount(bad), Err(Invalid::Amount), "{bad}");
        }
        assert_eq!(check_amount(&"1".repeat(MAX_AMOUNT_LEN)), Ok(()));
        assert_eq!(
            check_amount(&"1".repeat(MAX_AMOUNT_LEN + 1)),
            Err(Invalid::Amount)
        );
    }

    #[test]
    fn a_payment_needs_its_ids_and_type() {
        let input = |id: &str, org: &str, kind: &str| PaymentInput {
            id: id.to_owned(),
            version: None,
            kind: kind.to_owned(),
            organisation_id: org.to_owned(),
            attributes: Attributes {
                amount: "1".to_owned(),
                other: Map::new(),
            },
        };
        assert_eq!(input("p", "o", "Payment").validate(), Ok(()));
        assert_eq!(
            input("", "o", "Payment").validate(),
            Err(Invalid::Empty("id"))
        );
        assert_eq!(
            input("p", " ", "Payment").validate(),
            Err(Invalid::Empty("organisation_id"))
        );
        assert_eq!(
            input("p", "o\u{0}", "Payment").validate(),
            Err(Invalid::Control("organisation_id"))
        );
        assert_eq!(
            input("p/1", "o", "Payment").validate(),
            Err(Invalid::IdCharacters)
        );
        assert_eq!(input("..", "o", "Payment").validate(), Err(Invalid::Dots));
        assert_eq!(input("a.b~c_d-1", "o", "Payment").validate(), Ok(()));
        assert_eq!(input("p", "o", "Refund").validate(), Err(Invalid::Kind));
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            input(&long, "o", "Payment").validate(),
            Err(Invalid::TooLong("id"))
        );
    }

    #[test]
    fn versions_are_whole_numbers_from_zero() {
        let read = |version: &str| {
            let body = format!(
                r#"{{"id":"p","version":{version},"type":"Payment","organisation_id":"o","attributes":{{"amount":"1"}}}}"#
            );
            serde_json::from_str::<PaymentInput>(&body).map(|input| input.version)
        };
        assert_eq!(read("3").ok(), Some(Some(3)));
        assert_eq!(read("3.0").ok(), Some(Some(3)));
        assert_eq!(read("null").ok(), Some(None));
        assert_eq!(read("9223372036854775807").ok(), Some(Some(i64::MAX)));
        for bad in ["-1", "1.5", "9223372036854775808", "1e300", "\"3\""] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }

    /// The `pattern` (and `maxLength`) a property of `schema` has in the OpenAPI document.
    fn documented<S: ToSchema>(pointer: &str) -> (regex::Regex, Option<usize>) {
        let schema = serde_json::to_value(S::schema()).unwrap_or_else(|e| panic!("{e}"));
        let property = schema
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{pointer} in {schema}"));
        let pattern = property["pattern"]
            .as_str()
            .unwrap_or_else(|| panic!("{property}"));
        let max = property["maxLength"]
            .as_u64()
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        (
            regex::Regex::new(pattern).unwrap_or_else(|e| panic!("{e}")),
            max,
        )
    }

    /// Every string of up to `len` characters from `alphabet`.
    fn strings(alphabet: &[char], len: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..len {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    /// The document's rules and the service's checks agree on every short string over an
    /// alphabet that reaches each branch of them.
    #[test]
    fn the_document_states_the_checks() {
        let (amount, max) = documented::<Attributes>("/properties/amount");
        assert_eq!(max, Some(MAX_AMOUNT_LEN));
        for text in strings(&['0', '1', '9', '.', '+', '-', 'e', ' '], 5) {
            assert_eq!(
                amount.is_match(&text),
                check_amount(&text).is_ok(),
                "amount {text:?}"
            );
        }
        for (id, max) in [
            documented::<PaymentInput>("/properties/id"),
            documented::<Replacement>("/properties/id"),
        ] {
            assert_eq!(max, Some(MAX_ID_LEN));
            for text in strings(&['a', 'Z', '9', '.', '-', '_', '~', '/', ' ', '%', 'é'], 3) {
                // `minLength` 1 besides the pattern.
                let documented = !text.is_empty() && id.is_match(&text);
                assert_eq!(documented, check_id(&text).is_ok(), "id {text:?}");
            }
        }
        for (organisation, max) in [
            documented::<PaymentInput>("/properties/organisation_id"),
            documented::<Replacement>("/properties/organisation_id"),
        ] {
            assert_eq!(max, Some(MAX_ID_LEN));
            for text in strings(&['a', ' ', '\t', '\u{0}', '\u{7f}', 'é', '\u{2003}'], 4) {
                let documented = !text.is_empty() && organisation.is_match(&text);
                assert_eq!(
                    documented,
                    check_organisation(&text).is_ok(),
                    "organisation {text:?}"
                );
            }
        }
    }
}
