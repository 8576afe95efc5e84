//! [`IdempotencyConfig`]: header names, defaults, caps, limits and the request functions.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName};
use http::request::Parts;

use super::grpc::{GRPC_ENCODING, GRPC_MESSAGE, GRPC_STATUS, GRPC_STATUS_DETAILS};
#[cfg(feature = "grpc")]
use super::grpc::{default_grpc_recordable, grpc_status};
use super::headers::{self as parse, HeaderProblem};
use super::problem::Rejection;
#[cfg(feature = "encryption")]
use ana_core::encryption::FingerprintKey;
use ana_core::{Fingerprint, FingerprintHasher};

/// Default name of the key header.
pub const KEY_HEADER: HeaderName = HeaderName::from_static("x-idempotency-key");
/// The IETF draft's key header, whose value is a structured-field string (`"abc"`).
pub const IETF_KEY_HEADER: HeaderName = HeaderName::from_static("idempotency-key");
/// Default name of the reference-time header (RFC 3339).
pub const REFERENCE_TIME_HEADER: HeaderName =
    HeaderName::from_static("x-idempotency-reference-time");
/// Default name of the timeout header (a duration).
pub const TIMEOUT_HEADER: HeaderName = HeaderName::from_static("x-idempotency-timeout");
/// Default name of the expiration header (a duration).
pub const EXPIRATION_HEADER: HeaderName = HeaderName::from_static("x-idempotency-expiration");

/// Headers never stored for replay, even when listed: credentials, cookies, hop-by-hop
/// headers, and `Content-Length` (recomputed on replay).
pub const NEVER_REPLAYED: [HeaderName; 14] = [
    header::SET_COOKIE,
    header::AUTHORIZATION,
    header::WWW_AUTHENTICATE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("authentication-info"),
    HeaderName::from_static("proxy-authentication-info"),
    HeaderName::from_static("set-cookie2"),
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::CONTENT_LENGTH,
    HeaderName::from_static("keep-alive"),
];

/// The headers (and trailers) replayed by default: the representation's, and gRPC's status
/// and encoding.
pub fn default_replay_headers() -> Vec<HeaderName> {
    vec![
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CONTENT_LANGUAGE,
        header::CONTENT_LOCATION,
        header::CONTENT_DISPOSITION,
        header::LOCATION,
        header::ETAG,
        header::LAST_MODIFIED,
        header::LINK,
        header::CACHE_CONTROL,
        header::EXPIRES,
        header::VARY,
        header::RETRY_AFTER,
        GRPC_STATUS,
        GRPC_MESSAGE,
        GRPC_STATUS_DETAILS,
        GRPC_ENCODING,
    ]
}

/// The default recordable-status rule: 2xx, 3xx and 4xx except 408, 409, 425 and 429 (which
/// mean "try again"). Everything else (5xx) is recorded as Failed, so a retry runs again.
pub fn default_recordable(status: StatusCode) -> bool {
    status.is_success()
        || status.is_redirection()
        || (status.is_client_error() && !matches!(status.as_u16(), 408 | 409 | 425 | 429))
}

/// What a request function returns: a value, no value (use the default), or a rejection.
///
/// Implemented for `T`, `Option<T>` and `Result<Option<T>, Rejection>` where `T` is `String`
/// or `&'static str` (keys), [`Duration`] (timeout, expiration) or `DateTime<Utc>` (reference
/// time), so [`value`] and plain closures both fit.
pub trait RequestValue<T> {
    /// The value, `None` for "use the default", or a rejection.
    fn resolve(self) -> Result<Option<T>, Rejection>;
}

macro_rules! request_value {
    ($target:ty: $($source:ty => $convert:expr),* $(,)?) => {
        $(
            impl RequestValue<$target> for $source {
                fn resolve(self) -> Result<Option<$target>, Rejection> {
                    #[allow(clippy::redundant_closure_call)]
                    Ok(Some(($convert)(self)))
                }
            }
        )*
        impl RequestValue<$target> for Option<$target> {
            fn resolve(self) -> Result<Option<$target>, Rejection> {
                Ok(self)
            }
        }
        impl RequestValue<$target> for Result<Option<$target>, Rejection> {
            fn resolve(self) -> Result<Option<$target>, Rejection> {
                self
            }
        }
    };
}

request_value!(String: String => |s| s, &'static str => |s: &str| s.to_owned());
request_value!(Duration: Duration => |d| d);
request_value!(DateTime<Utc>: DateTime<Utc> => |t| t);

/// A constant as a request function: `config.with_target(value("payments"))`.
///
/// ```
/// use std::time::Duration;
/// use ana_http::{value, IdempotencyConfig};
///
/// let config = IdempotencyConfig::default()
///     .with_target(value("payments"))
///     .with_timeout(value(Duration::from_secs(30)));
/// # let _ = config;
/// ```
pub fn value<T: Clone + Send + Sync + 'static>(
    value: T,
) -> impl Fn(&Parts) -> T + Clone + Send + Sync + 'static {
    move |_: &Parts| value.clone()
}

