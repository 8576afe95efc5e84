//! [`Keyring`]: the AES-256-GCM keys results are sealed with, and the stored format.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{AeadInOut, Generate, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};
use base64::Engine as _;
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::repository::{BoxError, DecryptError, RecordId};

/// The environment variable the examples read the keyring from: `id:base64,…`, current first.
pub const ENCRYPTION_KEYS_VAR: &str = "ANA_ENCRYPTION_KEYS";

/// The first byte of every sealed result: the format (AES-256-GCM, 32-bit key id, 96-bit
/// nonce, 128-bit tag) and its version. It is a UTF-8 continuation byte, so no JSON or text
/// result stored before encryption was turned on starts with it.
const VERSION: u8 = 0xA1;
const ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Version, key id, nonce.
const HEADER_LEN: usize = 1 + ID_LEN + NONCE_LEN;

/// What sealing adds to a result: the header and the tag (33 bytes).
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// One AES-256 key and its id, for a [`Keyring`]. The bytes are zeroized on drop (they live
/// only as the cipher's expanded key schedule, which `aes-gcm` zeroizes).
pub struct EncryptionKey {
    id: u32,
    cipher: Aes256Gcm,
}

impl EncryptionKey {
    /// The key `bytes` under `id`. The caller's array is left as it is: zeroize it (or pass a
    /// temporary) when it should not outlive the call.
    pub fn new(id: u32, bytes: &[u8; 32]) -> Self {
        let key: &Key<Aes256Gcm> = bytes.into();
        Self {
            id,
            cipher: Aes256Gcm::new(key),
        }
    }

    /// The key from its standard base64 form (44 characters with padding).
    pub fn from_base64(id: u32, text: &str) -> Result<Self, KeyringError> {
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|source| KeyringError::InvalidBase64 { id, source })?,
        );
        let bytes: Zeroizing<[u8; 32]> =
            Zeroizing::new(decoded.as_slice().try_into().map_err(|_| {
                KeyringError::WrongLength {
                    id,
                    len: decoded.len(),
                }
            })?);
        Ok(Self::new(id, &bytes))
    }

    /// The key's id, written in every result it seals.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ZeroizeOnDrop for EncryptionKey {}

/// The keys stored results are encrypted with: the first seals every new result, all of them
/// open the results they sealed (each result names its key by id). Zeroized on drop.
///
/// Rotation: put the new key first and keep the old ones after it until every record sealed
/// under them has expired (the records' expiration, 24 hours by default over HTTP). A record
/// whose key is no longer in the keyring answers [`DecryptError::UnknownKey`].
///
/// ```
/// use ana_core::encryption::Keyring;
///
/// // `id:base64` pairs, the current key first (`openssl rand -base64 32` makes a key).
/// let keyring: Keyring = "1:mNEqXEXjh5C4XG3bw6sLH1r2v7K1QmMVHU3O3r8zM0Y=,\
///                          0:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
///     .parse()?;
/// assert_eq!(keyring.current_id(), 1);
/// assert_eq!(keyring.ids().collect::<Vec<_>>(), [1, 0]);
/// # Ok::<(), ana_core::encryption::KeyringError>(())
/// ```
pub struct Keyring {
    /// The current key first; a handful at most, so a scan finds a key faster than a map.
    keys: Vec<EncryptionKey>,
}

impl Keyring {
    /// A keyring of `current`, which seals and opens, alone.
    pub fn new(current: EncryptionKey) -> Self {
        Self {
            keys: vec![current],
        }
    }

    /// Adds a key that only opens results (an earlier key, kept until its records expire).
    pub fn with_previous(mut self, key: EncryptionKey) -> Result<Self, KeyringError> {
        if self.key(key.id).is_some() {
            return Err(KeyringError::DuplicateId { id: key.id });
        }
        self.keys.push(key);
        Ok(self)
    }

