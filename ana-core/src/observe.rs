//! What a call reports. Every call ends in exactly one [`CallOutcome`], reported three ways:
//! as a `tracing` event inside the call's `ana.call` span (feature `tracing`, on by default,
//! free when no subscriber listens), as `metrics` (feature `metrics`), and to the manager's
//! [`on_event`](crate::Manager::on_event) hook. A call that takes over a timed-out holder
//! reports a [`EventKind::Takeover`] as well.
//!
//! Nothing reported carries a payload, a result, a credential or a scope value. Keys are a
//! short hash of the stored key unless [`with_raw_keys`](crate::Manager::with_raw_keys) says
//! otherwise.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::record::FailureKind;

/// How a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallOutcome {
    /// The operation ran in this call and its result was recorded.
    Executed,
    /// The operation ran in this call and returned an error (or an answer that is not
    /// recorded): the record is Failed and a retry runs again.
    Failed,
    /// The operation panicked: recorded Failed.
    Panicked,
    /// The call was dropped before its attempt finished: failed in the background.
    Cancelled,
    /// An earlier call's recorded result was returned.
    Replayed,
    /// Another attempt holds the record.
    StillRunning,
    /// The key was first used with another payload.
    PayloadMismatch,
    /// The call, or its record, expired.
    Expired,
    /// Another attempt took the record over after this one's timeout.
    Superseded,
    /// The store could not be reached, or is full.
    StoreUnavailable,
    /// A corrupt record, a result that could not be encoded or decoded.
    Internal,
    /// The call was refused before the store was touched: it asked for a timeout below the
    /// manager's minimum.
    Refused,
}

impl CallOutcome {
    /// Every outcome.
    pub const ALL: &'static [Self] = &[
        Self::Executed,
        Self::Failed,
        Self::Panicked,
        Self::Cancelled,
        Self::Replayed,
        Self::StillRunning,
        Self::PayloadMismatch,
        Self::Expired,
        Self::Superseded,
        Self::StoreUnavailable,
        Self::Internal,
        Self::Refused,
    ];

    /// The name in events and metric labels (`executed`, `payload_mismatch`, …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::Failed => "failed",
            Self::Panicked => "panicked",
            Self::Cancelled => "cancelled",
            Self::Replayed => "replayed",
            Self::StillRunning => "still_running",
            Self::PayloadMismatch => "payload_mismatch",
            Self::Expired => "expired",
            Self::Superseded => "superseded",
            Self::StoreUnavailable => "store_unavailable",
            Self::Internal => "internal",
            Self::Refused => "refused",
        }
    }

    /// The outcome of a call that ended in `error`.
    pub fn of_error<E>(error: &Error<E>) -> Self {
        match error {
            Error::Expired { .. } => Self::Expired,
            Error::StillRunning { .. } => Self::StillRunning,
            Error::PayloadMismatch { .. } => Self::PayloadMismatch,
            Error::Panic { .. } => Self::Panicked,
            Error::Superseded { .. } => Self::Superseded,
            Error::Operation(_) => Self::Failed,
            Error::TimeoutTooShort { .. } => Self::Refused,
            Error::Repository(error) if error.is_transient() => Self::StoreUnavailable,
            Error::Repository(_) | Error::Codec(_) => Self::Internal,
        }
    }

    pub(crate) fn of_failure(kind: FailureKind) -> Self {
        match kind {
            FailureKind::Panic => Self::Panicked,
            FailureKind::Cancelled => Self::Cancelled,
            _ => Self::Failed,
        }
    }
}

impl fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an [`Event`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// The call ended so.
    Outcome(CallOutcome),
    /// The call took the record over from an attempt whose timeout had passed (its holder
    /// crashed, or is slower than its timeout).
    Takeover,
    /// The call found the record held and waits for its holder to finish (see
    /// [`Call::wait`](crate::Call::wait)); reported once per call, before its outcome.
    Waiting,
}

/// One report of a call, given to the [`on_event`](crate::Manager::on_event) hook.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Event<'a> {
    /// What happened.
    pub kind: EventKind,
    /// The call's target.
    pub target: &'a str,
    /// The call's label: a bounded name for metrics (an HTTP route), the target when it has
    /// none.
    pub label: &'a str,
    /// The stored key, hashed unless raw keys were asked for.
    pub key: ReportedKey<'a>,
    /// The attempt number, once the call holds the record.
    pub attempt: Option<u64>,
    /// The store's [`name`](crate::IdempotencyRepository::name).
    pub store: &'static str,
    /// Time since the call began.
    pub elapsed: Duration,
    /// How many times the attempt's finish was tried again after a transient store error
    /// (see [`FinishRetry`](crate::FinishRetry)); 0 when the first try answered.
    pub finish_retries: u32,
}

