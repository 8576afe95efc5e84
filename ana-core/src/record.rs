//! The stored record: [`TrackedOperation`], its [`Status`] and the payload [`Fingerprint`].

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

/// Where a tracked operation stands.
///
/// ```text
///            claim                 success
///   (none) ─────────▶ Running ───────────────▶ Finished  (replayed from now on)
///   Ready  ─────────▶    │  ▲
///                  error │  │ claim (retry), or claim after the
///                  panic ▼  │ timeout of a Running record
///                     Failed
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// Stored but never started; runnable by the next claim.
    Ready,
    /// An attempt holds the record until it finishes or its timeout passes.
    Running,
    /// The operation succeeded; its result is replayed to every later call.
    Finished,
    /// The last attempt failed; the next call runs the operation again.
    Failed,
}

impl Status {
    /// The lower-case name used by the stores (`ready`, `running`, `finished`, `failed`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of the four status names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown operation status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ready" => Ok(Self::Ready),
            "running" => Ok(Self::Running),
            "finished" => Ok(Self::Finished),
            "failed" => Ok(Self::Failed),
            other => Err(UnknownStatus(other.to_owned())),
        }
    }
}

/// Why an attempt failed, stored on its Failed record ([`TrackedOperation::failure`]) beside
/// the human message ([`TrackedOperation::error`]).
///
/// Stores keep it as its [name](Self::as_str). New kinds may be added; a store reading a name
/// it does not know treats the record as corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureKind {
    /// The operation returned its own error (its text is the message).
    Error,
    /// The operation panicked (the message is `Got panic "<value>"`).
    Panic,
    /// The call was dropped before the attempt finished (a client gone, a task aborted).
    Cancelled,
    /// The attempt was still Running past its timeout when a clean-up marked it Failed.
    TimedOut,
    /// The record's expiration passed before the attempt finished; its work was discarded.
    Expired,
    /// The operation's transaction could not be opened (Postgres `BEGIN` failed).
    BeginFailed,
    /// The operation's transaction could not be committed (Postgres `COMMIT` failed, or the
    /// finish failed inside it).
    CommitFailed,
}

impl FailureKind {
    /// Every kind, in declaration order (a slice: kinds may be added).
    pub const ALL: &'static [Self] = &[
        Self::Error,
        Self::Panic,
        Self::Cancelled,
        Self::TimedOut,
        Self::Expired,
        Self::BeginFailed,
        Self::CommitFailed,
    ];

    /// The name the stores keep (`error`, `panic`, `cancelled`, `timed_out`, `expired`,
    /// `begin_failed`, `commit_failed`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Panic => "panic",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::Expired => "expired",
            Self::BeginFailed => "begin_failed",
            Self::CommitFailed => "commit_failed",
        }
    }

    /// The message stored with the kind when there is no more specific one (an operation's
    /// own error and a panic bring their own).
    pub const fn message(self) -> &'static str {
        match self {
            Self::Error => "Operation failed.",
            Self::Panic => "Operation panicked.",
            Self::Cancelled => "Operation cancelled before it finished.",
            Self::TimedOut => "Operation timed out before it finished.",
            Self::Expired => "Operation expired before it finished.",
            Self::BeginFailed => "The operation's transaction could not be opened.",
            Self::CommitFailed => "The operation's transaction could not be committed.",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not the name of a [`FailureKind`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown failure kind {0:?}")]
pub struct UnknownFailureKind(pub String);

impl FromStr for FailureKind {
    type Err = UnknownFailureKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownFailureKind(s.to_owned()))
    }
}

/// A 128-bit digest (truncated SHA-256, or HMAC-SHA256 under a key) of a request's payload.
///
/// Stores keep the fingerprint, never the payload itself, so a record holds no request data
/// and a key reused for a different request is still detected.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint([u8; Fingerprint::LEN]);

impl Fingerprint {
    /// Length in bytes.
    pub const LEN: usize = 16;

    /// The fingerprint of `bytes`.
    pub fn of(bytes: impl AsRef<[u8]>) -> Self {
        let mut hasher = FingerprintHasher::default();
        hasher.update(bytes.as_ref());
        hasher.finish()
    }

