//! `psp-sim`: the local payment service provider, a real HTTP peer for the
//! end-to-end tests and the demo. It accepts payouts idempotently, answers
//! with a `psp_ref` at once, then sends a signed `payment.settled` (or
//! `payment.failed`) webhook the way a real PSP would: later, retried until
//! acknowledged, re-signed on every try. `/sim/*` lets tests push arbitrary
//! events and look at what the simulator saw. State lives in memory only.
//!
//! For reconciliation it keeps what it did and lists it, paged by a
//! sequence number (`GET /payouts?since=&limit=`, `GET /fundings?since=&limit=`),
//! and it takes fundings as a sender's card or mobile-money payment would
//! reach it (`POST /fundings {escrow_id, amount, currency}`), announcing each
//! with a signed `funding.succeeded`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::config::Config;
use shared::psp::signature::{self, EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use uuid::Uuid;

/// Webhook retry schedule: 200 ms doubling to a 5 s cap, 30 tries in all
/// (about two minutes), enough to ride out an API restart in a test.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MAX_TRIES: u32 = 30;
/// One webhook POST may not hang the retry loop.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What the simulator needs from the environment, checked before it listens.
#[derive(Debug)]
struct Settings {
    port: u16,
    webhook_url: String,
    /// The last configured secret: after a rotation the newest is last, and
    /// the API still accepts it alongside the old ones.
    secret: String,
    /// Amounts answered 200 and then reported `payment.failed`.
    fail_amounts: Vec<Decimal>,
    /// Amounts refused at once with a 422 (`PSP_SIM_FAIL_STATUS`).
    refuse_amounts: Vec<Decimal>,
    /// Pause before a payout's first webhook, so the API has stored `SENT`.
    first_delay: Duration,
}

impl Settings {
    fn load(config: &Config, get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let secret = config
            .psp_webhook_secrets
            .last()
            .cloned()
            .ok_or("PSP_WEBHOOK_SECRETS: required: psp-sim signs its webhooks with the last of these secrets")?;
        let amounts = |key: &str, list: Vec<String>| -> Result<Vec<Decimal>, String> {
            list.iter()
                .map(|a| Decimal::from_str(a.trim()).map_err(|_| format!("{key}: `{a}` is not a decimal amount")))
                .collect()
        };
        let refuse_list = get("PSP_SIM_FAIL_STATUS")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let first_delay = match get("PSP_SIM_WEBHOOK_DELAY_MS") {
            None => Duration::from_millis(100),
            Some(v) => Duration::from_millis(
                v.trim().parse().map_err(|_| format!("PSP_SIM_WEBHOOK_DELAY_MS: `{v}` is not a whole number"))?,
            ),
        };
        Ok(Self {
            port: config.psp_sim_port,
            webhook_url: config.psp_sim_webhook_url.clone(),
            secret,
            fail_amounts: amounts("PSP_SIM_FAIL_AMOUNTS", config.psp_sim_fail_amounts.clone())?,
            refuse_amounts: amounts("PSP_SIM_FAIL_STATUS", refuse_list)?,
            first_delay,
        })
    }
}

/// One idempotency key as the simulator saw it.
#[derive(Debug, Clone, Serialize)]
struct PayoutRecord {
    /// Its place in the PSP's log, for paging (`?since=`).
    seq: u64,
    created_at: String,
    payment_id: String,
    /// `None` for a refused payout: a refusal creates nothing at the PSP.
    psp_ref: Option<String>,
    amount: String,
    currency: String,
    payee_ref: Option<String>,
    kind: Option<String>,
    idempotency_key: String,
    /// POSTs received with this key, the first included.
    calls: u32,
    /// `accepted` or `refused`.
    status: &'static str,
    /// What the PSP reported of an accepted payout: `settled` or `failed`.
    outcome: Option<&'static str>,
    #[serde(skip)]
    amount_value: Decimal,
}

/// A sender's funding the PSP took, announced by `funding.succeeded`.
#[derive(Debug, Clone, Serialize)]
struct FundingRecord {
    seq: u64,
    id: String,
    escrow_id: String,
    amount: String,
    currency: String,
    /// The id of its `funding.succeeded` event (our deposit is keyed by it).
    event_id: String,
    created_at: String,
}

#[derive(Debug, Clone, Serialize)]
struct WebhookRecord {
    event_id: String,
    #[serde(rename = "type")]
    kind: String,
    payment_id: Option<String>,
    attempts: u32,
    delivered: bool,
    /// The HTTP status of the last try, `None` if it got no answer.
    last_status: Option<u16>,
    /// The signed body exactly as sent (the first version sent under this
    /// id), so a test can replay a captured event byte for byte.
    body: String,
}

#[derive(Default)]
struct Ledger {
    /// The last sequence number given (payouts and fundings share it).
    seq: u64,
    fundings: Vec<FundingRecord>,
    payouts: Vec<PayoutRecord>,
    payout_by_key: HashMap<String, usize>,
    webhooks: Vec<WebhookRecord>,
    webhook_by_event: HashMap<String, usize>,
}

impl Ledger {
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// The record for an event id, created on first use (a replayed id from
    /// `/sim/events` keeps counting on the same record).
    fn webhook(&mut self, event_id: &str, kind: &str, payment_id: Option<String>, body: &[u8]) -> &mut WebhookRecord {
        let index = match self.webhook_by_event.get(event_id) {
            Some(&i) => i,
            None => {
                self.webhooks.push(WebhookRecord {
                    event_id: event_id.to_string(),
                    kind: kind.to_string(),
                    payment_id,
                    attempts: 0,
                    delivered: false,
                    last_status: None,
                    body: String::from_utf8_lossy(body).into_owned(),
                });
                self.webhook_by_event.insert(event_id.to_string(), self.webhooks.len() - 1);
                self.webhooks.len() - 1
            }
        };
        &mut self.webhooks[index]
    }
}

struct Sim {
    http: reqwest::Client,
    settings: Settings,
    ledger: Mutex<Ledger>,
    /// `POST /sim/config` replaces `PSP_SIM_FAIL_AMOUNTS` at run time, so a
    /// test can make the PSP fail a payout and then accept its re-drive.
    fail_override: Mutex<Option<Vec<Decimal>>>,
}

impl Sim {
    /// The ledger is plain data updated in single steps, so a panic elsewhere
    /// cannot leave it half-written: a poisoned lock is still usable.
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type SharedSim = Arc<Sim>;

fn problem(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, Json(json!({"code": code, "message": message.into()}))).into_response()
}

fn accepted(psp_ref: &str) -> Response {
    (StatusCode::OK, Json(json!({"psp_ref": psp_ref, "status": "accepted"}))).into_response()
}

fn refused(amount: &str) -> Response {
    problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "PSP_REFUSED",
        format!("simulated refusal: amount {amount} is listed in PSP_SIM_FAIL_STATUS"),
    )
}

