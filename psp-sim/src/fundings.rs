//! Fundings: a sender's card or mobile-money payment reaching the PSP
//! (`POST /fundings {escrow_id, amount, currency}`), recorded and announced
//! by a signed `funding.succeeded`; `GET /fundings?since=` lists them for
//! reconciliation. The simulator takes any currency, as a PSP would: it is
//! the receiver's job to credit only what matches the escrow.

use std::str::FromStr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::ledger::{FundingRecord, SharedSim};
use crate::webhooks::{event_body, keep_delivering, now_text};
use crate::{PageIn, page, problem};

#[derive(Deserialize)]
struct FundingIn {
    escrow_id: String,
    amount: Value,
    currency: String,
}

pub async fn create(State(sim): State<SharedSim>, body: Bytes) -> Response {
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

/// `GET /fundings?since=&limit=`.
pub async fn list(State(sim): State<SharedSim>, Query(p): Query<PageIn>) -> Json<Value> {
    page(&sim.ledger().fundings, |r| r.seq, &p)
}