type ValueFn<T> = Arc<dyn Fn(&Parts) -> Result<Option<T>, Rejection> + Send + Sync>;
type TargetFn = Arc<dyn Fn(&Parts) -> String + Send + Sync>;
type PayloadFn = Arc<dyn Fn(&Parts, &[u8]) -> Fingerprint + Send + Sync>;
type ScopeFn = Arc<dyn Fn(&Parts) -> Option<Vec<u8>> + Send + Sync>;
type StatusFn = Arc<dyn Fn(StatusCode) -> bool + Send + Sync>;
#[cfg(feature = "grpc")]
type GrpcStatusFn = Arc<dyn Fn(i32) -> bool + Send + Sync>;

/// How the idempotency layer reads requests and records responses. Cheap to clone (one `Arc`);
/// builders consume and return it.
///
/// | setting | default |
/// |---|---|
/// | key header | `X-Idempotency-Key`, and the IETF `Idempotency-Key` (`"..."`) |
/// | key required | yes: 400 without one (else the request passes through untouched) |
/// | reference time | `X-Idempotency-Reference-Time` (RFC 3339), else now; at most 5 min ahead |
/// | timeout | `X-Idempotency-Timeout`, else 60s; min 1s, max 1h |
/// | expiration | `X-Idempotency-Expiration`, else 24h; max 7 days |
/// | target | `[METHOD]path` |
/// | payload | fingerprint of method, path and query, body |
/// | scope | a hash of `Authorization` |
/// | request body limit | 1 MiB (413 above it) |
/// | stored response limit | 1 MiB (above it, recorded without body) |
/// | recorded statuses | [`default_recordable`]; for gRPC, [`default_grpc_recordable`] |
/// | replayed headers and trailers | [`default_replay_headers`], never [`NEVER_REPLAYED`] |
/// | `Retry-After` on 409 | time left before the holder's timeout, at most 5s |
/// | `Retry-After` on 503 | 1s |
/// | waiting for an in-flight duplicate ([`with_wait`](Self::with_wait)) | none |
/// | lease renewal ([`with_max_lease`](Self::with_max_lease)) | none |
///
/// A timeout or expiration header above its maximum (or `0`, meaning "never", while a maximum
/// is set), or a timeout below its minimum, is refused with 400 rather than clamped: the client
/// learns the server will not keep the promise it asked for. The minimum guards the work: past
/// its timeout a duplicate takes the key over and runs the handler again, so a client's
/// `X-Idempotency-Timeout: 1ns` would have every retry run it.
#[derive(Clone)]
pub struct IdempotencyConfig {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    key_header: HeaderName,
    ietf_key_header: Option<HeaderName>,
    reference_time_header: HeaderName,
    timeout_header: HeaderName,
    expiration_header: HeaderName,
    key_required: bool,
    default_timeout: Option<Duration>,
    min_timeout: Option<Duration>,
    max_timeout: Option<Duration>,
    default_expiration: Option<Duration>,
    max_expiration: Option<Duration>,
    max_clock_skew: Duration,
    max_request_body: usize,
    max_stored_response: usize,
    replay_headers: Vec<HeaderName>,
    recordable: StatusFn,
    #[cfg(feature = "grpc")]
    grpc_recordable: GrpcStatusFn,
    unavailable_retry_after: Duration,
    max_still_running_retry_after: Duration,
    max_wait: Option<Duration>,
    max_lease: Option<Duration>,
    key: Option<ValueFn<String>>,
    target: Option<TargetFn>,
    payload: Option<PayloadFn>,
    reference_time: Option<ValueFn<DateTime<Utc>>>,
    timeout: Option<ValueFn<Duration>>,
    expiration: Option<ValueFn<Duration>>,
    scope: Option<ScopeFn>,
    #[cfg(feature = "encryption")]
    fingerprint_key: Option<KeyedHashes>,
}