    /// Wraps stored bytes.
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// Reads a stored fingerprint; `None` when the slice has the wrong length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl Fingerprint {
    /// Appends the 32 lower-case hex digits of the fingerprint to `out`.
    pub fn push_hex(&self, out: &mut String) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        out.reserve(2 * Self::LEN);
        for byte in self.0 {
            out.push(char::from(DIGITS[usize::from(byte >> 4)]));
            out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
        }
    }

    /// Reads the 32 hex digits [`push_hex`](Self::push_hex) writes (either case); `None` for
    /// anything else.
    ///
    /// ```
    /// use ana_core::Fingerprint;
    ///
    /// let fingerprint = Fingerprint::of("pay 10");
    /// let mut hex = String::new();
    /// fingerprint.push_hex(&mut hex);
    /// assert_eq!(Fingerprint::from_hex(hex.as_bytes()), Some(fingerprint));
    /// assert_eq!(Fingerprint::from_hex(b"not hex"), None);
    /// ```
    pub fn from_hex(hex: &[u8]) -> Option<Self> {
        if hex.len() != 2 * Self::LEN {
            return None;
        }
        let digit = |byte: u8| {
            char::from(byte)
                .to_digit(16)
                .and_then(|d| u8::try_from(d).ok())
        };
        let mut bytes = [0; Self::LEN];
        for (slot, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
            *slot = digit(pair[0])? << 4 | digit(pair[1])?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = String::with_capacity(2 * Self::LEN);
        self.push_hex(&mut hex);
        f.write_str(&hex)
    }
}

/// Computes a [`Fingerprint`] over several pieces, for payloads that arrive in parts
/// (an HTTP method, a path and a streamed body).
///
/// Each piece given to [`field`](Self::field) is length-prefixed, so `("ab", "c")` and
/// `("a", "bc")` differ. The default hasher is SHA-256; with the `encryption` feature,
/// [`FingerprintKey::hasher`](crate::encryption::FingerprintKey::hasher) gives one that is
/// HMAC-SHA256 under a secret key, whose fingerprints reveal nothing to someone who can read
/// the store but not the key.
#[derive(Clone, Default)]
pub struct FingerprintHasher(HasherState);

#[derive(Clone)]
enum HasherState {
    Plain(Sha256),
    #[cfg(feature = "encryption")]
    Keyed(hmac::Hmac<Sha256>),
}

impl Default for HasherState {
    fn default() -> Self {
        Self::Plain(Sha256::default())
    }
}

impl FingerprintHasher {
    /// A hasher that is HMAC-SHA256 under the key `mac` was keyed with.
    #[cfg(feature = "encryption")]
    pub(crate) fn keyed(mac: hmac::Hmac<Sha256>) -> Self {
        Self(HasherState::Keyed(mac))
    }

    /// Feeds raw bytes (no framing).
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            HasherState::Plain(sha) => sha.update(bytes),
            #[cfg(feature = "encryption")]
            HasherState::Keyed(mac) => hmac::Mac::update(mac, bytes),
        }
    }

    /// Feeds one length-prefixed field.
    pub fn field(&mut self, bytes: &[u8]) {
        self.update(&(bytes.len() as u64).to_le_bytes());
        self.update(bytes);
    }

    /// The fingerprint of everything fed so far.
    pub fn finish(self) -> Fingerprint {
        let mut out = [0; Fingerprint::LEN];
        match self.0 {
            HasherState::Plain(sha) => out.copy_from_slice(&sha.finalize()[..Fingerprint::LEN]),
            #[cfg(feature = "encryption")]
            HasherState::Keyed(mac) => {
                out.copy_from_slice(&hmac::Mac::finalize(mac).into_bytes()[..Fingerprint::LEN]);
            }
        }
        Fingerprint(out)
    }
}

impl fmt::Debug for FingerprintHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            HasherState::Plain(_) => "FingerprintHasher",
            #[cfg(feature = "encryption")]
            HasherState::Keyed(_) => "FingerprintHasher(keyed)",
        })
    }
}

/// A payload that can be fingerprinted, to detect a key reused for another request.
pub trait Payload {
    /// The payload's fingerprint. Equal payloads must give equal fingerprints, across
    /// processes and releases.
    fn fingerprint(&self) -> Fingerprint;
}

impl Payload for Fingerprint {
    fn fingerprint(&self) -> Fingerprint {
        *self
    }
}

impl Payload for () {
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of([])
    }
}

impl Payload for str {
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self)
    }
}

impl Payload for String {
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self)
    }
}

impl Payload for [u8] {
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self)
    }
}

impl Payload for Vec<u8> {
    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self)
    }
}

impl<T: Payload + ?Sized> Payload for &T {
    fn fingerprint(&self) -> Fingerprint {
        (**self).fingerprint()
    }
}