#[derive(Deserialize)]
struct PayoutIn {
    payment_id: String,
    /// A string or a number, as our own API accepts.
    amount: Value,
    currency: String,
    payee_ref: Option<String>,
    kind: Option<String>,
}

/// A payout request after its checks: the amount is a positive decimal.
struct NewPayout {
    payment_id: String,
    amount: String,
    amount_value: Decimal,
    currency: String,
    payee_ref: Option<String>,
    kind: Option<String>,
}

fn parse_payout(body: &[u8]) -> Result<NewPayout, String> {
    let input: PayoutIn = serde_json::from_slice(body).map_err(|e| format!("invalid payout body: {e}"))?;
    let amount = match &input.amount {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return Err("amount: must be a decimal string or a number".into()),
    };
    let amount_value = Decimal::from_str(&amount).map_err(|_| format!("amount: `{amount}` is not a decimal"))?;
    if amount_value <= Decimal::ZERO {
        return Err("amount: must be positive".into());
    }
    if input.payment_id.trim().is_empty() {
        return Err("payment_id: required".into());
    }
    if input.currency.trim().is_empty() {
        return Err("currency: required".into());
    }
    Ok(NewPayout {
        payment_id: input.payment_id,
        amount,
        amount_value,
        currency: input.currency,
        payee_ref: input.payee_ref,
        kind: input.kind,
    })
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn create_payout(State(sim): State<SharedSim>, headers: HeaderMap, body: Bytes) -> Response {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty());
    let Some(key) = key else {
        return problem(StatusCode::BAD_REQUEST, "IDEMPOTENCY_KEY_REQUIRED", "the Idempotency-Key header is required");
    };
    let payout = match parse_payout(&body) {
        Ok(p) => p,
        Err(message) => {
            return problem(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", message);
        }
    };

    let mut ledger = sim.ledger();
    if let Some(&i) = ledger.payout_by_key.get(key) {
        let record = &mut ledger.payouts[i];
        record.calls += 1;
        // Like a real PSP, a key stands for one payout: another body under it
        // is a client bug, not a second payout.
        if record.payment_id != payout.payment_id
            || record.amount_value != payout.amount_value
            || record.currency != payout.currency
        {
            return problem(
                StatusCode::CONFLICT,
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was used for another payout",
            );
        }
        tracing::info!(idempotency_key = key, calls = record.calls, "payout replayed");
        return match &record.psp_ref {
            Some(psp_ref) => accepted(psp_ref),
            None => refused(&record.amount),
        };
    }

    let is_refused = sim.settings.refuse_amounts.contains(&payout.amount_value);
    let psp_ref = (!is_refused).then(|| format!("sim_{}", Uuid::new_v4()));
    let failed = !is_refused
        && match &*sim.fail_override.lock().unwrap_or_else(PoisonError::into_inner) {
            // Decimal equality is by value, so "25" in the list matches "25.00".
            Some(list) => list.contains(&payout.amount_value),
            None => sim.settings.fail_amounts.contains(&payout.amount_value),
        };
    let seq = ledger.next_seq();
    ledger.payouts.push(PayoutRecord {
        seq,
        created_at: now_text(),
        payment_id: payout.payment_id.clone(),
        psp_ref: psp_ref.clone(),
        amount: payout.amount.clone(),
        currency: payout.currency.clone(),
        payee_ref: payout.payee_ref.clone(),
        kind: payout.kind.clone(),
        idempotency_key: key.to_string(),
        calls: 1,
        status: if is_refused { "refused" } else { "accepted" },
        outcome: (!is_refused).then_some(if failed { "failed" } else { "settled" }),
        amount_value: payout.amount_value,
    });
    let index = ledger.payouts.len() - 1;
    ledger.payout_by_key.insert(key.to_string(), index);
    let Some(psp_ref) = psp_ref else {
        tracing::info!(payment_id = %payout.payment_id, amount = %payout.amount, "payout refused (PSP_SIM_FAIL_STATUS)");
        return refused(&payout.amount);
    };

    let mut data = json!({
        "payment_id": payout.payment_id,
        "psp_ref": psp_ref,
        "amount": payout.amount,
        "currency": payout.currency,
    });
    if failed {
        data["reason"] = json!("SIMULATED_FAILURE");
    }
    let kind = if failed { "payment.failed" } else { "payment.settled" };
    let event_id = Uuid::new_v4().to_string();
    let body = event_body(&event_id, kind, &data);
    ledger.webhook(&event_id, kind, Some(payout.payment_id.clone()), &body);
    drop(ledger);

    tracing::info!(payment_id = %payout.payment_id, %psp_ref, event_id, event_type = kind, "payout accepted");
    let delay = sim.settings.first_delay;
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        keep_delivering(sim, event_id, body, 0).await;
    });
    accepted(&psp_ref)
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The event as sent; serialized once so every retry carries the same bytes.
fn event_body(event_id: &str, kind: &str, data: &Value) -> Vec<u8> {
    json!({
        "id": event_id,
        "type": kind,
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "data": data,
    })
    .to_string()
    .into_bytes()
}