    /// The keyring of `ANA_ENCRYPTION_KEYS` ([`ENCRYPTION_KEYS_VAR`]); `None` when it is unset
    /// or empty.
    pub fn from_env() -> Result<Option<Self>, KeyringError> {
        match std::env::var(ENCRYPTION_KEYS_VAR) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                if text.trim().is_empty() {
                    Ok(None)
                } else {
                    text.parse().map(Some)
                }
            }
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyringError::NotUnicode),
        }
    }

    /// The id of the key that seals new results.
    pub fn current_id(&self) -> u32 {
        self.current().id
    }

    /// The key ids, the current one first.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.iter().map(|key| key.id)
    }

    fn current(&self) -> &EncryptionKey {
        // Never empty: every constructor gives it a key.
        &self.keys[0]
    }

    fn key(&self, id: u32) -> Option<&EncryptionKey> {
        self.keys.iter().find(|key| key.id == id)
    }

    /// `plaintext` sealed for the record `id` under the current key, in the stored format:
    ///
    /// ```text
    /// [0xA1: version][key id: u32 BE][nonce: 12 random bytes][ciphertext][tag: 16 bytes]
    /// ```
    ///
    /// The associated data is the version, the key id and the record's identity (target and
    /// key, length-framed): sealed bytes copied onto another record do not open there.
    ///
    /// Fails only when the system's random number generator does.
    pub fn encrypt(&self, id: RecordId<'_>, plaintext: &[u8]) -> Result<Vec<u8>, EncryptError> {
        // From the OS: this call knows nothing that makes a nonce unique. `Encrypted` seals
        // with nonces of a `NonceSource`, which needs no system call per result.
        let nonce =
            Nonce::try_generate().map_err(|source| EncryptError(Box::new(source) as BoxError))?;
        self.seal(id, &nonce, plaintext)
    }

    /// `plaintext` sealed for the record `id` under the current key with `nonce`, which no
    /// other result sealed under that key may have had.
    pub(crate) fn seal(
        &self,
        id: RecordId<'_>,
        nonce: &Nonce<U12>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, EncryptError> {
        let key = self.current();
        let mut sealed = Vec::with_capacity(OVERHEAD + plaintext.len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&key.id.to_be_bytes());
        sealed.extend_from_slice(nonce);
        sealed.extend_from_slice(plaintext);
        let tag = with_associated_data(key.id, id, |aad| {
            key.cipher
                .encrypt_inout_detached(nonce, aad, (&mut sealed[HEADER_LEN..]).into())
        })
        .map_err(|source| EncryptError(Box::new(source)))?;
        sealed.extend_from_slice(&tag);
        Ok(sealed)
    }

    /// The plaintext of `sealed`, a result [`encrypt`](Self::encrypt)ed for the record `id`.
    pub fn decrypt(&self, id: RecordId<'_>, sealed: &[u8]) -> Result<Vec<u8>, DecryptError> {
        let mut bytes = sealed.to_vec();
        self.decrypt_in_place(id, &mut bytes)?;
        Ok(bytes)
    }

    /// Replaces the sealed `bytes` of the record `id` with their plaintext; on error, `bytes`
    /// are left as they were.
    pub(crate) fn decrypt_in_place(
        &self,
        id: RecordId<'_>,
        bytes: &mut Vec<u8>,
    ) -> Result<(), DecryptError> {
        match bytes.first() {
            Some(&VERSION) => {}
            _ => return Err(DecryptError::NotEncrypted),
        }
        if bytes.len() < OVERHEAD {
            return Err(DecryptError::Truncated { len: bytes.len() });
        }
        let mut key_id = [0; ID_LEN];
        key_id.copy_from_slice(&bytes[1..1 + ID_LEN]);
        let key_id = u32::from_be_bytes(key_id);
        let key = self
            .key(key_id)
            .ok_or(DecryptError::UnknownKey { id: key_id })?;
        let nonce = Nonce::try_from(&bytes[1 + ID_LEN..HEADER_LEN])
            .map_err(|_| DecryptError::Truncated { len: bytes.len() })?;
        let tag_at = bytes.len() - TAG_LEN;
        let tag = Tag::try_from(&bytes[tag_at..])
            .map_err(|_| DecryptError::Truncated { len: bytes.len() })?;
        with_associated_data(key_id, id, |aad| {
            key.cipher.decrypt_inout_detached(
                &nonce,
                aad,
                (&mut bytes[HEADER_LEN..tag_at]).into(),
                &tag,
            )
        })
        .map_err(|_| DecryptError::Unauthentic { id: key_id })?;
        bytes.truncate(tag_at);
        bytes.drain(..HEADER_LEN);
        Ok(())
    }
}

