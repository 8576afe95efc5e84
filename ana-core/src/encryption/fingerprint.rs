//! [`FingerprintKey`]: keyed (HMAC-SHA256) payload fingerprints and scope hashes.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, KeyInit};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::record::{Fingerprint, FingerprintHasher};

/// The environment variable the examples read the fingerprint key from (standard base64).
pub const FINGERPRINT_KEY_VAR: &str = "ANA_FINGERPRINT_KEY";

/// A secret key for fingerprints: with it, a payload's [`Fingerprint`] (and, over HTTP, the
/// hash of the caller's credentials in the stored key) is HMAC-SHA256 under the key rather
/// than SHA-256, so someone who reads the store cannot test guesses of a low-entropy payload
/// or of a bearer token against it.
///
/// Changing the key changes every fingerprint: a retry of a call recorded under the old key
/// is refused with [`Error::PayloadMismatch`](crate::Error::PayloadMismatch), and the
/// operation does not run again. (Over HTTP the key also hashes the caller's scope, which is
/// part of the record's identity: there a retry finds no record and runs again; see
/// `ana-http`.)
///
/// The bytes given are not kept: only the HMAC states derived from them, which the `hmac`
/// crate does not zeroize.
///
/// ```
/// use ana_core::encryption::FingerprintKey;
/// use ana_core::Fingerprint;
///
/// let key = FingerprintKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")?;
/// assert_ne!(key.fingerprint(b"4242"), Fingerprint::of(b"4242"));
/// let mut hasher = key.hasher();
/// hasher.field(b"POST");
/// hasher.field(b"/pay");
/// assert_ne!(hasher.finish(), key.fingerprint(b"POST/pay"));
/// # Ok::<(), ana_core::encryption::FingerprintKeyError>(())
/// ```
#[derive(Clone)]
pub struct FingerprintKey {
    mac: Hmac<Sha256>,
}

impl FingerprintKey {
    /// The shortest key accepted, in bytes (HMAC-SHA256's output size).
    pub const MIN_LEN: usize = 32;

    /// A key of `bytes` (at least [`MIN_LEN`](Self::MIN_LEN) of them).
    pub fn new(bytes: &[u8]) -> Result<Self, FingerprintKeyError> {
        if bytes.len() < Self::MIN_LEN {
            return Err(FingerprintKeyError::TooShort { len: bytes.len() });
        }
        let mac = Hmac::<Sha256>::new_from_slice(bytes)
            .map_err(|_| FingerprintKeyError::TooShort { len: bytes.len() })?;
        Ok(Self { mac })
    }

    /// A key from its standard base64 form.
    pub fn from_base64(text: &str) -> Result<Self, FingerprintKeyError> {
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(FingerprintKeyError::InvalidBase64)?,
        );
        Self::new(&bytes)
    }

    /// The key of `ANA_FINGERPRINT_KEY` ([`FINGERPRINT_KEY_VAR`]); `None` when it is unset or
    /// empty.
    pub fn from_env() -> Result<Option<Self>, FingerprintKeyError> {
        match std::env::var(FINGERPRINT_KEY_VAR) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                if text.trim().is_empty() {
                    Ok(None)
                } else {
                    Self::from_base64(&text).map(Some)
                }
            }
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(FingerprintKeyError::NotUnicode),
        }
    }

    /// A [`FingerprintHasher`] keyed with this key.
    pub fn hasher(&self) -> FingerprintHasher {
        FingerprintHasher::keyed(self.mac.clone())
    }

    /// The keyed fingerprint of `bytes`.
    pub fn fingerprint(&self, bytes: impl AsRef<[u8]>) -> Fingerprint {
        let mut hasher = self.hasher();
        hasher.update(bytes.as_ref());
        hasher.finish()
    }
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(..)")
    }
}

/// A fingerprint key could not be read. No message carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintKeyError {
    /// The key is shorter than [`FingerprintKey::MIN_LEN`].
    #[error("{FINGERPRINT_KEY_VAR}: the key is {len} bytes long; at least 32 are needed")]
    TooShort {
        /// Its length in bytes.
        len: usize,
    },
    /// The key is not standard base64.
    #[error("{FINGERPRINT_KEY_VAR}: the key is not standard base64")]
    InvalidBase64(#[source] base64::DecodeError),
    /// The environment variable is not valid Unicode.
    #[error("{FINGERPRINT_KEY_VAR} is not valid Unicode")]
    NotUnicode,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Stored fingerprints depend on this: HMAC-SHA256 (RFC 4231 test case 2's key and data
    /// padded out), truncated to 16 bytes, must never change between releases.
    #[test]
    fn keyed_fingerprints_are_truncated_hmac_sha256() {
        let key = FingerprintKey::new(&[0x0b; 32]).unwrap();
        // HMAC-SHA256(0x0b * 32, "Hi There"), first 16 bytes.
        let expected = Hmac::<Sha256>::new_from_slice(&[0x0b; 32])
            .map(|mac| hmac::Mac::finalize(hmac::Mac::chain_update(mac, b"Hi There")).into_bytes())
            .unwrap();
        assert_eq!(key.fingerprint(b"Hi There").as_bytes(), &expected[..16]);
        assert_ne!(key.fingerprint(b"Hi There"), Fingerprint::of(b"Hi There"));
        let other = FingerprintKey::new(&[0x0c; 32]).unwrap();
        assert_ne!(key.fingerprint(b"x"), other.fingerprint(b"x"));
    }

    #[test]
    fn bad_keys_are_typed_errors() {
        assert!(matches!(
            FingerprintKey::new(&[1; 31]),
            Err(FingerprintKeyError::TooShort { len: 31 })
        ));
        assert!(matches!(
            FingerprintKey::from_base64("***"),
            Err(FingerprintKeyError::InvalidBase64(_))
        ));
        assert_eq!(
            FingerprintKey::from_base64("AAAA")
                .map(drop)
                .map_err(|e| e.to_string()),
            Err("ANA_FINGERPRINT_KEY: the key is 3 bytes long; at least 32 are needed".into())
        );
        assert_eq!(
            format!("{:?}", FingerprintKey::new(&[1; 32]).unwrap()),
            "FingerprintKey(..)"
        );
    }
}