/// A key as it is reported: the first 8 bytes of its SHA-256 in hex, or the key itself when
/// the manager was built [`with_raw_keys`](crate::Manager::with_raw_keys). Hashed on display,
/// so a report nobody reads costs no digest.
#[derive(Clone, Copy)]
pub struct ReportedKey<'a> {
    key: &'a str,
    raw: bool,
}

impl<'a> ReportedKey<'a> {
    pub(crate) fn new(key: &'a str, raw: bool) -> Self {
        Self { key, raw }
    }
}

impl fmt::Display for ReportedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.raw {
            return f.write_str(self.key);
        }
        let digest = Sha256::digest(self.key.as_bytes());
        for byte in &digest[..8] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ReportedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

type Hook = Arc<dyn Fn(&Event<'_>) + Send + Sync>;

/// How a manager reports its calls; shared by its clones.
#[derive(Clone)]
pub(crate) struct Reporting {
    hook: Option<Hook>,
    pub(crate) raw_keys: bool,
    spans: bool,
}

impl Default for Reporting {
    fn default() -> Self {
        Self {
            hook: None,
            raw_keys: false,
            spans: true,
        }
    }
}

impl fmt::Debug for Reporting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporting")
            .field("hook", &self.hook.is_some())
            .field("raw_keys", &self.raw_keys)
            .field("spans", &self.spans)
            .finish()
    }
}

impl Reporting {
    pub(crate) fn has_hook(&self) -> bool {
        self.hook.is_some()
    }

    pub(crate) fn with_hook(mut self, hook: Hook) -> Self {
        self.hook = Some(hook);
        self
    }

    pub(crate) fn with_spans(mut self, spans: bool) -> Self {
        self.spans = spans;
        self
    }
}

/// Who a call is, for its reports.
#[derive(Clone, Copy)]
pub(crate) struct Subject<'a> {
    pub(crate) target: &'a str,
    pub(crate) label: &'a str,
    pub(crate) key: &'a str,
    pub(crate) store: &'static str,
}

/// One call, from its start to its outcome: its start time and its span.
#[derive(Debug)]
pub(crate) struct Observed {
    /// `None` when nothing reads the call's duration: no hook, no metrics, no `tracing`
    /// subscriber. A clock read is a system call on some machines.
    started: Option<std::time::Instant>,
    /// Tries again of the attempt's finish.
    finish_retries: u32,
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

impl Observed {
    pub(crate) fn start(reporting: &Reporting, subject: Subject<'_>) -> Self {
        #[cfg(not(feature = "tracing"))]
        let _ = (reporting, subject);
        let timed = cfg!(feature = "metrics") || reporting.hook.is_some() || traced();
        Self {
            started: timed.then(std::time::Instant::now),
            finish_retries: 0,
            #[cfg(feature = "tracing")]
            span: if reporting.spans {
                tracing::info_span!(
                    "ana.call",
                    target = subject.target,
                    key = %ReportedKey::new(subject.key, reporting.raw_keys),
                    store = subject.store,
                    attempt = tracing::field::Empty,
                )
            } else {
                tracing::Span::none()
            },
        }
    }

    /// The call's span, to run its steps in.
    #[cfg(feature = "tracing")]
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Notes the attempt the call holds.
    pub(crate) fn hold(&self, attempt: u64) {
        #[cfg(feature = "tracing")]
        self.span.record("attempt", attempt);
        #[cfg(not(feature = "tracing"))]
        let _ = attempt;
        #[cfg(feature = "metrics")]
        metrics::gauge!("ana_in_flight").increment(1.0);
    }

    /// Notes that the attempt's finish was tried `retries` times again (counted in
    /// `ana_finish_retries_total`, and reported with the outcome).
    pub(crate) fn retried(&mut self, retries: u32) {
        self.finish_retries += retries;
        #[cfg(feature = "tracing")]
        if retries > 0 {
            tracing::warn!(parent: &self.span, retries, "finish tried again after a store error");
        }
        #[cfg(feature = "metrics")]
        if retries > 0 {
            metrics::counter!("ana_finish_retries_total").increment(u64::from(retries));
        }
    }

    /// Notes that the held attempt is over (finished, failed or dropped).
    pub(crate) fn release(&self) {
        #[cfg(feature = "metrics")]
        metrics::gauge!("ana_in_flight").decrement(1.0);
    }