/// A fingerprint key, and the scope hash of requests without credentials under it (computed
/// once).
#[cfg(feature = "encryption")]
#[derive(Clone)]
struct KeyedHashes {
    key: FingerprintKey,
    unscoped: ScopePrefix,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            inner: Arc::new(Inner {
                key_header: KEY_HEADER,
                ietf_key_header: Some(IETF_KEY_HEADER),
                reference_time_header: REFERENCE_TIME_HEADER,
                timeout_header: TIMEOUT_HEADER,
                expiration_header: EXPIRATION_HEADER,
                key_required: true,
                default_timeout: Some(Duration::from_secs(60)),
                min_timeout: Some(ana_core::DEFAULT_MIN_TIMEOUT),
                max_timeout: Some(Duration::from_secs(3600)),
                default_expiration: Some(Duration::from_secs(24 * 3600)),
                max_expiration: Some(Duration::from_secs(7 * 24 * 3600)),
                max_clock_skew: Duration::from_secs(300),
                max_request_body: 1 << 20,
                max_stored_response: 1 << 20,
                replay_headers: default_replay_headers(),
                recordable: Arc::new(default_recordable),
                #[cfg(feature = "grpc")]
                grpc_recordable: Arc::new(default_grpc_recordable),
                unavailable_retry_after: Duration::from_secs(1),
                max_still_running_retry_after: Duration::from_secs(5),
                max_wait: None,
                max_lease: None,
                key: None,
                target: None,
                payload: None,
                reference_time: None,
                timeout: None,
                expiration: None,
                scope: None,
                #[cfg(feature = "encryption")]
                fingerprint_key: None,
            }),
        }
    }
}

impl fmt::Debug for IdempotencyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let mut debug = f.debug_struct("IdempotencyConfig");
        debug
            .field("key_header", &inner.key_header)
            .field("ietf_key_header", &inner.ietf_key_header)
            .field("reference_time_header", &inner.reference_time_header)
            .field("timeout_header", &inner.timeout_header)
            .field("expiration_header", &inner.expiration_header)
            .field("key_required", &inner.key_required)
            .field("default_timeout", &inner.default_timeout)
            .field("min_timeout", &inner.min_timeout)
            .field("max_timeout", &inner.max_timeout)
            .field("default_expiration", &inner.default_expiration)
            .field("max_expiration", &inner.max_expiration)
            .field("max_clock_skew", &inner.max_clock_skew)
            .field("max_request_body", &inner.max_request_body)
            .field("max_stored_response", &inner.max_stored_response)
            .field("replay_headers", &inner.replay_headers);
        #[cfg(feature = "encryption")]
        debug.field("fingerprint_key", &inner.fingerprint_key.is_some());
        debug.finish_non_exhaustive()
    }
}

/// The values of one request, read by [`IdempotencyConfig::read`].
#[derive(Clone, Debug)]
pub(crate) struct RequestValues {
    pub(crate) names: Names,
    pub(crate) reference_time: Option<DateTime<Utc>>,
    /// `None`: never (a zero duration on the wire).
    pub(crate) timeout: Option<Duration>,
    /// `None`: never.
    pub(crate) expiration: Option<Duration>,
}

impl RequestValues {
    /// The key the client sent.
    pub(crate) fn key(&self) -> &str {
        client_key(self.names.scoped_key())
    }
}

/// How many bytes of a request's names are kept in place: a scope hash (33 bytes), a UUID key
/// and a target of some fifty bytes.
const INLINE_NAMES: usize = 128;

/// The record's key (`<scope hash>:<client key>`), then the target, in one buffer: on the
/// stack when they fit (the usual request), so that reading a request's names allocates
/// nothing.
#[derive(Clone, Debug, Default)]
pub(crate) struct Names {
    text: NamesText,
    /// Where the target starts.
    key_end: usize,
}

#[derive(Clone, Debug)]
enum NamesText {
    Inline(arrayvec::ArrayString<INLINE_NAMES>),
    Heap(String),
}

impl Default for NamesText {
    fn default() -> Self {
        Self::Inline(arrayvec::ArrayString::new())
    }
}

impl Names {
    fn as_str(&self) -> &str {
        match &self.text {
            NamesText::Inline(text) => text,
            NamesText::Heap(text) => text,
        }
    }

    fn push_str(&mut self, piece: &str) {
        match &mut self.text {
            NamesText::Inline(text) => {
                if text.try_push_str(piece).is_err() {
                    let mut heap = String::with_capacity(2 * (text.len() + piece.len()));
                    heap.push_str(text);
                    heap.push_str(piece);
                    self.text = NamesText::Heap(heap);
                }
            }
            NamesText::Heap(text) => text.push_str(piece),
        }
    }

    /// Ends the record's key: what is pushed next is the target.
    fn end_key(&mut self) {
        self.key_end = self.as_str().len();
    }

    /// `<scope hash>:<client key>`: the record's key.
    pub(crate) fn scoped_key(&self) -> &str {
        self.as_str().get(..self.key_end).unwrap_or_default()
    }

    /// The operation's target.
    pub(crate) fn target(&self) -> &str {
        self.as_str().get(self.key_end..).unwrap_or_default()
    }
}

fn rejection(problem: HeaderProblem) -> Rejection {
    Rejection::InvalidHeader {
        header: problem.header,
        reason: problem.reason,
    }
}

impl IdempotencyConfig {
    fn inner(&mut self) -> &mut Inner {
        Arc::make_mut(&mut self.inner)
    }

