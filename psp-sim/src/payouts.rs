//! Payouts: `POST /payouts` idempotent by its `Idempotency-Key` (a key
//! stands for one payout: the same body again replays its answer, another
//! body is refused), answered at once with a `psp_ref`, then settled or
//! failed by a signed webhook; `GET /payouts?since=` lists them for
//! reconciliation and `GET /payouts/{idempotency_key}` answers one, so a
//! re-drive can ask before it drives.

use std::str::FromStr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::ledger::{PayoutRecord, SharedSim};
use crate::webhooks::{now_text, send_later};
use crate::{PageIn, page, problem};

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

/// The answer a real PSP gives with `status` (`PSP_SIM_STATUS_AMOUNTS`):
/// nothing is recorded, as nothing was decided.
fn status_answer(status: u16, amount: &str) -> Response {
    let (code, message) = match status {
        401 => ("UNAUTHORIZED", "the API key is not valid".to_string()),
        403 => ("FORBIDDEN", "the API key may not make payouts".to_string()),
        408 => ("REQUEST_TIMEOUT", "the request took too long".to_string()),
        409 => ("REQUEST_IN_FLIGHT", "a request with this idempotency key is in flight".to_string()),
        429 => ("RATE_LIMITED", "too many requests".to_string()),
        500..=599 => ("UNAVAILABLE", "the PSP is unavailable".to_string()),
        _ => ("PSP_REFUSED", format!("simulated refusal of amount {amount} (PSP_SIM_STATUS_AMOUNTS)")),
    };
    problem(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), code, message)
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
pub struct NewPayout {
    pub payment_id: String,
    pub amount: String,
    pub amount_value: Decimal,
    pub currency: String,
    pub payee_ref: Option<String>,
    pub kind: Option<String>,
}

pub fn parse_payout(body: &[u8]) -> Result<NewPayout, String> {
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

/// The data of a payout's `payment.settled` / `payment.failed` event: the
/// payment, the drive (its key) and the PSP's reference.
pub fn event_data(record: &PayoutRecord, failed: bool) -> Value {
    let mut data = json!({
        "payment_id": record.payment_id,
        "psp_ref": record.psp_ref,
        "idempotency_key": record.idempotency_key,
        "amount": record.amount,
        "currency": record.currency,
    });
    if failed {
        data["reason"] = json!("SIMULATED_FAILURE");
    }
    data
}

pub async fn create(State(sim): State<SharedSim>, headers: HeaderMap, body: Bytes) -> Response {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::trim).filter(|k| !k.is_empty());
    let Some(key) = key else {
        return problem(StatusCode::BAD_REQUEST, "IDEMPOTENCY_KEY_REQUIRED", "the Idempotency-Key header is required");
    };
    let payout = match parse_payout(&body) {
        Ok(p) => p,
        Err(message) => return problem(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", message),
    };
    if let Some(status) = sim.status_for(payout.amount_value) {
        tracing::info!(idempotency_key = key, status, amount = %payout.amount, "payout answered with a set status");
        return status_answer(status, &payout.amount);
    }

    let mut ledger = sim.ledger();
    if let Some(record) = ledger.payout(key) {
        record.calls += 1;
        // Like a real PSP, a key stands for one payout: another body under it
        // is a client bug, not a second payout.
        if record.payment_id != payout.payment_id
            || record.amount_value != payout.amount_value
            || record.currency != payout.currency
        {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
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
    let failed = !is_refused && sim.fails(payout.amount_value);
    let seq = ledger.next_seq();
    let record = PayoutRecord {
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
    };
    let data = event_data(&record, failed);
    ledger.add_payout(record);
    drop(ledger);
    let Some(psp_ref) = psp_ref else {
        tracing::info!(payment_id = %payout.payment_id, amount = %payout.amount, "payout refused (PSP_SIM_FAIL_STATUS)");
        return refused(&payout.amount);
    };
    let kind = if failed { "payment.failed" } else { "payment.settled" };
    let event_id = send_later(&sim, kind, &data, sim.settings.first_delay);
    tracing::info!(payment_id = %payout.payment_id, %psp_ref, event_id, event_type = kind, "payout accepted");
    accepted(&psp_ref)
}

/// `GET /payouts/{idempotency_key}`: the payout asked under that key, or
/// `404` when the PSP never got one.
pub async fn by_key(State(sim): State<SharedSim>, Path(key): Path<String>) -> Response {
    match sim.ledger().payout(&key) {
        Some(record) => Json(record.clone()).into_response(),
        None => problem(StatusCode::NOT_FOUND, "NOT_FOUND", "no payout under this idempotency key"),
    }
}

/// `GET /payouts?since=&limit=`: every payout the PSP holds (accepted or
/// refused, and what it reported of the accepted ones), for reconciliation.
pub async fn list(State(sim): State<SharedSim>, Query(p): Query<PageIn>) -> Json<Value> {
    page(&sim.ledger().payouts, |r| r.seq, &p)
}

#[derive(Deserialize)]
pub struct OutcomeIn {
    outcome: String,
    /// `false` sends the event once; by default a failed first try is
    /// retried in the background like any other webhook.
    retry: Option<bool>,
    /// `false` changes the outcome without sending its event (an event the
    /// PSP lost): only a lookup or the log tells.
    notify: Option<bool>,
}

/// `POST /sim/payouts/{idempotency_key}/outcome {"outcome": "settled"}`:
/// the PSP changes its mind about an accepted payout (a late settlement of
/// one it reported failed, or the reverse) and says so by a signed event.
pub async fn set_outcome(
    State(sim): State<SharedSim>,
    Path(key): Path<String>,
    body: Result<Json<OutcomeIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(input)) = body else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
            "send {\"outcome\": \"settled\"|\"failed\"}",
        );
    };
    let outcome = match input.outcome.as_str() {
        "settled" => "settled",
        "failed" => "failed",
        _ => return problem(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", "outcome: settled or failed"),
    };
    let data = {
        let mut ledger = sim.ledger();
        let Some(record) = ledger.payout(&key) else {
            return problem(StatusCode::NOT_FOUND, "NOT_FOUND", "no payout under this idempotency key");
        };
        if record.status != "accepted" {
            return problem(StatusCode::CONFLICT, "NOT_ACCEPTED", "a refused payout has no outcome");
        }
        record.outcome = Some(outcome);
        event_data(record, outcome == "failed")
    };
    if input.notify == Some(false) {
        tracing::info!(idempotency_key = %key, outcome, "payout outcome changed, no event sent");
        return Json(json!({"event_id": null, "delivered": false, "status": null})).into_response();
    }
    let kind = if outcome == "failed" { "payment.failed" } else { "payment.settled" };
    let event_id = Uuid::new_v4().to_string();
    let status = crate::webhooks::send_now(&sim, kind, &data, event_id.clone(), input.retry.unwrap_or(true)).await;
    let delivered = status.is_some_and(|s| (200..300).contains(&s));
    tracing::info!(idempotency_key = %key, outcome, event_id, delivered, "payout outcome changed");
    Json(json!({"event_id": event_id, "delivered": delivered, "status": status})).into_response()
}

/// `GET /sim/payouts`: every payout, unpaged (tests).
pub async fn all(State(sim): State<SharedSim>) -> Json<Vec<PayoutRecord>> {
    Json(sim.ledger().payouts.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

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
