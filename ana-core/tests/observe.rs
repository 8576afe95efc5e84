//! What calls report: one outcome per call to the hook, an `ana.call` span with an event per
//! outcome for `tracing`, and the `metrics` series; never a payload or a raw key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use ana_core::{
    CallOutcome, Clock, Error, EventKind, Manager, ManualClock, MemoryRepository, MemorySession,
    operation,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::{Layer, Registry};

const PAYLOAD: &str = "card 4111-1111-1111-1111";

type TestManager = Manager<String, String, MemorySession>;

fn manager(clock: &ManualClock) -> TestManager {
    Manager::new(MemoryRepository::new().with_clock(clock.clone())).with_clock(clock.clone())
}

/// Every kind of call once, in order: executed, replayed, payload mismatch, failed, panicked,
/// still running, expired, cancelled.
async fn every_outcome(manager: &TestManager, clock: &ManualClock) {
    let ok = |key: &str, payload: &str| {
        operation("pay", key, payload.to_owned(), |_: MemorySession| async {
            Ok::<_, std::io::Error>("paid".to_owned())
        })
    };
    manager.call(ok("k1", PAYLOAD)).await.unwrap();
    manager.call(ok("k1", PAYLOAD)).await.unwrap();
    let mismatch = manager.call(ok("k1", "another")).await;
    assert!(matches!(mismatch, Err(Error::PayloadMismatch { .. })));
    let failing = operation("pay", "k2", PAYLOAD.to_owned(), |_: MemorySession| async {
        Err::<String, _>(std::io::Error::other("declined"))
    });
    assert!(manager.call(failing).await.is_err());
    let panicking = operation("pay", "k3", PAYLOAD.to_owned(), |_: MemorySession| async {
        if PAYLOAD.starts_with("card") {
            panic!("boom");
        }
        Ok::<String, std::io::Error>(String::new())
    });
    assert!(matches!(
        manager.call(panicking).await,
        Err(Error::Panic { .. })
    ));

    // Held: a call parked inside its operation, then a duplicate.
    let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
    let held = operation(
        "pay",
        "k4",
        PAYLOAD.to_owned(),
        |_: MemorySession| async move {
            let _ = entered_tx.send(());
            std::future::pending::<Result<String, std::io::Error>>().await
        },
    )
    .timeout(Duration::from_secs(60));
    let mut holder = Box::pin(manager.call(held));
    let mut context = Context::from_waker(Waker::noop());
    assert!(holder.as_mut().poll(&mut context).is_pending());
    entered_rx.await.unwrap();
    let duplicate = manager.call(ok("k4", PAYLOAD)).await;
    assert!(matches!(duplicate, Err(Error::StillRunning { .. })));

    let stale = ok("k5", PAYLOAD)
        .reference_time(clock.now() - chrono::TimeDelta::hours(2))
        .expiration(Duration::from_secs(3600));
    assert!(matches!(
        manager.call(stale).await,
        Err(Error::Expired { .. })
    ));
    // The holder's client goes away.
    drop(holder);
    manager.flush().await;
}

const EXPECTED: [CallOutcome; 8] = [
    CallOutcome::Executed,
    CallOutcome::Replayed,
    CallOutcome::PayloadMismatch,
    CallOutcome::Failed,
    CallOutcome::Panicked,
    CallOutcome::StillRunning,
    CallOutcome::Expired,
    CallOutcome::Cancelled,
];

#[tokio::test]
async fn the_hook_gets_one_outcome_per_call() {
    let clock = ManualClock::new(chrono::Utc::now());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let manager = manager(&clock).on_event(move |event| {
        assert_eq!(event.store, "memory");
        assert_eq!(event.target, "pay");
        let key = event.key.to_string();
        assert_eq!(key.len(), 16, "a short hash, not the key: {key}");
        assert!(!key.starts_with('k'));
        log.lock().unwrap().push(event.kind);
    });
    every_outcome(&manager, &clock).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, EXPECTED.map(EventKind::Outcome));
}

