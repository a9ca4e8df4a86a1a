//! `psp-sim`: the local payment service provider, a real HTTP peer for the
//! end-to-end tests and the demo. It accepts payouts idempotently, answers
//! with a `psp_ref` at once, then sends a signed `payment.settled` (or
//! `payment.failed`) webhook the way a real PSP would: later, retried until
//! acknowledged, re-signed on every try. State lives in memory only.
//!
//! - `payouts`: `POST /payouts`, `GET /payouts?since=`, `GET /payouts/{key}`;
//! - `fundings`: `POST /fundings`, `GET /fundings?since=`;
//! - `webhooks`: signing and delivering events;
//! - `sim`: `/sim/*`, what tests steer it with and read back;
//! - `config`: the environment it reads; `ledger`: what it holds.

mod config;
mod fundings;
mod ledger;
mod payouts;
mod sim;
mod webhooks;

use std::process::ExitCode;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::config::Config;

use crate::config::Settings;
use crate::ledger::{SharedSim, Sim};

pub(crate) fn problem(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"code": code, "message": message.into()}))).into_response()
}

/// `?since=<seq>&limit=<n>`: records after `since`, oldest first, at most
/// `limit` (default 100, at most 1000).
#[derive(Deserialize)]
pub(crate) struct PageIn {
    since: Option<u64>,
    limit: Option<usize>,
}

/// One page and where the next starts (`null`: nothing after it).
pub(crate) fn page<T: Serialize + Clone>(records: &[T], seq: impl Fn(&T) -> u64, p: &PageIn) -> Json<Value> {
    let since = p.since.unwrap_or(0);
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let after: Vec<&T> = records.iter().filter(|r| seq(r) > since).collect();
    let items: Vec<T> = after.iter().take(limit).map(|r| (*r).clone()).collect();
    let next = (after.len() > limit).then(|| items.last().map(&seq)).flatten();
    Json(json!({"items": items, "next_since": next}))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

fn router(sim: SharedSim) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/payouts", post(payouts::create).get(payouts::list))
        .route("/payouts/{idempotency_key}", get(payouts::by_key))
        .route("/fundings", post(fundings::create).get(fundings::list))
        .route("/sim/events", post(sim::send_event))
        .route("/sim/payouts", get(payouts::all))
        .route("/sim/payouts/{idempotency_key}/outcome", post(payouts::set_outcome))
        .route("/sim/webhooks", get(sim::webhooks))
        .route("/sim/config", post(sim::set_config))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .with_state(sim)
}

/// Resolves on SIGINT or SIGTERM. A signal we cannot listen for never
/// fires, rather than stopping the server at once.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", settings.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on 0.0.0.0:{} (PSP_SIM_PORT): {e}", settings.port))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        webhook_url = %settings.webhook_url,
        fail_amounts = settings.fail_amounts.len(),
        refuse_amounts = settings.refuse_amounts.len(),
        status_amounts = settings.status_amounts.len(),
        "psp-sim listening"
    );
    let sim = Sim::new(settings);
    axum::serve(listener, router(sim.clone())).with_graceful_shutdown(shutdown_signal()).await?;
    let pending = sim.ledger().webhooks.iter().filter(|w| !w.delivered).count();
    // Retries live in memory only; say what is dropped so a test log explains
    // a missing webhook.
    tracing::info!(undelivered_webhooks = pending, "psp-sim stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    shared::tls::install_crypto_provider();
    let lookup = |key: &str| std::env::var(key).ok().filter(|v| !v.trim().is_empty());
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("psp-sim: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.require_webhook_secrets() {
        eprintln!("psp-sim: {e}");
        return ExitCode::from(2);
    }
    let settings = match Settings::load(&config, lookup) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("psp-sim: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    shared::telemetry::init(config.log_json);
    match serve(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "psp-sim failed");
            eprintln!("psp-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_sequence_and_say_where_the_next_starts() {
        let records: Vec<(u64, &str)> = (1..=5).map(|n| (n, "x")).collect();
        let take = |since, limit| page(&records, |r| r.0, &PageIn { since, limit });
        let first = take(None, Some(2)).0;
        assert_eq!(first["items"].as_array().map(Vec::len), Some(2));
        assert_eq!(first["next_since"], json!(2));
        let last = take(Some(4), Some(2)).0;
        assert_eq!(last["items"][0][0], json!(5));
        assert_eq!(last["next_since"], Value::Null);
        assert_eq!(take(Some(5), None).0["items"].as_array().map(Vec::len), Some(0));
    }
}