fn backoff(tries_done: u32) -> Duration {
    let factor = 1u32 << tries_done.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

/// One signed POST of an event; returns the HTTP status, `None` without an
/// answer. The timestamp is fresh each time so a long retry never falls
/// outside the receiver's skew tolerance.
async fn send_once(sim: &Sim, event_id: &str, body: &[u8]) -> Option<u16> {
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let sig = signature::sign(&sim.settings.secret, &timestamp, body);
    let result = sim
        .http
        .post(&sim.settings.webhook_url)
        .timeout(SEND_TIMEOUT)
        .header(header::CONTENT_TYPE, "application/json")
        .header(EVENT_ID_HEADER, event_id)
        .header(TIMESTAMP_HEADER, &timestamp)
        .header(SIGNATURE_HEADER, sig)
        .body(body.to_vec())
        .send()
        .await;
    let status = match result {
        Ok(resp) => Some(resp.status().as_u16()),
        Err(err) => {
            tracing::warn!(event_id, error = %err, url = %sim.settings.webhook_url, "webhook not delivered");
            None
        }
    };
    let delivered = status.is_some_and(|s| (200..300).contains(&s));
    if let Some(record) = sim.ledger().webhooks.iter_mut().find(|w| w.event_id == event_id) {
        record.attempts += 1;
        record.last_status = status;
        record.delivered |= delivered;
    }
    if let Some(s) = status.filter(|_| !delivered) {
        tracing::warn!(event_id, status = s, "webhook refused by the receiver");
    }
    status
}

/// Sends until a 2xx or `MAX_TRIES`, keeping the event id so the receiver
/// can drop duplicates; `tries_done` counts tries already made.
async fn keep_delivering(sim: SharedSim, event_id: String, body: Vec<u8>, mut tries_done: u32) {
    while tries_done < MAX_TRIES {
        if tries_done > 0 {
            tokio::time::sleep(backoff(tries_done)).await;
        }
        let status = send_once(&sim, &event_id, &body).await;
        tries_done += 1;
        if status.is_some_and(|s| (200..300).contains(&s)) {
            tracing::info!(event_id, tries = tries_done, "webhook delivered");
            return;
        }
    }
    tracing::error!(event_id, tries = tries_done, "webhook given up");
}

#[derive(Deserialize)]
struct SimConfigIn {
    fail_amounts: Vec<String>,
}

/// `POST /sim/config {"fail_amounts": ["40.00"]}`: which amounts get
/// `payment.failed` from now on.
async fn set_config(
    State(sim): State<SharedSim>,
    body: Result<Json<SimConfigIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(cfg)) = body else {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", "send {\"fail_amounts\": [\"…\"]}");
    };
    let mut list = Vec::new();
    for a in &cfg.fail_amounts {
        match a.trim().parse::<Decimal>() {
            Ok(d) => list.push(d),
            Err(_) => {
                return problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "VALIDATION_ERROR",
                    format!("`{a}` is not a decimal"),
                );
            }
        }
    }
    *sim.fail_override.lock().unwrap_or_else(PoisonError::into_inner) = Some(list.clone());
    Json(json!({"fail_amounts": list.iter().map(|d| d.to_string()).collect::<Vec<_>>()})).into_response()
}