#[tokio::test]
async fn raw_keys_are_reported_only_when_asked() {
    let clock = ManualClock::new(chrono::Utc::now());
    let keys = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&keys);
    let manager = manager(&clock)
        .with_raw_keys(true)
        .on_event(move |event| log.lock().unwrap().push(event.key.to_string()));
    let op = operation("pay", "k1", PAYLOAD.to_owned(), |_: MemorySession| async {
        Ok::<_, std::io::Error>("paid".to_owned())
    });
    manager.call(op).await.unwrap();
    assert_eq!(*keys.lock().unwrap(), ["k1"]);
}

/// Spans and events as a subscriber sees them, as text lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl<S: tracing::Subscriber> Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: LayerContext<'_, S>) {
        let mut fields = Fields(format!("span {}", attrs.metadata().name()));
        attrs.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }

    fn on_record(&self, _: &Id, values: &Record<'_>, _: LayerContext<'_, S>) {
        let mut fields = Fields("record".to_owned());
        values.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: LayerContext<'_, S>) {
        let mut fields = Fields(format!("event {}", event.metadata().level()));
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

#[test]
fn spans_and_events_carry_outcomes_never_payloads() {
    let captured = Captured::default();
    let subscriber = Registry::default().with(captured.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let clock = ManualClock::new(chrono::Utc::now());
            every_outcome(&manager(&clock), &clock).await;
        });
    });
    let lines = captured.0.lock().unwrap().clone();
    let text = lines.join("\n");
    assert!(!text.contains("4111"), "a payload leaked:\n{text}");
    assert!(!text.contains("\"k1\""), "a raw key leaked:\n{text}");
    let spans = lines
        .iter()
        .filter(|l| l.starts_with("span ana.call"))
        .count();
    assert_eq!(spans, 8, "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("span ana.call") && l.contains("store=\"memory\"")),
        "{text}"
    );
    assert!(lines.iter().any(|l| l == "record attempt=1"), "{text}");
    for outcome in EXPECTED {
        let needle = format!("outcome=\"{}\"", outcome.as_str());
        assert_eq!(
            lines.iter().filter(|l| l.contains(&needle)).count(),
            1,
            "{needle}:\n{text}"
        );
    }
    let level = |outcome: &str| {
        lines
            .iter()
            .find(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
    };
    assert_eq!(level("executed").as_deref(), Some("DEBUG"));
    assert_eq!(level("panicked").as_deref(), Some("ERROR"));
    assert_eq!(level("payload_mismatch").as_deref(), Some("INFO"));
}

#[test]
fn metrics_count_calls_by_target_and_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let clock = ManualClock::new(chrono::Utc::now());
            every_outcome(&manager(&clock), &clock).await;
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str, labels: &[(&str, &str)]| {
        snapshot
            .iter()
            .filter(|(key, ..)| {
                let key = key.key();
                key.name() == name
                    && labels.iter().all(|(label, value)| {
                        key.labels()
                            .any(|l| l.key() == *label && l.value() == *value)
                    })
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                DebugValue::Histogram(values) => values.len() as u64,
                DebugValue::Gauge(_) => 0,
            })
            .sum::<u64>()
    };
    for outcome in EXPECTED {
        let labels = [("target", "pay"), ("outcome", outcome.as_str())];
        assert_eq!(counter("ana_calls_total", &labels), 1, "{outcome}");
        let labels = [("outcome", outcome.as_str())];
        assert_eq!(
            counter("ana_call_duration_seconds", &labels),
            1,
            "{outcome}"
        );
    }
    // Claims reached the store for every call but the expired one (refused before it).
    let claims = [("store", "memory"), ("op", "claim")];
    assert_eq!(counter("ana_store_duration_seconds", &claims), 7);
    let gauge = snapshot
        .iter()
        .find(|(key, ..)| key.key().name() == "ana_in_flight")
        .map(|(.., value)| value);
    assert!(
        matches!(gauge, Some(DebugValue::Gauge(value)) if value.into_inner() == 0.0),
        "{gauge:?}"
    );
}