    /// Sets the key header's name (default `X-Idempotency-Key`).
    #[must_use]
    pub fn with_key_header(mut self, name: HeaderName) -> Self {
        self.inner().key_header = name;
        self
    }

    /// Sets the second key header, read as a structured-field string (default the IETF
    /// `Idempotency-Key`; `None` to ignore it). When both are sent they must agree.
    #[must_use]
    pub fn with_ietf_key_header(mut self, name: Option<HeaderName>) -> Self {
        self.inner().ietf_key_header = name;
        self
    }

    /// Sets the reference-time header's name.
    #[must_use]
    pub fn with_reference_time_header(mut self, name: HeaderName) -> Self {
        self.inner().reference_time_header = name;
        self
    }

    /// Sets the timeout header's name.
    #[must_use]
    pub fn with_timeout_header(mut self, name: HeaderName) -> Self {
        self.inner().timeout_header = name;
        self
    }

    /// Sets the expiration header's name.
    #[must_use]
    pub fn with_expiration_header(mut self, name: HeaderName) -> Self {
        self.inner().expiration_header = name;
        self
    }

    /// Whether a request without a key is refused with 400 (`true`, the default) or passed to
    /// the handler untouched, without idempotency.
    #[must_use]
    pub fn with_key_required(mut self, required: bool) -> Self {
        self.inner().key_required = required;
        self
    }