/// A payload fingerprinted through its JSON form (`serde_json`), for structured requests.
///
/// The form is canonical: object keys in sorted order, whatever order the value gave them in
/// (a `HashMap` gives a new order to every map), so equal payloads give equal fingerprints.
/// A payload that cannot be serialized gets a fingerprint no other call shares: a retry of it
/// is refused as another payload rather than answered with someone else's result.
///
/// ```
/// use std::collections::HashMap;
/// use ana_core::{Json, Payload};
///
/// #[derive(serde::Serialize)]
/// struct Charge { cents: u64, currency: &'static str }
///
/// let a = Json(Charge { cents: 100, currency: "EUR" });
/// let b = Json(Charge { cents: 200, currency: "EUR" });
/// assert_ne!(a.fingerprint(), b.fingerprint());
///
/// fn tags(pairs: &[(&'static str, u32)]) -> Json<HashMap<&'static str, u32>> {
///     Json(pairs.iter().copied().collect())
/// }
/// let one = tags(&[("a", 1), ("b", 2), ("c", 3), ("d", 4)]);
/// let other = tags(&[("d", 4), ("c", 3), ("b", 2), ("a", 1)]);
/// assert_eq!(one.fingerprint(), other.fingerprint());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Json<T>(pub T);

impl<T: serde::Serialize> Payload for Json<T> {
    fn fingerprint(&self) -> Fingerprint {
        let mut hasher = FingerprintHasher::default();
        match serde_json::to_value(&self.0) {
            Ok(value) => canonical(&value, &mut hasher),
            // serde_json's `Value` holds no number past 64 bits (a `u128` id): the JSON text
            // as written, marked apart from every canonical form.
            Err(_) if let Ok(text) = serde_json::to_vec(&self.0) => {
                hasher.update(b"\xfftext");
                hasher.update(&text);
            }
            Err(_) => {
                // Never equal to another call's: a process-wide count, keyed at random.
                static CALLS: AtomicU64 = AtomicU64::new(0);
                let mut random = std::collections::hash_map::RandomState::new().build_hasher();
                random.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
                hasher.update(b"\xffunserializable");
                hasher.update(&random.finish().to_le_bytes());
            }
        }
        hasher.finish()
    }
}

/// Compact JSON text of `value` into `hasher`, object keys sorted.
fn canonical(value: &serde_json::Value, hasher: &mut FingerprintHasher) {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            hasher.update(b"{");
            for (index, (key, value)) in entries.into_iter().enumerate() {
                if index > 0 {
                    hasher.update(b",");
                }
                json(key, hasher);
                hasher.update(b":");
                canonical(value, hasher);
            }
            hasher.update(b"}");
        }
        serde_json::Value::Array(items) => {
            hasher.update(b"[");
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    hasher.update(b",");
                }
                canonical(item, hasher);
            }
            hasher.update(b"]");
        }
        scalar => json(scalar, hasher),
    }
}

/// A string or scalar as JSON text into `hasher` (which cannot fail).
fn json(value: &impl serde::Serialize, hasher: &mut FingerprintHasher) {
    let _ = serde_json::to_writer(HashWriter(hasher), value);
}

struct HashWriter<'a>(&'a mut FingerprintHasher);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The stored record of one idempotent operation, identified by `(target, key)`.
///
/// `result` holds the encoded result of a Finished operation (see [`Codec`](crate::Codec));
/// `attempt` is the attempt number: every claim that starts an execution increments it, and an
/// attempt may only finish the record while it still holds the current
/// [`Lease`](crate::Lease).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedOperation {
    /// What the key is scoped to: the operation, route or queue (`[POST]/payments`).
    pub target: String,
    /// The caller's idempotency key.
    pub key: String,
    /// Where the record stands.
    pub status: Status,
    /// Fingerprint of the payload of the call that created the record.
    pub fingerprint: Fingerprint,
    /// The reference time of the call that created the record.
    pub reference_time: DateTime<Utc>,
    /// When the current (or last) attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// Lock deadline of the current attempt: past it, another call may take over.
    pub timeout: Option<DateTime<Utc>>,
    /// Past it the record no longer runs; a Finished record still replays.
    pub expiration: Option<DateTime<Utc>>,
    /// The encoded result, once Finished. A Finished record without one ran, but its result
    /// could not be encoded: it is never run again, and every call for its key is answered
    /// [`Error::Codec`](crate::Error::Codec).
    pub result: Option<Vec<u8>>,
    /// The last attempt's error message, while Failed.
    pub error: Option<String>,
    /// What the last attempt's failure was, while Failed (with [`error`](Self::error)).
    pub failure: Option<FailureKind>,
    /// When the successful attempt committed.
    pub finished_at: Option<DateTime<Utc>>,
    /// How many attempts failed.
    pub error_count: u32,
    /// The number of the current (or last) attempt; 0 before the first.
    pub attempt: u64,
}