/// Calls `f` with the associated data of a result of the record `id` under key `key_id`: the
/// version, the key id, then the record's identity, the target length-framed so that
/// `("ab", "c")` and `("a", "bc")` differ. On the stack when it fits, as it does for the
/// usual target and key.
fn with_associated_data<T>(key_id: u32, id: RecordId<'_>, f: impl FnOnce(&[u8]) -> T) -> T {
    const FIXED: usize = 1 + ID_LEN + 8;
    let len = FIXED + id.target.len() + id.key.len();
    let fill = |aad: &mut [u8]| {
        aad[0] = VERSION;
        aad[1..1 + ID_LEN].copy_from_slice(&key_id.to_be_bytes());
        aad[1 + ID_LEN..FIXED].copy_from_slice(&(id.target.len() as u64).to_le_bytes());
        aad[FIXED..FIXED + id.target.len()].copy_from_slice(id.target.as_bytes());
        aad[FIXED + id.target.len()..].copy_from_slice(id.key.as_bytes());
    };
    let mut stack = [0; 256];
    if let Some(aad) = stack.get_mut(..len) {
        fill(aad);
        f(aad)
    } else {
        let mut heap = vec![0; len];
        fill(&mut heap);
        f(&heap)
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish()
    }
}

impl ZeroizeOnDrop for Keyring {}

impl FromStr for Keyring {
    type Err = KeyringError;

    /// Reads `id:base64,id:base64,…`: ids are decimal `u32`s, keys 32 bytes in standard base64;
    /// the first key is the current one. Spaces around entries are ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut keyring: Option<Self> = None;
        for (index, entry) in text.split(',').enumerate() {
            let position = index + 1;
            let entry = entry.trim();
            let (id, key) = entry
                .split_once(':')
                .ok_or(KeyringError::MalformedEntry { position })?;
            let id = id
                .trim()
                .parse::<u32>()
                .map_err(|_| KeyringError::InvalidId { position })?;
            let key = EncryptionKey::from_base64(id, key)?;
            keyring = Some(match keyring {
                None => Self::new(key),
                Some(keyring) => keyring.with_previous(key)?,
            });
        }
        keyring.ok_or(KeyringError::Empty)
    }
}

/// A keyring could not be read (from [`Keyring::from_str`], [`Keyring::from_env`] or
/// [`EncryptionKey::from_base64`]). No message carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// No key was given.
    #[error("{ENCRYPTION_KEYS_VAR} holds no key")]
    Empty,
    /// An entry is not `id:base64`.
    #[error("{ENCRYPTION_KEYS_VAR}: entry {position} is not `id:base64`")]
    MalformedEntry {
        /// The entry's position, from 1.
        position: usize,
    },
    /// An entry's id is not a number from 0 to 4294967295.
    #[error(
        "{ENCRYPTION_KEYS_VAR}: the id of entry {position} is not a number from 0 to 4294967295"
    )]
    InvalidId {
        /// The entry's position, from 1.
        position: usize,
    },
    /// A key is not standard base64.
    #[error("{ENCRYPTION_KEYS_VAR}: key {id} is not standard base64")]
    InvalidBase64 {
        /// The key's id.
        id: u32,
        /// The decoder's error.
        #[source]
        source: base64::DecodeError,
    },
    /// A key is not 32 bytes long.
    #[error("{ENCRYPTION_KEYS_VAR}: key {id} is {len} bytes long; AES-256 needs 32")]
    WrongLength {
        /// The key's id.
        id: u32,
        /// Its length in bytes.
        len: usize,
    },
    /// Two keys have the same id.
    #[error("{ENCRYPTION_KEYS_VAR}: key id {id} is given twice")]
    DuplicateId {
        /// The id.
        id: u32,
    },
    /// The environment variable is not valid Unicode.
    #[error("{ENCRYPTION_KEYS_VAR} is not valid Unicode")]
    NotUnicode,
}