    /// How long one attempt holds the key when the request does not say (default 60s; `None`:
    /// until it finishes). Past it a retry may take over. Takes a `Duration` or an `Option`.
    #[must_use]
    pub fn with_default_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.inner().default_timeout = timeout.into().filter(|timeout| !timeout.is_zero());
        self
    }

    /// The shortest timeout a request may ask for (default 1s; `None`: no floor). A timeout
    /// header below it is refused with 400 (`invalid-header`): past an attempt's timeout a
    /// duplicate takes the key over and runs the handler again, so a tiny timeout would let
    /// every retry run it. The engine's manager refuses shorter timeouts from the request
    /// functions and the default too (a 500: the server's own setting is wrong).
    #[must_use]
    pub fn with_min_timeout(mut self, min: Option<Duration>) -> Self {
        self.inner().min_timeout = min;
        self
    }

    /// The shortest timeout a request may ask for.
    pub fn min_timeout(&self) -> Option<Duration> {
        self.inner.min_timeout
    }

    /// The largest timeout a request may ask for (default 1h; `None`: no limit).
    #[must_use]
    pub fn with_max_timeout(mut self, max: Option<Duration>) -> Self {
        self.inner().max_timeout = max;
        self
    }

    /// How long after its reference time a request may run when it does not say (default 24h;
    /// `None`: forever). Takes a `Duration` or an `Option`.
    #[must_use]
    pub fn with_default_expiration(mut self, expiration: impl Into<Option<Duration>>) -> Self {
        self.inner().default_expiration = expiration.into().filter(|e| !e.is_zero());
        self
    }

    /// The largest expiration a request may ask for (default 7 days; `None`: no limit).
    #[must_use]
    pub fn with_max_expiration(mut self, max: Option<Duration>) -> Self {
        self.inner().max_expiration = max;
        self
    }

    /// How far ahead of the server's clock a reference time may be (default 5 minutes).
    #[must_use]
    pub fn with_max_clock_skew(mut self, skew: Duration) -> Self {
        self.inner().max_clock_skew = skew;
        self
    }

    /// The largest request body read, in bytes (default 1 MiB). Above it: 413, the handler
    /// does not run and nothing is recorded.
    #[must_use]
    pub fn with_max_request_body(mut self, bytes: usize) -> Self {
        self.inner().max_request_body = bytes;
        self
    }

    /// The largest response body stored, in bytes (default 1 MiB). A larger response is sent
    /// to the first caller whole and recorded without its body: retries get 500
    /// `response-not-stored`, and the handler never runs twice.
    #[must_use]
    pub fn with_max_stored_response(mut self, bytes: usize) -> Self {
        self.inner().max_stored_response = bytes;
        self
    }

    /// The response headers (and trailers) stored and replayed. Headers in [`NEVER_REPLAYED`]
    /// are dropped from the list; `grpc-status` and `grpc-message` are always kept (a gRPC
    /// answer recorded as done by its status is replayed with it).
    #[must_use]
    pub fn with_replay_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        // Each name once: a name listed twice would copy its values twice into a replay.
        let mut kept: Vec<HeaderName> = Vec::new();
        for name in names.into_iter().chain([GRPC_STATUS, GRPC_MESSAGE]) {
            if !NEVER_REPLAYED.contains(&name) && !kept.contains(&name) {
                kept.push(name);
            }
        }
        self.inner().replay_headers = kept;
        self
    }

    /// Which handler statuses are recorded as Finished (and replayed); the others are recorded
    /// as Failed, so a retry runs the handler again. Default: [`default_recordable`].
    #[must_use]
    pub fn with_recordable(
        mut self,
        recordable: impl Fn(StatusCode) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.inner().recordable = Arc::new(recordable);
        self
    }

    /// Which gRPC statuses (`grpc-status` of an HTTP 2xx response) are recorded as Finished;
    /// the others are recorded as Failed, so a retry runs the handler again. Default:
    /// [`default_grpc_recordable`].
    #[cfg(feature = "grpc")]
    #[must_use]
    pub fn with_grpc_recordable(
        mut self,
        recordable: impl Fn(i32) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.inner().grpc_recordable = Arc::new(recordable);
        self
    }

    /// Lets a request whose key is held by another request in flight wait for it, up to
    /// `max` (default: `None`, nothing waits; the 409 comes at once).
    ///
    /// A client asks with `Prefer: wait=N` (RFC 7240, seconds), capped by `max`; a request
    /// without the preference does not wait. The waiting request gets the first one's
    /// recorded response (`Idempotent-Replayed: true`) as soon as it is recorded, or the 409
    /// with `Retry-After` when the time runs out; both carry `Preference-Applied: wait=N`, the
    /// wait granted. It never runs the handler while the first request's lease is alive, and
    /// holds no connection, lock or thread while it waits (see
    /// [`Manager::call_or_wait`](ana_core::Manager::call_or_wait)).
    #[must_use]
    pub fn with_wait(mut self, max: impl Into<Option<Duration>>) -> Self {
        self.inner().max_wait = max.into().filter(|max| !max.is_zero());
        self
    }

    /// Renews the lease of a request in flight while its handler runs, up to `max` after its
    /// claim (default: `None`, the claim's timeout holds): a handler slower than its timeout
    /// is not taken over before `max`, and a crashed server frees the key one timeout after
    /// its last renewal (see [`Manager::with_max_lease`](ana_core::Manager::with_max_lease)).
    #[must_use]
    pub fn with_max_lease(mut self, max: impl Into<Option<Duration>>) -> Self {
        self.inner().max_lease = max.into();
        self
    }

    /// The longest a request may wait for a duplicate in flight, when waiting is on.
    pub fn max_wait(&self) -> Option<Duration> {
        self.inner.max_wait
    }

    /// How long a request with these headers may wait for a duplicate in flight: its
    /// `Prefer: wait`, capped by [`max_wait`](Self::max_wait); `None` without either.
    pub(crate) fn wait(&self, headers: &HeaderMap) -> Option<Duration> {
        let max = self.inner.max_wait?;
        let wait = parse::read_prefer_wait(headers)?.min(max);
        (!wait.is_zero()).then_some(wait)
    }

    /// The ceiling of lease renewals, when leases are renewed.
    pub fn max_lease(&self) -> Option<Duration> {
        self.inner.max_lease
    }

    /// The `Retry-After` of a 503 when the store is unavailable (default 1s).
    #[must_use]
    pub fn with_unavailable_retry_after(mut self, delay: Duration) -> Self {
        self.inner().unavailable_retry_after = delay;
        self
    }

    /// The largest `Retry-After` of a 409 (default 5s). The 409 advises the time left before
    /// the holder's timeout, capped by this: most handlers finish long before their timeout.
    #[must_use]
    pub fn with_max_still_running_retry_after(mut self, delay: Duration) -> Self {
        self.inner().max_still_running_retry_after = delay;
        self
    }

    /// Reads the key from the request instead of the key headers. Return `None` for "no key".
    #[must_use]
    pub fn with_key<F, T>(mut self, key: F) -> Self
    where
        F: Fn(&Parts) -> T + Send + Sync + 'static,
        T: RequestValue<String>,
    {
        self.inner().key = Some(Arc::new(move |parts| key(parts).resolve()));
        self
    }

    /// What the key is scoped to (default `[METHOD]path`, e.g. `[POST]/payments`).
    #[must_use]
    pub fn with_target<F, T>(mut self, target: F) -> Self
    where
        F: Fn(&Parts) -> T + Send + Sync + 'static,
        T: Into<String>,
    {
        self.inner().target = Some(Arc::new(move |parts| target(parts).into()));
        self
    }

    /// The fingerprint that detects a key reused for another request (default: method,
    /// path-and-query and body, see [`default_payload`]).
    #[must_use]
    pub fn with_payload(
        mut self,
        payload: impl Fn(&Parts, &[u8]) -> Fingerprint + Send + Sync + 'static,
    ) -> Self {
        self.inner().payload = Some(Arc::new(payload));
        self
    }

    /// Reads the reference time from the request instead of its header.
    #[must_use]
    pub fn with_reference_time<F, T>(mut self, reference_time: F) -> Self
    where
        F: Fn(&Parts) -> T + Send + Sync + 'static,
        T: RequestValue<DateTime<Utc>>,
    {
        self.inner().reference_time = Some(Arc::new(move |parts| reference_time(parts).resolve()));
        self
    }

    /// Reads the timeout from the request instead of its header (`None`: the default).
    /// The maximum does not apply to what this function returns.
    #[must_use]
    pub fn with_timeout<F, T>(mut self, timeout: F) -> Self
    where
        F: Fn(&Parts) -> T + Send + Sync + 'static,
        T: RequestValue<Duration>,
    {
        self.inner().timeout = Some(Arc::new(move |parts| timeout(parts).resolve()));
        self
    }

    /// Reads the expiration from the request instead of its header (`None`: the default).
    /// The maximum does not apply to what this function returns.
    #[must_use]
    pub fn with_expiration<F, T>(mut self, expiration: F) -> Self
    where
        F: Fn(&Parts) -> T + Send + Sync + 'static,
        T: RequestValue<Duration>,
    {
        self.inner().expiration = Some(Arc::new(move |parts| expiration(parts).resolve()));
        self
    }

    /// Whose key it is (default: the `Authorization` header): requests with different scopes
    /// never share a record, so one client's key never replays another's response. Return the
    /// caller's identity (a user id, a tenant); only its hash is stored. Set it when clients
    /// authenticate otherwise (a session cookie, an API-key header, mutual TLS): requests
    /// without `Authorization` all share one scope by default.
    #[must_use]
    pub fn with_scope<F, S>(mut self, scope: F) -> Self
    where
        F: Fn(&Parts) -> Option<S> + Send + Sync + 'static,
        S: AsRef<[u8]>,
    {
        self.inner().scope = Some(Arc::new(move |parts| {
            scope(parts).map(|scope| scope.as_ref().to_vec())
        }));
        self
    }

    /// Keys the default payload fingerprint and the scope hash with `key`: both become
    /// HMAC-SHA256 under it ([`keyed_payload`], [`keyed_scoped_key`]), so that someone who
    /// reads the store cannot test guesses of a request body or of a bearer token against
    /// them. A payload function of [`with_payload`](Self::with_payload) is used as it is (key
    /// it with [`FingerprintKey::hasher`]).
    ///
    /// **Changing the key** changes the scope hash, which is part of every stored key: a
    /// retry of a request recorded under the old key finds no record and **runs again** (it
    /// is not answered 422). Records made under the old key are left to expire. Change it
    /// when a second run of requests retried across the change is acceptable, or drain the
    /// traffic first (at most the expiration, 24 hours by default).
    ///
    /// ```
    /// use ana_core::encryption::FingerprintKey;
    /// use ana_http::IdempotencyConfig;
    ///
    /// let key = FingerprintKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")?;
    /// let config = IdempotencyConfig::default().with_fingerprint_key(key);
    /// # let _ = config;
    /// # Ok::<(), ana_core::encryption::FingerprintKeyError>(())
    /// ```
    #[cfg(feature = "encryption")]
    #[must_use]
    pub fn with_fingerprint_key(mut self, key: FingerprintKey) -> Self {
        let unscoped = scope_prefix(&scope_hash(key.hasher(), None));
        self.inner().fingerprint_key = Some(KeyedHashes { key, unscoped });
        self
    }

    /// The key header's name.
    pub fn key_header(&self) -> &HeaderName {
        &self.inner.key_header
    }

    /// The request body limit in bytes.
    pub fn max_request_body(&self) -> usize {
        self.inner.max_request_body
    }

    /// The stored response limit in bytes.
    pub fn max_stored_response(&self) -> usize {
        self.inner.max_stored_response
    }

    /// The replayed headers.
    pub fn replay_headers(&self) -> &[HeaderName] {
        &self.inner.replay_headers
    }

    /// Whether a handler response with `status` is recorded as Finished.
    pub fn is_recordable(&self, status: StatusCode) -> bool {
        (self.inner.recordable)(status)
    }

    /// Whether a handler response is recorded as Finished: by its `grpc-status` (trailers
    /// first, then headers) when it is a successful HTTP exchange carrying one, else by its
    /// HTTP status.
    pub fn is_recordable_response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        trailers: Option<&HeaderMap>,
    ) -> bool {
        #[cfg(feature = "grpc")]
        if let Some(code) = grpc_status(headers, trailers)
            && status.is_success()
        {
            return (self.inner.grpc_recordable)(code);
        }
        #[cfg(not(feature = "grpc"))]
        let _ = (headers, trailers);
        self.is_recordable(status)
    }

    /// The `Retry-After` of a 503.
    pub fn unavailable_retry_after(&self) -> Duration {
        self.inner.unavailable_retry_after
    }

    /// The largest `Retry-After` of a 409.
    pub fn max_still_running_retry_after(&self) -> Duration {
        self.inner.max_still_running_retry_after
    }

    /// The fingerprint of a request under this configuration.
    pub fn fingerprint(&self, parts: &Parts, body: &[u8]) -> Fingerprint {
        match &self.inner.payload {
            Some(payload) => payload(parts, body),
            #[cfg(feature = "encryption")]
            None if let Some(keyed) = &self.inner.fingerprint_key => {
                keyed_payload(&keyed.key, parts, body)
            }
            None => default_payload(parts, body),
        }
    }

    /// `<scope hash>:<key>`, the scope hash keyed when a fingerprint key is set.
    /// `<scope hash>:` for a request's scope (or its absence), under the fingerprint key if
    /// any.
    fn scope_prefix(&self, scope: Option<&[u8]>) -> ScopePrefix {
        #[cfg(feature = "encryption")]
        if let Some(keyed) = &self.inner.fingerprint_key {
            return match scope {
                Some(_) => scope_prefix(&scope_hash(keyed.key.hasher(), scope)),
                None => keyed.unscoped,
            };
        }
        plain_scope_prefix(scope)
    }

    /// Reads the idempotency values of a request; `Ok(None)` when it has no key and keys are
    /// optional.
    pub(crate) fn read(
        &self,
        parts: &Parts,
        now: impl FnOnce() -> DateTime<Utc>,
    ) -> Result<Option<RequestValues>, Rejection> {
        let inner = &*self.inner;
        let headers = &parts.headers;
        let key = match &inner.key {
            Some(key) => match key(parts)? {
                Some(key) if parse::is_valid_key(&key) => Some(Cow::Owned(key)),
                Some(_) => {
                    return Err(Rejection::InvalidHeader {
                        header: inner.key_header.clone(),
                        reason: "is not 1 to 255 visible ASCII characters".into(),
                    });
                }
                None => None,
            },
            None => parse::read_key(headers, &inner.key_header, inner.ietf_key_header.as_ref())
                .map_err(rejection)?,
        };
        let Some(key) = key else {
            return if inner.key_required {
                Err(Rejection::MissingKey {
                    header: inner.key_header.clone(),
                })
            } else {
                Ok(None)
            };
        };
        let reference_time = match &inner.reference_time {
            Some(reference_time) => reference_time(parts)?,
            None => parse::read_reference_time(
                headers,
                &inner.reference_time_header,
                now,
                inner.max_clock_skew,
            )
            .map_err(rejection)?,
        };
        let timeout = match &inner.timeout {
            Some(timeout) => timeout(parts)?,
            None => parse::read_duration(
                headers,
                &inner.timeout_header,
                inner.min_timeout,
                inner.max_timeout,
            )
            .map_err(rejection)?,
        }
        .map_or(inner.default_timeout, nonzero);
        let expiration = match &inner.expiration {
            Some(expiration) => expiration(parts)?,
            None => parse::read_duration(
                headers,
                &inner.expiration_header,
                None,
                inner.max_expiration,
            )
            .map_err(rejection)?,
        }
        .map_or(inner.default_expiration, nonzero);
        let mut names = Names::default();
        let custom_scope;
        let scope = match &inner.scope {
            Some(scope) => {
                custom_scope = scope(parts);
                custom_scope.as_deref()
            }
            None => authorization(parts),
        };
        names.push_str(&self.scope_prefix(scope));
        names.push_str(&key);
        names.end_key();
        match &inner.target {
            Some(target) => names.push_str(&target(parts)),
            None => {
                for piece in default_target_pieces(parts) {
                    names.push_str(piece);
                }
            }
        }
        Ok(Some(RequestValues {
            names,
            reference_time,
            timeout,
            expiration,
        }))
    }
}