#[derive(Deserialize)]
struct SimEventIn {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
    id: Option<String>,
    /// `false` sends exactly once; by default a failed first try is retried
    /// in the background like any other webhook.
    retry: Option<bool>,
}

/// Test helper: sign and send an arbitrary event now, answering with the
/// first try's outcome.
async fn send_event(State(sim): State<SharedSim>, body: Bytes) -> Response {
    let input: SimEventIn = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            return problem(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", format!("invalid event: {e}"));
        }
    };
    if input.kind.trim().is_empty() {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", "type: required");
    }
    let data = if input.data.is_null() { json!({}) } else { input.data };
    let event_id = input.id.filter(|id| !id.trim().is_empty()).unwrap_or_else(|| Uuid::new_v4().to_string());
    let payment_id = data.get("payment_id").and_then(Value::as_str).map(str::to_string);
    let body = event_body(&event_id, &input.kind, &data);
    sim.ledger().webhook(&event_id, &input.kind, payment_id, &body);

    let status = send_once(&sim, &event_id, &body).await;
    let delivered = status.is_some_and(|s| (200..300).contains(&s));
    if !delivered && input.retry.unwrap_or(true) {
        tokio::spawn(keep_delivering(sim.clone(), event_id.clone(), body, 1));
    }
    tracing::info!(event_id, event_type = %input.kind, delivered, "test event sent");
    Json(json!({"event_id": event_id, "delivered": delivered, "status": status})).into_response()
}

async fn list_payouts(State(sim): State<SharedSim>) -> Json<Vec<PayoutRecord>> {
    Json(sim.ledger().payouts.clone())
}

/// `?since=<seq>&limit=<n>`: records after `since`, oldest first, at most
/// `limit` (default 100, at most 1000).
#[derive(Deserialize)]
struct PageIn {
    since: Option<u64>,
    limit: Option<usize>,
}

/// One page and where the next starts (`null`: nothing after it).
fn page<T: Serialize + Clone>(records: &[T], seq: impl Fn(&T) -> u64, p: &PageIn) -> Json<Value> {
    let since = p.since.unwrap_or(0);
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let after: Vec<&T> = records.iter().filter(|r| seq(r) > since).collect();
    let items: Vec<T> = after.iter().take(limit).map(|r| (*r).clone()).collect();
    let next = (after.len() > limit).then(|| items.last().map(&seq)).flatten();
    Json(json!({"items": items, "next_since": next}))
}

/// `GET /payouts?since=&limit=`: every payout the PSP holds (accepted or
/// refused, and what it reported of the accepted ones), for reconciliation.
async fn payouts_page(
    State(sim): State<SharedSim>,
    axum::extract::Query(p): axum::extract::Query<PageIn>,
) -> Json<Value> {
    page(&sim.ledger().payouts, |r| r.seq, &p)
}

