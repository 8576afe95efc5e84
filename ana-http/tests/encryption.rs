//! Secrets at rest over HTTP: an undecryptable response is a 500 `internal` problem and never
//! runs the handler again; keyed fingerprints, and what changing their key does.

// Test code: a failed expectation is a panic.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ana_core::encryption::{Encrypted, EncryptionKey, FingerprintKey, Keyring};
use ana_core::{DecryptError, IdempotencyRepository, MemoryRepository, RepositoryError, Status};
use ana_http::{Engine, IdempotencyConfig, Rejection, ResponseBody, keyed_scoped_key, scoped_key};
use bytes::Bytes;
use http::{Request, Response, StatusCode};

const MARKER: &str = "MARKER-card-4242-4242";

fn request(key: &str) -> Request<Bytes> {
    Request::post("/pay")
        .header("x-idempotency-key", key)
        .header("authorization", "Bearer t0ken")
        .body(Bytes::from_static(b"{\"cents\":100}"))
        .unwrap()
}

/// Sends `key` through `engine` to a handler counting its runs.
async fn send(
    engine: &Engine<ana_core::MemorySession>,
    key: &str,
    runs: &Arc<AtomicUsize>,
) -> Response<ResponseBody<()>> {
    let runs = Arc::clone(runs);
    engine
        .handle(request(key), move |_parts, _body| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Response::new(ResponseBody::Full(Bytes::from(format!(
                "{{\"card\":\"{MARKER}\"}}"
            ))))
        })
        .await
}

fn body(response: &Response<ResponseBody<()>>) -> Bytes {
    match response.body() {
        ResponseBody::Full(bytes) => bytes.clone(),
        other => panic!("unexpected body {other:?}"),
    }
}

fn encrypted(store: &MemoryRepository, bytes: [u8; 32]) -> Engine<ana_core::MemorySession> {
    Engine::new(Encrypted::new(
        store.clone(),
        Keyring::new(EncryptionKey::new(0, &bytes)),
    ))
}

#[tokio::test]
async fn an_undecryptable_response_is_a_500_and_never_runs_again() {
    let store = MemoryRepository::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let engine = encrypted(&store, [1; 32]);
    let first = send(&engine, "k1", &runs).await;
    assert_eq!(first.status(), StatusCode::OK);
    let again = send(&engine, "k1", &runs).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert!(std::str::from_utf8(&body(&again)).unwrap().contains(MARKER));

    // The stored response holds no plaintext.
    let stored_key = scoped_key(Some(b"Bearer t0ken"), "k1");
    let record = store.get("[POST]/pay", &stored_key).await.unwrap().unwrap();
    let sealed = record.result.clone().unwrap();
    assert!(!sealed.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()));
    assert!(!sealed.windows(4).any(|w| w == b"4242"));

    // Another key under the same id: a 500 problem with a fixed detail, twice, no run.
    let impostor = encrypted(&store, [2; 32]);
    for _ in 0..2 {
        let response = send(&impostor, "k1", &runs).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        let problem: serde_json::Value = serde_json::from_slice(&body(&response)).unwrap();
        assert_eq!(problem["type"], "https://ana.dev/problems/internal");
        assert_eq!(
            problem["detail"],
            "The server failed to process the request."
        );
        let text = problem.to_string();
        assert!(
            !text.contains(MARKER) && !text.contains("decrypt"),
            "{text}"
        );
        // The typed cause is in the extensions, for logging.
        let rejection = response
            .extensions()
            .get::<Rejection>()
            .expect("the rejection");
        let Rejection::Internal { source } = rejection else {
            panic!("expected Internal, got {rejection:?}");
        };
        let repository = source
            .downcast_ref::<RepositoryError>()
            .expect("a repository error");
        assert!(matches!(
            repository,
            RepositoryError::Undecryptable {
                source: DecryptError::Unauthentic { id: 0 },
                ..
            }
        ));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let record = store.get("[POST]/pay", &stored_key).await.unwrap().unwrap();
    assert_eq!(record.status, Status::Finished);
    assert_eq!(record.result, Some(sealed));
}

#[tokio::test]
async fn fingerprint_keys_hash_payloads_and_scopes() {
    let store = MemoryRepository::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let key = || FingerprintKey::new(&[9; 32]).unwrap();
    let config = IdempotencyConfig::default().with_fingerprint_key(key());
    let engine = Engine::new(store.clone()).with_config(config);
    assert_eq!(send(&engine, "k1", &runs).await.status(), StatusCode::OK);
    let keyed = keyed_scoped_key(&key(), Some(b"Bearer t0ken"), "k1");
    assert_ne!(keyed, scoped_key(Some(b"Bearer t0ken"), "k1"));
    let record = store
        .get("[POST]/pay", &keyed)
        .await
        .unwrap()
        .expect("stored under the keyed scope");
    let (parts, body) = request("k1").into_parts();
    assert_eq!(
        record.fingerprint,
        ana_http::keyed_payload(&key(), &parts, &body)
    );
    assert_ne!(record.fingerprint, ana_http::default_payload(&parts, &body));
    let again = send(&engine, "k1", &runs).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// The documented consequence of changing the fingerprint key: the scope hash is part of the
/// stored key, so a retry across the change finds no record and runs again (no 422); and
/// turning a key on is such a change too.
#[tokio::test]
async fn a_new_fingerprint_key_runs_retries_again() {
    let store = MemoryRepository::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let engine = |bytes: Option<[u8; 32]>| {
        let config = match bytes {
            Some(bytes) => IdempotencyConfig::default()
                .with_fingerprint_key(FingerprintKey::new(&bytes).unwrap()),
            None => IdempotencyConfig::default(),
        };
        Engine::new(store.clone()).with_config(config)
    };
    assert_eq!(
        send(&engine(None), "k1", &runs).await.status(),
        StatusCode::OK
    );
    let first_key = send(&engine(Some([1; 32])), "k1", &runs).await;
    assert!(first_key.headers().get("idempotent-replayed").is_none());
    let second_key = send(&engine(Some([2; 32])), "k1", &runs).await;
    assert!(second_key.headers().get("idempotent-replayed").is_none());
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    let replay = send(&engine(Some([2; 32])), "k1", &runs).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
}