/// A duration from a header or a request function: zero means never, as in the Go original.
fn nonzero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

/// `[METHOD]path`, e.g. `[POST]/payments` (no query).
pub fn default_target(parts: &Parts) -> String {
    default_target_pieces(parts).concat()
}

/// The pieces of [`default_target`], to join without a `String` of its own.
fn default_target_pieces(parts: &Parts) -> [&str; 4] {
    ["[", parts.method.as_str(), "]", parts.uri.path()]
}

/// The fingerprint of the method, the path and query, and the body, each length-framed.
pub fn default_payload(parts: &Parts, body: &[u8]) -> Fingerprint {
    payload(FingerprintHasher::default(), parts, body)
}

/// [`default_payload`] as HMAC-SHA256 under `key`: what
/// [`IdempotencyConfig::with_fingerprint_key`] fingerprints requests with.
#[cfg(feature = "encryption")]
pub fn keyed_payload(key: &FingerprintKey, parts: &Parts, body: &[u8]) -> Fingerprint {
    payload(key.hasher(), parts, body)
}

fn payload(mut hasher: FingerprintHasher, parts: &Parts, body: &[u8]) -> Fingerprint {
    hasher.field(parts.method.as_str().as_bytes());
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    hasher.field(path_and_query.as_bytes());
    hasher.field(body);
    hasher.finish()
}