impl TrackedOperation {
    /// A record in state `status` with the given identity and no attempt history.
    pub fn new(
        target: impl Into<String>,
        key: impl Into<String>,
        status: Status,
        fingerprint: Fingerprint,
        reference_time: DateTime<Utc>,
    ) -> Self {
        Self {
            target: target.into(),
            key: key.into(),
            status,
            fingerprint,
            reference_time,
            started_at: None,
            timeout: None,
            expiration: None,
            result: None,
            error: None,
            failure: None,
            finished_at: None,
            error_count: 0,
            attempt: 0,
        }
    }

    /// Whether the record's own expiration has passed at `now`.
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expiration.is_some_and(|expiration| now > expiration)
    }

    /// Whether a claim at `now` from a call with `fingerprint` may start a new attempt:
    /// same payload, not expired, and Ready, Failed, or Running past its timeout.
    ///
    /// Every store's atomic claim implements exactly this condition.
    pub fn is_claimable_at(&self, fingerprint: Fingerprint, now: DateTime<Utc>) -> bool {
        self.fingerprint == fingerprint
            && !self.is_expired_at(now)
            && match self.status {
                Status::Ready | Status::Failed => true,
                Status::Running => self.timeout.is_some_and(|timeout| now >= timeout),
                Status::Finished => false,
            }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;

    #[test]
    fn fingerprints_read_back_from_hex_and_nothing_else() {
        let fingerprint = Fingerprint::from_bytes(*b"\x00\x01\x7f\x80\xfe\xffabcdefghij");
        let mut hex = String::new();
        fingerprint.push_hex(&mut hex);
        assert_eq!(hex, "00017f80feff6162636465666768696a");
        assert_eq!(Fingerprint::from_hex(hex.as_bytes()), Some(fingerprint));
        let upper = hex.to_ascii_uppercase();
        assert_eq!(Fingerprint::from_hex(upper.as_bytes()), Some(fingerprint));
        assert_eq!(Fingerprint::from_hex(&hex.as_bytes()[1..]), None);
        assert_eq!(Fingerprint::from_hex(b"zz"), None);
        assert_eq!(Fingerprint::from_hex("g".repeat(32).as_bytes()), None);
        assert_eq!(Fingerprint::from_hex("+1".repeat(16).as_bytes()), None);
    }

    /// The canonical form is compact JSON with every object's keys in order.
    #[test]
    fn the_canonical_form_is_compact_json_with_sorted_keys() {
        let value: BTreeMap<&str, serde_json::Value> = [
            ("b\"q", serde_json::Value::from("é\n")),
            (
                "a",
                serde_json::Value::Array(vec![
                    1.into(),
                    "two".into(),
                    serde_json::Value::Null,
                    [("y", serde_json::Value::from(true)), ("x", 1.5.into())]
                        .into_iter()
                        .map(|(key, value)| (key.to_owned(), value))
                        .collect(),
                ]),
            ),
        ]
        .into();
        let text = r#"{"a":[1,"two",null,{"x":1.5,"y":true}],"b\"q":"é\n"}"#;
        assert_eq!(Json(value).fingerprint(), Fingerprint::of(text));
    }

    /// Numbers past 64 bits, which serde_json's `Value` cannot hold, are fingerprinted by
    /// their text: the same payload gives the same fingerprint.
    #[test]
    fn wide_numbers_keep_a_stable_fingerprint() {
        assert!(serde_json::to_value(u128::MAX).is_err());
        let wide = |n: u128| Json(BTreeMap::from([("id", n)])).fingerprint();
        assert_eq!(wide(u128::MAX), wide(u128::MAX));
        assert_ne!(wide(u128::MAX), wide(u128::MAX - 1));
    }

    #[test]
    fn failure_kinds_read_back_from_their_names() {
        for &kind in FailureKind::ALL {
            assert_eq!(kind.as_str().parse::<FailureKind>(), Ok(kind));
        }
        assert_eq!(
            "boom".parse::<FailureKind>(),
            Err(UnknownFailureKind("boom".into()))
        );
    }

    /// A payload serde_json refuses (a map with non-string keys) never shares a fingerprint.
    #[test]
    fn unserializable_payloads_share_no_fingerprint() {
        let payload: HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        assert!(serde_json::to_value(&payload).is_err());
        assert_ne!(
            Json(payload.clone()).fingerprint(),
            Json(payload).fingerprint()
        );
    }
}