    /// Reports `kind` for the call.
    pub(crate) fn report(
        &self,
        reporting: &Reporting,
        subject: Subject<'_>,
        kind: EventKind,
        attempt: Option<u64>,
    ) {
        let elapsed = self
            .started
            .map_or(Duration::ZERO, |started| started.elapsed());
        #[cfg(feature = "tracing")]
        trace(&self.span, kind, elapsed);
        #[cfg(feature = "metrics")]
        if let EventKind::Outcome(outcome) = kind {
            metrics::counter!(
                "ana_calls_total",
                "target" => subject.label.to_owned(),
                "outcome" => outcome.as_str(),
            )
            .increment(1);
            metrics::histogram!("ana_call_duration_seconds", "outcome" => outcome.as_str())
                .record(elapsed.as_secs_f64());
        }
        if let Some(hook) = &reporting.hook {
            hook(&Event {
                kind,
                target: subject.target,
                label: subject.label,
                key: ReportedKey::new(subject.key, reporting.raw_keys),
                attempt,
                store: subject.store,
                elapsed,
                finish_retries: self.finish_retries,
            });
        }
    }
}

/// Whether a `tracing` subscriber may take the call's events (which carry its duration).
fn traced() -> bool {
    #[cfg(feature = "tracing")]
    return tracing::level_filters::LevelFilter::current()
        != tracing::level_filters::LevelFilter::OFF;
    #[cfg(not(feature = "tracing"))]
    false
}

/// One store round trip, for `ana_store_duration_seconds`.
pub(crate) struct StoreTimer {
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

impl StoreTimer {
    pub(crate) fn start() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
        }
    }

    pub(crate) fn stop(self, store: &'static str, op: &'static str) {
        #[cfg(feature = "metrics")]
        metrics::histogram!("ana_store_duration_seconds", "store" => store, "op" => op)
            .record(self.started.elapsed().as_secs_f64());
        #[cfg(not(feature = "metrics"))]
        let _ = (store, op);
    }
}

/// Counts a lookup in the replay cache.
pub(crate) fn replay_cache_lookup(hit: bool) {
    #[cfg(feature = "metrics")]
    if hit {
        metrics::counter!("ana_replay_cache_hits_total").increment(1);
    } else {
        metrics::counter!("ana_replay_cache_misses_total").increment(1);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = hit;
}

/// The event of `kind` in `span`, at the level an operator would choose: warnings for what
/// needs a look (a takeover, a superseded attempt, the store down), errors for panics and
/// corrupt records, debug for the everyday replay and execution.
#[cfg(feature = "tracing")]
fn trace(span: &tracing::Span, kind: EventKind, elapsed: Duration) {
    use tracing::{debug, error, info, warn};
    let elapsed_ms = elapsed.as_secs_f64() * 1e3;
    let outcome = match kind {
        EventKind::Takeover => {
            warn!(parent: span, event = "takeover", "took over a timed-out attempt");
            return;
        }
        EventKind::Waiting => {
            debug!(parent: span, event = "waiting", "waiting for the holder to finish");
            return;
        }
        EventKind::Outcome(outcome) => outcome,
    };
    let name = outcome.as_str();
    match outcome {
        CallOutcome::Executed | CallOutcome::Replayed => {
            debug!(parent: span, outcome = name, elapsed_ms, "call {name}");
        }
        CallOutcome::Superseded | CallOutcome::StoreUnavailable => {
            warn!(parent: span, outcome = name, elapsed_ms, "call {name}");
        }
        CallOutcome::Panicked | CallOutcome::Internal => {
            error!(parent: span, outcome = name, elapsed_ms, "call {name}");
        }
        _ => info!(parent: span, outcome = name, elapsed_ms, "call {name}"),
    }
}

/// Registers the help text of ana's metrics with the installed recorder. Call it once, after
/// installing the recorder (a Prometheus exporter, say).
#[cfg(feature = "metrics")]
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "ana_calls_total",
        "Idempotent calls, by target and outcome."
    );
    describe_histogram!(
        "ana_call_duration_seconds",
        Unit::Seconds,
        "Time from a call's start to its outcome."
    );
    describe_histogram!(
        "ana_store_duration_seconds",
        Unit::Seconds,
        "Time of one store step (claim, finish)."
    );
    describe_gauge!("ana_in_flight", "Attempts this process holds.");
    describe_counter!(
        "ana_finish_retries_total",
        "Finishes tried again after a transient store error."
    );
    describe_counter!(
        "ana_replay_cache_hits_total",
        "Replays answered by the replay cache."
    );
    describe_counter!(
        "ana_replay_cache_misses_total",
        "Lookups the replay cache could not answer."
    );
}