/// The raw `Authorization` header, if any (only its hash is ever stored).
pub fn default_scope(parts: &Parts) -> Option<Vec<u8>> {
    authorization(parts).map(<[u8]>::to_vec)
}

fn authorization(parts: &Parts) -> Option<&[u8]> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .map(http::HeaderValue::as_bytes)
}

/// `<32 hex digits>:<key>`: the hash of the scope (or of its absence), then the client's key.
/// The hash has a fixed length, so no key can forge another scope's prefix.
pub fn scoped_key(scope: Option<&[u8]>, key: &str) -> String {
    join(&plain_scope_prefix(scope), key)
}

/// `<scope hash>:`, the part of a record's key before the client's.
type ScopePrefix = arrayvec::ArrayString<{ 2 * Fingerprint::LEN + 1 }>;

/// The unkeyed [`ScopePrefix`] of a scope (or of its absence).
fn plain_scope_prefix(scope: Option<&[u8]>) -> ScopePrefix {
    // Requests without credentials all share one scope hash: computed once.
    static UNSCOPED: LazyLock<ScopePrefix> =
        LazyLock::new(|| scope_prefix(&scope_hash(FingerprintHasher::default(), None)));
    match scope {
        Some(_) => scope_prefix(&scope_hash(FingerprintHasher::default(), scope)),
        None => *UNSCOPED,
    }
}

