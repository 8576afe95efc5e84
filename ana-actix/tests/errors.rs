//! actix-specific paths the framework-neutral suite cannot reach: an inner service that
//! answers with an actix `Error` instead of a response, a handler panic as an actix error,
//! the extractor without the middleware, and a request dropped mid-handler.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use actix_web::dev::Service;
use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, test, web};
use ana_actix::{Attempt, IdempotencyMiddleware, MemoryRepository, MemorySession, Rejected};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An inner middleware's error is what the caller gets (as actix renders it) and what is
/// recorded: a retry replays the same status and body, and the inner service ran once.
#[actix_web::test]
async fn an_inner_service_error_is_returned_and_recorded() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let app = test::init_service(
        App::new()
            .wrap(IdempotencyMiddleware::new(MemoryRepository::new()))
            .service(
                web::resource("/refuse")
                    .wrap_fn(move |_request, _service| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        std::future::ready(Err::<actix_web::dev::ServiceResponse, _>(
                            actix_web::error::ErrorUnprocessableEntity("amount refused"),
                        ))
                    })
                    .route(web::post().to(HttpResponse::Ok)),
            ),
    )
    .await;
    let request = || {
        test::TestRequest::post()
            .uri("/refuse")
            .insert_header(("x-idempotency-key", "e"))
            .to_request()
    };
    let error = app.call(request()).await.expect_err("the inner error");
    assert_eq!(
        error.as_response_error().status_code(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let replay = test::call_service(&app, request()).await;
    assert_eq!(replay.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(replay.headers().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(test::read_body(replay).await, "amount refused");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A handler panic comes back as the [`Rejected`] error (the request went into the handler
/// and did not come back); actix renders it as the 500 problem.
#[actix_web::test]
async fn a_panic_comes_back_as_a_rejected_error() {
    let app = test::init_service(
        App::new()
            .wrap(IdempotencyMiddleware::new(MemoryRepository::new()))
            .route(
                "/panic",
                web::post().to(|| async {
                    if true {
                        panic!("boom");
                    }
                    HttpResponse::Ok().finish()
                }),
            ),
    )
    .await;
    let request = test::TestRequest::post()
        .uri("/panic")
        .insert_header(("x-idempotency-key", "p"))
        .to_request();
    let error = app.call(request).await.expect_err("a Rejected error");
    let rejected = error.as_error::<Rejected>().expect("a Rejected error");
    assert_eq!(
        rejected.rejection().map(|rejection| rejection.slug()),
        Some("handler-panicked")
    );
    let response = error.error_response();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/problem+json"
    );
}

/// `Attempt` without the middleware in front is a server misconfiguration: a 500 problem.
#[actix_web::test]
async fn the_session_extractor_without_the_middleware_is_a_500_problem() {
    let app = test::init_service(App::new().route(
        "/hello",
        web::post().to(|session: Attempt<MemorySession>| async move { session.key().to_owned() }),
    ))
    .await;
    let request = test::TestRequest::post()
        .uri("/hello")
        .insert_header(("x-idempotency-key", "k"))
        .to_request();
    let response = test::call_service(&app, request).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = test::read_body(response).await;
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("https://ana.dev/problems/internal"), "{body}");
    assert!(
        !body.contains("middleware"),
        "no internal text in a 5xx body: {body}"
    );
}

/// A request dropped mid-handler (the client went away) does not leave its key Running: the
/// attempt is recorded Failed, and a retry runs the handler again.
#[actix_web::test]
async fn a_dropped_request_fails_its_attempt() {
    let idempotency = IdempotencyMiddleware::new(MemoryRepository::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let started_tx = Arc::new(std::sync::Mutex::new(Some(started_tx)));
    let counted = Arc::clone(&runs);
    let app = test::init_service(App::new().wrap(idempotency.clone()).route(
        "/hold",
        web::post().to(move || {
            let run = counted.fetch_add(1, Ordering::SeqCst) + 1;
            if let Some(tx) = started_tx.lock().unwrap().take() {
                let _ = tx.send(());
            }
            async move {
                if run == 1 {
                    // The first run never finishes on its own.
                    std::future::pending::<()>().await;
                }
                HttpResponse::Ok().body(format!("run {run}"))
            }
        }),
    ))
    .await;
    let request = || {
        test::TestRequest::post()
            .uri("/hold")
            .insert_header(("x-idempotency-key", "c"))
            .to_request()
    };
    let call = Box::pin(app.call(request()));
    match futures_util::future::select(call, started).await {
        futures_util::future::Either::Right((started, call)) => {
            started.unwrap();
            drop(call);
        }
        futures_util::future::Either::Left(_) => panic!("the first run cannot finish"),
    }
    idempotency.engine().manager().flush().await;
    let key = ana_http::scoped_key(None, "c");
    let record = idempotency
        .engine()
        .manager()
        .get("[POST]/hold", &key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, ana_core::Status::Failed);
    let retry = test::call_service(&app, request()).await;
    assert_eq!(retry.status(), StatusCode::OK);
    assert_eq!(test::read_body(retry).await, "run 2");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
