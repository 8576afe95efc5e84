//! # Example 04: the payments service
//!
//! A versioned payments resource (create, read, replace, delete, list) whose writes are
//! idempotent through ana: a retried `POST`, `PUT` or `DELETE` with an `Idempotency-Key` (or
//! `X-Idempotency-Key`) gets the first answer back, and the payment's write commits in the
//! same transaction as the record of that answer. SQLite by default, Postgres or MySQL with
//! `--repo`. Run it with `make example-04` (`make example-04 ARGS="--admin --limit 5-S"`);
//! `--help` lists the flags. The README next to this file has a curl session.
//!
//! Logs are JSON lines on stderr (`RUST_LOG` filters, default `info`); the line
//! `Listening on http://<address>` on stdout says where it listens. SIGTERM or SIGINT stop it
//! gracefully: it stops accepting, lets in-flight requests finish (up to `--shutdown-grace`),
//! then exits.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use example_04_payments::{app, config::Config};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(error) = init_logs() {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    match serve(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "stopped");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// JSON lines on stderr, filtered by `RUST_LOG` (default `info`).
fn init_logs() -> Result<(), BoxError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
}

fn metrics_recorder() -> Result<PrometheusHandle, BoxError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    ana_core::describe_metrics();
    metrics::describe_counter!(
        "http_requests_total",
        "HTTP requests, by method, route and status."
    );
    metrics::describe_histogram!(
        "http_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request durations, by method, route and status."
    );
    Ok(handle)
}

async fn serve(config: Config) -> Result<(), BoxError> {
    let metrics = if config.metrics {
        Some(metrics_recorder()?)
    } else {
        None
    };
    let database = app::Database::connect(&config).await?;
    let app = app::app(&config, database, metrics)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let address = listener.local_addr()?;
    tracing::info!(%address, repo = ?config.repo, "listening");
    // Tests and scripts read this line to find the port.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "Listening on http://{address}")?;
    stdout.flush()?;
    drop(stdout);

    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stopping.send(());
    });
    tokio::select! {
        served = server.into_future() => served?,
        () = grace_over(stopped, config.shutdown_grace) => {
            tracing::warn!(grace = ?config.shutdown_grace, "in-flight requests cut at the deadline");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves `grace` after the shutdown began (never, if it does not).
async fn grace_over(stopped: tokio::sync::oneshot::Receiver<()>, grace: Duration) {
    if stopped.await.is_err() {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(grace).await;
}

/// SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