/// A result could not be sealed: the system's random number generator failed (or the result
/// is over AES-GCM's 64 GiB limit).
#[derive(Debug, thiserror::Error)]
#[error("a result could not be encrypted")]
pub struct EncryptError(#[source] BoxError);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use proptest::prelude::*;

    use super::*;

    fn keyring(id: u32, byte: u8) -> Keyring {
        Keyring::new(EncryptionKey::new(id, &[byte; 32]))
    }

    const ID: RecordId<'static> = RecordId::new("[POST]/pay", "scope:k1");

    #[test]
    fn the_stored_format_is_version_id_nonce_ciphertext_tag() {
        let sealed = keyring(7, 1).encrypt(ID, b"hello").unwrap();
        assert_eq!(sealed.len(), OVERHEAD + 5);
        assert_eq!(sealed[0], VERSION);
        assert_eq!(&sealed[1..5], &7u32.to_be_bytes());
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
        // A fresh nonce each time.
        assert_ne!(sealed, keyring(7, 1).encrypt(ID, b"hello").unwrap());
    }

    #[test]
    fn every_failure_is_typed() {
        let ring = keyring(0, 1);
        let sealed = ring.encrypt(ID, b"hello").unwrap();
        assert_eq!(
            ring.decrypt(ID, b"{\"json\":1}"),
            Err(DecryptError::NotEncrypted)
        );
        assert_eq!(ring.decrypt(ID, b""), Err(DecryptError::NotEncrypted));
        assert_eq!(
            ring.decrypt(ID, &sealed[..20]),
            Err(DecryptError::Truncated { len: 20 })
        );
        assert_eq!(
            keyring(1, 1).decrypt(ID, &sealed),
            Err(DecryptError::UnknownKey { id: 0 })
        );
        assert_eq!(
            keyring(0, 2).decrypt(ID, &sealed),
            Err(DecryptError::Unauthentic { id: 0 })
        );
        let moved = RecordId::new("[POST]/pay", "scope:k2");
        assert_eq!(
            ring.decrypt(moved, &sealed),
            Err(DecryptError::Unauthentic { id: 0 })
        );
        // The identity is framed: the same bytes split otherwise are another record.
        let reframed = RecordId::new("[POST]/pa", "yscope:k1");
        assert_eq!(
            ring.decrypt(reframed, &sealed),
            Err(DecryptError::Unauthentic { id: 0 })
        );
        let mut flipped = sealed.clone();
        flipped[HEADER_LEN] ^= 1;
        assert_eq!(
            ring.decrypt(ID, &flipped),
            Err(DecryptError::Unauthentic { id: 0 })
        );
        // The key id is authenticated too: rewritten to another key holding the same bytes.
        let twins = keyring(0, 1)
            .with_previous(EncryptionKey::new(9, &[1; 32]))
            .unwrap();
        let mut renamed = sealed.clone();
        renamed[1..5].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            twins.decrypt(ID, &renamed),
            Err(DecryptError::Unauthentic { id: 9 })
        );
        assert_eq!(ring.decrypt(ID, &sealed).unwrap(), b"hello");
    }

    #[test]
    fn keyrings_parse_with_the_current_key_first() {
        let zeros = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let ring: Keyring = format!(" 3:{zeros} , 2:{zeros}").parse().unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), [3, 2]);
        assert_eq!(format!("{ring:?}"), "Keyring { ids: [3, 2] }");
        let error = |text: &str| text.parse::<Keyring>().map(drop).unwrap_err().to_string();
        assert_eq!(error(""), "ANA_ENCRYPTION_KEYS: entry 1 is not `id:base64`");
        assert_eq!(
            error(&format!("1:{zeros},")),
            "ANA_ENCRYPTION_KEYS: entry 2 is not `id:base64`"
        );
        assert_eq!(
            error(&format!("x:{zeros}")),
            "ANA_ENCRYPTION_KEYS: the id of entry 1 is not a number from 0 to 4294967295"
        );
        assert_eq!(
            error("1:not base64!"),
            "ANA_ENCRYPTION_KEYS: key 1 is not standard base64"
        );
        assert_eq!(
            error("1:AAAA"),
            "ANA_ENCRYPTION_KEYS: key 1 is 3 bytes long; AES-256 needs 32"
        );
        assert_eq!(
            error(&format!("1:{zeros},1:{zeros}")),
            "ANA_ENCRYPTION_KEYS: key id 1 is given twice"
        );
    }

    #[test]
    fn keys_are_zeroized_on_drop() {
        fn zeroized_on_drop<T: ZeroizeOnDrop>() {}
        zeroized_on_drop::<Aes256Gcm>();
        zeroized_on_drop::<Keyring>();
    }

    proptest! {
        /// Encrypt then decrypt is the identity, for any result and any record.
        #[test]
        fn decrypt_inverts_encrypt(
            result in proptest::collection::vec(any::<u8>(), 0..2048),
            target in ".{0,40}",
            key in ".{0,80}",
            id in any::<u32>(),
        ) {
            let ring = keyring(id, 5);
            let record = RecordId::new(&target, &key);
            let sealed = ring.encrypt(record, &result).unwrap();
            prop_assert_eq!(sealed.len(), result.len() + OVERHEAD);
            prop_assert_eq!(ring.decrypt(record, &sealed).unwrap(), result);
        }
    }
}
