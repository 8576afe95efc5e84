//! The payment resource and its validation.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The longest payment id or organisation id accepted, in characters.
pub const MAX_ID_LEN: usize = 255;

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
    pub version: i64,
    /// Always `Payment`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The organisation the payment belongs to.
    pub organisation_id: String,
    /// The payment's attributes: `amount`, and any others, kept as sent.
    pub attributes: Attributes,
}

/// A payment's attributes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attributes {
    /// A decimal number greater than zero, as a string (`"100.21"`).
    #[schema(example = "100.21", pattern = r"^\+?[0-9]*\.?[0-9]+$")]
    pub amount: String,
    /// Every other attribute, kept as sent.
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub other: Map<String, Value>,
}

/// A payment as a client sends it: `version` is ignored on create and is the version the
/// client read on replace.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentInput {
    /// The client-chosen identifier (1 to 255 characters); on replace, the path's.
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    pub id: String,
    /// On replace: the version the client read (required). Ignored on create.
    #[serde(default)]
    pub version: Option<i64>,
    /// Must be `Payment`.
    #[serde(rename = "type")]
    #[schema(pattern = "^Payment$")]
    pub kind: String,
    /// The organisation (1 to 255 characters).
    #[schema(min_length = 1, max_length = 255, pattern = r"\S")]
    pub organisation_id: String,
    /// The attributes; `amount` is required.
    pub attributes: Attributes,
}

/// Why a payment is invalid: the `detail` of a 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// An identifier is empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// An identifier is too long.
    #[error("{0} must be at most {MAX_ID_LEN} characters")]
    TooLong(&'static str),
    /// `type` is not `Payment`.
    #[error("type must be \"Payment\"")]
    Kind,
    /// The amount is not a decimal number greater than zero.
    #[error("attributes.amount must be a decimal number greater than zero, as a string")]
    Amount,
    /// The body's id is not the path's.
    #[error("id must be the path's id")]
    IdMismatch,
    /// Replace without the version read.
    #[error("version is required: the version of the payment you read")]
    MissingVersion,
}

impl PaymentInput {
    /// Checks the fields every write needs.
    ///
    /// # Errors
    ///
    /// The first rule the payment breaks.
    pub fn validate(&self) -> Result<(), Invalid> {
        check_id("id", &self.id)?;
        check_id("organisation_id", &self.organisation_id)?;
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

fn check_id(field: &'static str, value: &str) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        Err(Invalid::Empty(field))
    } else if value.chars().count() > MAX_ID_LEN {
        Err(Invalid::TooLong(field))
    } else {
        Ok(())
    }
}

/// A plain decimal (digits, one optional point, an optional leading `+`) greater than zero.
/// Exponents, signs other than `+`, and numbers with more precision than a 96-bit decimal
/// holds are refused.
fn check_amount(amount: &str) -> Result<(), Invalid> {
    let plain = amount
        .strip_prefix('+')
        .unwrap_or(amount)
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.');
    match Decimal::from_str_exact(amount) {
        Ok(value) if plain && value > Decimal::ZERO => Ok(()),
        _ => Err(Invalid::Amount),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_decimal_strings_over_zero() {
        for good in ["1", "0.01", "100.21", "+5", "12345678901234567890.5"] {
            assert_eq!(check_amount(good), Ok(()), "{good}");
        }
        for bad in [
            "", "0", "0.00", "-1", "1e3", "abc", "1.2.3", " 1", "NaN", "1_000", ".",
        ] {
            assert_eq!(check_amount(bad), Err(Invalid::Amount), "{bad}");
        }
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
        assert_eq!(input("p", "o", "Refund").validate(), Err(Invalid::Kind));
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(
            input(&long, "o", "Payment").validate(),
            Err(Invalid::TooLong("id"))
        );
    }
}