fn scope_prefix(hash: &Fingerprint) -> ScopePrefix {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut prefix = ScopePrefix::new();
    // 32 hex digits and a colon: exactly the capacity.
    for byte in hash.as_bytes() {
        let _ = prefix.try_push(char::from(DIGITS[usize::from(byte >> 4)]));
        let _ = prefix.try_push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    let _ = prefix.try_push(':');
    prefix
}

/// [`scoped_key`] with the scope hash HMAC-SHA256 under `fingerprint_key`: what
/// [`IdempotencyConfig::with_fingerprint_key`] stores keys under.
#[cfg(feature = "encryption")]
pub fn keyed_scoped_key(
    fingerprint_key: &FingerprintKey,
    scope: Option<&[u8]>,
    key: &str,
) -> String {
    join(
        &scope_prefix(&scope_hash(fingerprint_key.hasher(), scope)),
        key,
    )
}

/// The client's key in a key made by [`scoped_key`] (or its keyed form): what follows
/// `<scope hash>:`.
pub(crate) fn client_key(scoped: &str) -> &str {
    scoped.get(2 * Fingerprint::LEN + 1..).unwrap_or(scoped)
}

fn join(prefix: &str, key: &str) -> String {
    [prefix, key].concat()
}

fn scope_hash(mut hasher: FingerprintHasher, scope: Option<&[u8]>) -> Fingerprint {
    hasher.field(b"ana-scope-v1");
    match scope {
        Some(scope) => {
            hasher.field(b"some");
            hasher.field(scope);
        }
        None => hasher.field(b"none"),
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::{IdempotencyConfig, client_key, default_target, scoped_key};
    use http::header::{CONTENT_TYPE, ETAG, SET_COOKIE};

    /// A name listed twice, or one never replayed, is kept once or not at all.
    #[test]
    fn replay_headers_are_listed_once() {
        let config = IdempotencyConfig::default().with_replay_headers([
            CONTENT_TYPE,
            ETAG,
            CONTENT_TYPE,
            SET_COOKIE,
        ]);
        let names: Vec<&str> = config
            .replay_headers()
            .iter()
            .map(|name| name.as_str())
            .collect();
        assert_eq!(
            names,
            ["content-type", "etag", "grpc-status", "grpc-message"]
        );
    }

    /// Stored keys depend on this format: it must never change between releases.
    #[test]
    fn scoped_keys_are_stable() {
        assert_eq!(
            scoped_key(None, "k-1"),
            "487d11641a34c701172a7725c5cd4893:k-1"
        );
        assert_eq!(
            scoped_key(Some(b"Bearer t"), "k-1"),
            "cae1b5721025b7f255e6e2ecd17b65ac:k-1"
        );
    }

    /// Rejections name the client's key, read back from the record's (scoped) key.
    #[test]
    fn the_client_key_is_read_back_from_a_scoped_key() {
        for scope in [None, Some(&b"Bearer t"[..])] {
            assert_eq!(client_key(&scoped_key(scope, "k:1")), "k:1");
        }
    }

    #[test]
    fn the_default_target_is_method_and_path() {
        let (parts, ()) = http::Request::post("/pay/1?x=2")
            .body(())
            .map(http::Request::into_parts)
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(default_target(&parts), "[POST]/pay/1");
    }
}
