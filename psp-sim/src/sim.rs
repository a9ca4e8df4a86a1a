//! `/sim/*`: what tests use to steer the simulator and look at what it saw.
//! Not part of a PSP's API.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::config::{amounts, parse_status_amounts};
use crate::ledger::{SharedSim, WebhookRecord};
use crate::problem;
use crate::webhooks::send_now;

#[derive(Deserialize)]
pub struct SimConfigIn {
    fail_amounts: Option<Vec<String>>,
    /// `{"12.00": 401}`: answer payouts of that amount with that status.
    status_amounts: Option<BTreeMap<String, u16>>,
}

/// `POST /sim/config {"fail_amounts": ["40.00"], "status_amounts": {"12.00": 401}}`:
/// which amounts get `payment.failed`, and which are answered with an
/// HTTP status, from now on (each replaces its setting when given).
pub async fn set_config(
    State(sim): State<SharedSim>,
    body: Result<Json<SimConfigIn>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(cfg)) = body else {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_ERROR",
            "send {\"fail_amounts\": [\"…\"], \"status_amounts\": {\"…\": 401}}",
        );
    };
    let fail = match cfg.fail_amounts.as_deref().map(|list| amounts("fail_amounts", list)).transpose() {
        Ok(f) => f,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", e),
    };
    let status = match cfg.status_amounts.map(|map| {
        let text: Vec<String> = map.iter().map(|(a, s)| format!("{a}={s}")).collect();
        parse_status_amounts(&text.join(","))
    }) {
        Some(Err(e)) => return problem(StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", e),
        Some(Ok(map)) => Some(map),
        None => None,
    };
    let mut overrides = sim.overrides();
    if let Some(list) = fail {
        overrides.fail_amounts = Some(list);
    }
    if let Some(map) = status {
        overrides.status_amounts = Some(map);
    }
    let shown = |list: &[Decimal]| list.iter().map(Decimal::to_string).collect::<Vec<_>>();
    let fail_now = overrides.fail_amounts.as_deref().map(shown).unwrap_or_else(|| shown(&sim.settings.fail_amounts));
    let status_now = overrides.status_amounts.clone().unwrap_or_else(|| sim.settings.status_amounts.clone());
    let status_now: BTreeMap<String, u16> = status_now.into_iter().map(|(a, s)| (a.to_string(), s)).collect();
    Json(json!({"fail_amounts": fail_now, "status_amounts": status_now})).into_response()
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

/// `POST /sim/events`: sign and send an arbitrary event now, answering with
/// the first try's outcome.
pub async fn send_event(State(sim): State<SharedSim>, body: Bytes) -> Response {
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
    let status = send_now(&sim, &input.kind, &data, event_id.clone(), input.retry.unwrap_or(true)).await;
    let delivered = status.is_some_and(|s| (200..300).contains(&s));
    tracing::info!(event_id, event_type = %input.kind, delivered, "test event sent");
    Json(json!({"event_id": event_id, "delivered": delivered, "status": status})).into_response()
}

/// `GET /sim/webhooks`: every event sent, with its delivery.
pub async fn webhooks(State(sim): State<SharedSim>) -> Json<Vec<WebhookRecord>> {
    Json(sim.ledger().webhooks.clone())
}