/// `GET /fundings?since=&limit=`.
async fn fundings_page(
    State(sim): State<SharedSim>,
    axum::extract::Query(p): axum::extract::Query<PageIn>,
) -> Json<Value> {
    page(&sim.ledger().fundings, |r| r.seq, &p)
}

#[derive(Deserialize)]
struct FundingIn {
    escrow_id: String,
    amount: Value,
    currency: String,
}

/// `POST /fundings {escrow_id, amount, currency}`: a sender's funding
/// reaches the PSP; it is recorded, then announced by a signed
/// `funding.succeeded` (retried until acknowledged, like every webhook).
async fn create_funding(State(sim): State<SharedSim>, body: Bytes) -> Response {
    let input: FundingIn = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(e) => {
            return problem(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", format!("invalid funding: {e}"));
        }
    };
    let amount = match &input.amount {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return problem(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", "amount: a decimal string"),
    };
    if Decimal::from_str(&amount).map_or(true, |a| a <= Decimal::ZERO) {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", "amount: a positive decimal");
    }
    if input.escrow_id.trim().is_empty() || input.currency.trim().is_empty() {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", "escrow_id and currency are required");
    }
    let id = format!("fund_{}", Uuid::new_v4());
    let event_id = Uuid::new_v4().to_string();
    let data = json!({"escrow_id": input.escrow_id, "amount": amount, "currency": input.currency, "funding_id": id});
    let body = event_body(&event_id, "funding.succeeded", &data);
    let record = {
        let mut ledger = sim.ledger();
        let seq = ledger.next_seq();
        let record = FundingRecord {
            seq,
            id,
            escrow_id: input.escrow_id,
            amount,
            currency: input.currency,
            event_id: event_id.clone(),
            created_at: now_text(),
        };
        ledger.fundings.push(record.clone());
        ledger.webhook(&event_id, "funding.succeeded", None, &body);
        record
    };
    tracing::info!(funding_id = %record.id, escrow_id = %record.escrow_id, event_id, "funding taken");
    tokio::spawn(keep_delivering(sim, event_id, body, 0));
    (StatusCode::CREATED, Json(record)).into_response()
}

async fn list_webhooks(State(sim): State<SharedSim>) -> Json<Vec<WebhookRecord>> {
    Json(sim.ledger().webhooks.clone())
}

fn router(sim: SharedSim) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/payouts", post(create_payout).get(payouts_page))
        .route("/fundings", post(create_funding).get(fundings_page))
        .route("/sim/events", post(send_event))
        .route("/sim/payouts", get(list_payouts))
        .route("/sim/webhooks", get(list_webhooks))
        .route("/sim/config", post(set_config))
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
        "psp-sim listening"
    );
    let sim = Arc::new(Sim {
        http: reqwest::Client::new(),
        settings,
        ledger: Mutex::new(Ledger::default()),
        fail_override: Mutex::new(None),
    });
    axum::serve(listener, router(sim.clone())).with_graceful_shutdown(shutdown_signal()).await?;
    let pending = sim.ledger().webhooks.iter().filter(|w| !w.delivered).count();
    // Retries live in memory only; say what is dropped so a test log explains
    // a missing webhook.
    tracing::info!(undelivered_webhooks = pending, "psp-sim stopped");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
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

    #[test]
    fn backoff_doubles_from_200ms_to_a_5s_cap() {
        let waits: Vec<u128> = (1..=7).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(waits, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(29), MAX_BACKOFF);
    }

    #[test]
    fn amounts_compare_as_decimals() {
        let listed = [Decimal::from_str("25").expect("decimal")];
        let sent = parse_payout(br#"{"payment_id":"p","amount":"25.00","currency":"USD"}"#).expect("valid");
        assert!(listed.contains(&sent.amount_value));
        let number = parse_payout(br#"{"payment_id":"p","amount":25,"currency":"USD"}"#).expect("valid");
        assert!(listed.contains(&number.amount_value));
    }

    #[test]
    fn invalid_payout_bodies_are_refused() {
        for body in [
            &br#"{"payment_id":"p","amount":"0","currency":"USD"}"#[..],
            br#"{"payment_id":"p","amount":"-1","currency":"USD"}"#,
            br#"{"payment_id":"p","amount":"abc","currency":"USD"}"#,
            br#"{"payment_id":"","amount":"1","currency":"USD"}"#,
            br#"{"payment_id":"p","amount":"1"}"#,
            b"not json",
        ] {
            assert!(parse_payout(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}
